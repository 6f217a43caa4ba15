"""The dbt project (dbt-duckdb over the gold Delta tables) as Dagster assets.

The manifest is prepared before anything loads the definitions (`make` runs `dbt parse`), so
no run worker parses the project again. dbt tests become asset checks; models report row
counts and column schemas. Only one step writes the DuckDB warehouse at a time (the
`duckdb_warehouse` pool), because DuckDB allows a single writer per file.
"""

import json
import os
import shutil
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import dagster as dg
import duckdb
from dagster_dbt import DagsterDbtTranslator, DbtCliResource, DbtProject, dbt_assets

from lakehouse.delta import LakehouseStorage
from lakehouse.partitions import ONE_RUN

DBT_PROJECT_DIR = Path(__file__).resolve().parent.parent / "dbt"
# The dbt installed beside this Python, whether or not the virtualenv is on PATH.
DBT_EXECUTABLE = str(Path(sys.executable).parent / "dbt")
WAREHOUSE_POOL = "duckdb_warehouse"
DBT_INDIRECT_SELECTION = "DBT_INDIRECT_SELECTION"
KEPT_RUN_FOLDERS = 5

dbt_project = DbtProject(project_dir=DBT_PROJECT_DIR, profiles_dir=DBT_PROJECT_DIR)


class Warehouse(dg.ConfigurableResource):
    """The DuckDB file dbt builds the marts in."""

    path: str

    @property
    def location(self) -> Path:
        return Path(self.path).resolve()


class LakehouseTranslator(DagsterDbtTranslator):
    """Models keyed and grouped by their folder (`staging/...`, `marts/...`); sources keep the
    Dagster keys their `meta.dagster.asset_key` names (the gold assets)."""

    def get_asset_key(self, dbt_resource_props: Mapping[str, Any]) -> dg.AssetKey:
        if dbt_resource_props["resource_type"] == "source":
            return super().get_asset_key(dbt_resource_props)
        return dg.AssetKey([dbt_resource_props["fqn"][1], dbt_resource_props["name"]])

    def get_group_name(self, dbt_resource_props: Mapping[str, Any]) -> str | None:
        return dbt_resource_props["fqn"][1]

    def get_automation_condition(self, dbt_resource_props: Mapping[str, Any]) -> dg.AutomationCondition:
        return dg.AutomationCondition.eager()


def prune_run_folders(target: Path, keep: int = KEPT_RUN_FOLDERS) -> None:
    """dagster-dbt writes a target folder per invocation; keep only the newest few."""
    folders = sorted(
        (p for p in target.iterdir() if p.is_dir() and "-" in p.name), key=lambda p: p.stat().st_mtime
    )
    for folder in folders[:-keep]:
        shutil.rmtree(folder, ignore_errors=True)


def _relation_metadata(connection: duckdb.DuckDBPyConnection, name: str) -> dict[str, Any]:
    described = connection.sql(f'describe main."{name}"').fetchall()
    return {
        "dagster/row_count": connection.sql(f'select count(*) from main."{name}"').fetchall()[0][0],
        "dagster/column_schema": dg.TableSchema(
            columns=[dg.TableColumn(column, str(dtype)) for column, dtype, *_ in described]
        ),
    }


@dbt_assets(
    manifest=dbt_project.manifest_path,
    dagster_dbt_translator=LakehouseTranslator(),
    pool=WAREHOUSE_POOL,
    backfill_policy=ONE_RUN,
)
def dbt_models(
    context: dg.AssetExecutionContext, dbt: DbtCliResource, lakehouse: LakehouseStorage, warehouse: Warehouse
) -> Iterator[Any]:
    # dbt runs with dbt/ as its working directory: hand it absolute locations.
    os.environ["LAKEHOUSE_WAREHOUSE_PATH"] = str(warehouse.location)
    warehouse.location.parent.mkdir(parents=True, exist_ok=True)
    variables = json.dumps({"lakehouse_root": lakehouse.location})
    # A run of some models only (a backfill splits "Materialize all" into waves, or the UI's
    # "Materialize selected") must not run a test whose other parent is not built yet: dbt's
    # default (eager) runs `relationships` tests of the marts when only staging is selected,
    # and they fail on a new warehouse. `buildable` runs a test once all its parents are
    # selected or upstream of the selection; dagster-dbt still overrides it when it has to.
    os.environ.setdefault(DBT_INDIRECT_SELECTION, "buildable")
    events = list(dbt.cli(["build", "--vars", variables], context=context).stream())
    # Row counts and schemas through one short-lived read-only connection once dbt has
    # exited (dagster-dbt's fetch_row_counts keeps a read-write connection open in this
    # process, which locks every other reader and the next dbt run out of the file).
    with duckdb.connect(str(warehouse.location), read_only=True) as connection:
        for event in events:
            if isinstance(event, dg.Output):
                name = context.asset_key_for_output(event.output_name).path[-1]
                # The same duration key as the Delta assets, so every asset plots it alike.
                duration = event.metadata.get("Execution Duration")
                event = event.with_metadata(
                    {
                        **event.metadata,
                        **_relation_metadata(connection, name),
                        **({"duration_seconds": duration} if duration is not None else {}),
                    }
                )
            yield event
    prune_run_folders(dbt_project.project_dir / "target")
