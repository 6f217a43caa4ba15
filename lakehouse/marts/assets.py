"""The dbt project (dbt-duckdb over the gold Delta tables) as Dagster assets.

The manifest is prepared before anything loads the definitions (`make` runs `dbt parse`), so
no run worker parses the project again. dbt tests become asset checks; models report row
counts and column schemas. Only one step writes the DuckDB warehouse at a time (the
`duckdb_warehouse` pool), because DuckDB allows a single writer per file.

dbt is not invoked when it would rebuild the same tables: every selected model was last built,
in a run that succeeded, from the same gold table versions with the same dbt project, and is
still in the warehouse. Each model's `built_from` metadata records what it was built from.
The marts' unit tests run in the build only while the dbt project is new to the selected
models: their rows are fixed in the project, so a project that built them once, its unit tests
passing, gives the same verdict on any data. Each warehouse keeps dbt's parse state of its
own builds (`target.py`), so a build parses only what changed in the project.
"""

import hashlib
import json
import os
from collections.abc import Collection, Iterator, Mapping, Sequence
from functools import cached_property
from pathlib import Path
from typing import Any

import dagster as dg
import duckdb
from dagster_dbt import DagsterDbtTranslator, DbtCliResource, DbtProject, dbt_assets
from deltalake import DeltaTable
from packaging.version import Version

from lakehouse.gold.tables import GOLD_TABLES
from lakehouse.marts import publish, target
from lakehouse.marts.rebuilt_days import rebuilt_days
from lakehouse.marts.warehouse import expose_gold, set_aside_torn_creation
from lakehouse.orchestration.metadata import table_metadata
from lakehouse.resources import LakehouseStorage, Warehouse
from lakehouse.storage import delta

DBT_PROJECT_DIR = Path(__file__).resolve().parents[2] / "dbt"
# dbt's own environment, made by `make install` (dbt/pyproject.toml says why).
DBT_EXECUTABLE = str(DBT_PROJECT_DIR / ".venv" / "bin" / "dbt")
WAREHOUSE_POOL = "duckdb_warehouse"
DBT_INDIRECT_SELECTION = "DBT_INDIRECT_SELECTION"
BUILT_FROM = "built_from"

dbt_project = DbtProject(project_dir=DBT_PROJECT_DIR, profiles_dir=DBT_PROJECT_DIR)


class DbtCli(DbtCliResource):
    """dagster-dbt's dbt CLI resource without two things it does before every dbt invocation,
    which each start a process or build an adapter and serve nothing this project uses: running
    `dbt --version` (which also asks PyPI for the latest release: dbt-core #6085) to tell dbt
    Core from the Fusion engine, and building a dbt adapter in this process for
    `fetch_column_metadata` (row counts and schemas come from the warehouse instead; dbt-core
    is not in this environment, so it would only log a failure).

    Both are private members of dagster-dbt 0.29 (pinned), with no public way around them: a
    test (tests/test_marts.py) fails when the installed dagster-dbt renames, reshapes or stops
    calling either, since every dbt step would then pay for both again."""

    @cached_property
    def _cli_version(self) -> Version:
        # The manifest was written by `make`'s `dbt parse` with the same executable.
        manifest = json.loads(dbt_project.manifest_path.read_bytes())
        return Version(manifest["metadata"]["dbt_version"])

    def _initialize_dbt_core_adapter(self, args: Sequence[str]) -> None:  # type: ignore[override]
        return None


class LakehouseTranslator(DagsterDbtTranslator):
    """Models keyed and grouped by their folder (`staging/...`, `intermediate/...`, `marts/...`);
    sources keep the Dagster keys their `meta.dagster.asset_key` names (the gold assets)."""

    def get_asset_key(self, dbt_resource_props: Mapping[str, Any]) -> dg.AssetKey:
        if dbt_resource_props["resource_type"] == "source":
            return super().get_asset_key(dbt_resource_props)
        return dg.AssetKey([dbt_resource_props["fqn"][1], dbt_resource_props["name"]])

    def get_group_name(self, dbt_resource_props: Mapping[str, Any]) -> str | None:
        return dbt_resource_props["fqn"][1]

    def get_automation_condition(self, dbt_resource_props: Mapping[str, Any]) -> dg.AutomationCondition:
        return dg.AutomationCondition.eager()


def _relation_metadata(connection: duckdb.DuckDBPyConnection, name: str) -> dict[str, Any]:
    described = connection.sql(f'describe main."{name}"').fetchall()
    return {
        "dagster/row_count": connection.sql(f'select count(*) from main."{name}"').fetchall()[0][0],
        "dagster/column_schema": dg.TableSchema(
            columns=[dg.TableColumn(column, str(dtype)) for column, dtype, *_ in described]
        ),
    }


def _lake_metadata(
    lakehouse: LakehouseStorage,
    connection: duckdb.DuckDBPyConnection,
    name: str,
    inputs: str,
    by_day: publish.ByDay | None,
) -> dict[str, Any]:
    """A mart's Delta copy in the lake (`publish.py`): where it is, its version and size."""
    copied = table_metadata(publish.publish(lakehouse, connection, name, inputs, by_day))
    return {key: copied[key] for key in ("dagster/uri", "delta_version", "delta_files", "delta_bytes")}


def gold_tables(
    context: dg.AssetExecutionContext, lakehouse: LakehouseStorage
) -> dict[dg.AssetKey, DeltaTable | None]:
    """Every gold table the models read, opened once: the build records and reads these versions."""
    models = context.assets_def.specs
    gold = sorted({dep.asset_key for spec in models for dep in spec.deps} - {spec.key for spec in models})
    return {key: delta.open_table(lakehouse.table_uri(*key.path)) for key in gold}


def project_label() -> str:
    """The dbt project as `built_from` names it first: the digest of its manifest."""
    # `make` parses the project again only when a dbt file changed, so the manifest's digest
    # changes with the project and not otherwise.
    return f"manifest {hashlib.sha256(dbt_project.manifest_path.read_bytes()).hexdigest()[:12]}; "


def built_from(tables: Mapping[dg.AssetKey, DeltaTable | None]) -> str:
    """The dbt project's manifest and the Delta version of every gold table the models read."""
    versions = [f"{key.to_user_string()} {delta.version_label(table)}" for key, table in tables.items()]
    return project_label() + ", ".join(versions)


def _relations(warehouse: Warehouse) -> set[str]:
    if not warehouse.location.exists():
        return set()
    with duckdb.connect(str(warehouse.location), read_only=True) as connection:
        rows = connection.sql("select table_name from information_schema.tables where table_schema = 'main'")
        return {name for (name,) in rows.fetchall()}


def last_builds(context: dg.AssetExecutionContext) -> dict[dg.AssetKey, str]:
    """What each selected model was last built from, for the models whose last build was in a
    run that succeeded."""
    events = context.instance.get_latest_materialization_events(context.selected_asset_keys)
    recorded: dict[dg.AssetKey, tuple[str, str]] = {}
    for key, event in events.items():
        materialization = event.asset_materialization if event else None
        value = materialization.metadata.get(BUILT_FROM) if materialization else None
        if event is not None and value is not None:
            recorded[key] = (value.value, event.run_id)
    # The models of one build share its run: each run is looked up once.
    succeeded = set()
    for run_id in {run_id for _, run_id in recorded.values()}:
        run = context.instance.get_run_by_id(run_id)
        if run is not None and run.status == dg.DagsterRunStatus.SUCCESS:
            succeeded.add(run_id)
    return {key: value for key, (value, run_id) in recorded.items() if run_id in succeeded}


def up_to_date(
    context: dg.AssetExecutionContext,
    relations: set[str],
    lakehouse: LakehouseStorage,
    builds: Mapping[dg.AssetKey, str],
    inputs: str,
) -> bool:
    """Every selected model was last built from `inputs` in a run that succeeded, is still in
    the warehouse and, for a mart, in the lake: a dbt build would make the same tables and run
    the same tests on them. `relations` are the warehouse's."""
    return all(
        builds.get(key) == inputs
        and key.path[-1] in relations
        and (key.path[0] != publish.LAYER or publish.is_published(lakehouse, key.path[-1], inputs))
        for key in context.selected_asset_keys
    )


def unit_tested(context: dg.AssetExecutionContext, builds: Mapping[dg.AssetKey, str]) -> bool:
    """Every selected model was last built by this dbt project in a run that succeeded, so its
    unit tests passed with this project (in that build or in one before it)."""
    project = project_label()
    return all(builds.get(key, "").startswith(project) for key in context.selected_asset_keys)


def _declared_by_day() -> dict[str, tuple[str, str]]:
    """The marts whose rows change only on the days gold rebuilt in a table: that table and the
    mart's own day column (`meta: rebuilt_days` in the mart's .yml)."""
    nodes = json.loads(dbt_project.manifest_path.read_bytes())["nodes"].values()
    models = (node for node in nodes if node["resource_type"] == "model")
    declared = {node["name"]: node["config"].get("meta", {}).get("rebuilt_days") for node in models}
    return {name: (meta["gold_table"], meta["column"]) for name, meta in declared.items() if meta}


def _by_day(
    declared: tuple[str, str] | None,
    rebuilt: Mapping[str, tuple[str, list[str] | None]],
    last_build: str | None,
) -> publish.ByDay | None:
    """A mart `declared` rebuilt by day, with its days that may differ from its `last_build`."""
    if declared is None:
        return None
    table, column = declared
    days = rebuilt[table][1] if table in rebuilt and last_build is not None else None
    return publish.ByDay(column, days, last_build)


def _rebuilt(
    context: dg.AssetExecutionContext,
    relations: set[str],
    gold: Mapping[str, DeltaTable],
    builds: Mapping[dg.AssetKey, str],
) -> dict[str, tuple[str, list[str] | None]]:
    """The days rebuilt in each gold table rebuilt by day since the selected models' last
    builds, with the table's day column; every day for a model no longer in the warehouse's
    `relations`."""
    by_day = {table.name: table.period for table in GOLD_TABLES if table.period is not None}
    days = rebuilt_days(
        {name: table for name, table in gold.items() if name in by_day},
        [builds.get(key) if key.path[-1] in relations else None for key in context.selected_asset_keys],
    )
    return {name: (by_day[name], named) for name, named in days.items()}


@dbt_assets(
    manifest=dbt_project.manifest_path,
    dagster_dbt_translator=LakehouseTranslator(),
    pool=WAREHOUSE_POOL,
)
def dbt_models(
    context: dg.AssetExecutionContext, dbt: DbtCli, lakehouse: LakehouseStorage, warehouse: Warehouse
) -> Iterator[Any]:
    aside = set_aside_torn_creation(warehouse.location)
    if aside is not None:
        context.log.warning(
            f"the warehouse file was left empty by a killed run: moved to {aside}; dbt builds anew"
        )
    tables = gold_tables(context, lakehouse)
    inputs = built_from(tables)
    builds = last_builds(context)
    relations = _relations(warehouse)
    if up_to_date(context, relations, lakehouse, builds, inputs):
        context.log.info(f"dbt not run: every selected model was built from {inputs} and is in the warehouse")
        return
    warehouse.location.parent.mkdir(parents=True, exist_ok=True)
    # A missing gold table stays missing: dbt names it when a selected model reads it.
    present = {key.path[-1]: table for key, table in tables.items() if table is not None}
    rebuilt = _rebuilt(context, relations, present, builds)
    expose_gold(warehouse.location, present, rebuilt)
    # dbt runs with dbt/ as its working directory: hand it absolute locations.
    os.environ["LAKEHOUSE_WAREHOUSE_PATH"] = str(warehouse.location)
    # A run of some models only (the UI's "Materialize selected") must not run a test whose
    # other parent is not built yet: dbt's default (eager) runs `relationships` tests of the
    # marts when only staging is selected, and they fail on a new warehouse. `buildable` runs a
    # test once all its parents are selected or upstream of the selection; dagster-dbt still
    # overrides it when it has to.
    os.environ.setdefault(DBT_INDIRECT_SELECTION, "buildable")
    build = ["build"]
    if unit_tested(context, builds):
        context.log.info(
            "unit tests not run: the selected models were built by this dbt project, its unit tests passing"
        )
        build += ["--exclude-resource-type", "unit_test"]
    targets = Path(dbt_project.project_dir, os.environ.get("DBT_TARGET_PATH", "target"))
    run = target.run_folder(targets, context.op_def.name, context.run.run_id, warehouse.location)
    invocation = dbt.cli(build, context=context, target_path=run)
    events = list(invocation.stream())
    target.keep_parse_state(targets, run, warehouse.location)
    # Row counts and schemas through one short-lived read-only connection once dbt has
    # exited (dagster-dbt's fetch_row_counts keeps a read-write connection open in this
    # process, which locks every other reader and the next dbt run out of the file). The marts
    # are copied into the lake before any is reported built.
    by_day = _declared_by_day()
    with duckdb.connect(str(warehouse.location), read_only=True) as connection:
        for event in events:
            if isinstance(event, dg.Output):
                key = context.asset_key_for_output(event.output_name)
                layer, name = key.path
                copied = {}
                if layer == publish.LAYER:
                    kept = _by_day(by_day.get(name), rebuilt, builds.get(key))
                    copied = _lake_metadata(lakehouse, connection, name, inputs, kept)
                # The same duration key as the Delta assets, so every asset plots it alike.
                duration = event.metadata.get("Execution Duration")
                event = event.with_metadata(
                    {
                        **event.metadata,
                        **_relation_metadata(connection, name),
                        **copied,
                        BUILT_FROM: inputs,
                        **({"duration_seconds": duration} if duration is not None else {}),
                    }
                )
            yield event
    target.prune(targets)


def attached_models(defined: Collection[dg.AssetKey]) -> list[dg.AssetsDefinition]:
    """The dbt models, when every table they read (their sources) is among the `defined`
    assets; none otherwise, like the gold tables they are built on."""
    return [dbt_models] if dbt_models.dependency_keys - set(dbt_models.keys) <= set(defined) else []
