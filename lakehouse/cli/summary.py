"""The per-table summary `make run` prints after materialising."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import duckdb

from lakehouse.cli.text_table import print_table
from lakehouse.resources import LakehouseStorage
from lakehouse.settings import setting
from lakehouse.storage import delta

LAYERS = ("bronze", "silver", "gold", "marts", "quarantine")


def _rows_added(commit: dict) -> int:
    metrics = commit.get("operationMetrics", {})
    return int(metrics.get("num_added_rows", metrics.get("num_target_rows_inserted", 0)))


def table_rows(lakehouse: LakehouseStorage) -> list[tuple[str, int, int, int, str]]:
    """(layer/table, rows, Delta version, rows the last commit added, its time) per table."""
    listed = [(layer, name) for layer, name in lakehouse.tables() if layer in LAYERS]
    rows = []
    # tables() lists the layers alphabetically; the summary follows the data through them.
    for layer, name in sorted(listed, key=lambda table: LAYERS.index(table[0])):
        table = delta.open_table(lakehouse.table_uri(layer, name))
        if table is None:
            continue
        last = table.history(1)[0]
        committed = datetime.fromtimestamp(last["timestamp"] / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S")
        rows.append(
            (f"{layer}/{name}", delta.row_count(table), table.version(), _rows_added(last), committed)
        )
    return rows


def check_results(contracts_folder: Path) -> dict[str, str]:
    """Per table, how many of its checks passed at their latest evaluation, which failed and
    which did not run (planned in the latest run, whose step failed before them), from the
    Dagster instance in DAGSTER_HOME (none without one: nothing was recorded)."""
    from asset_checks import all_checks
    from lakehouse.sources.contract_files import load_contracts

    if not os.environ.get("DAGSTER_HOME"):
        return {}
    passed: dict[str, int] = {}
    failed: dict[str, list[str]] = {}
    not_run: dict[str, list[str]] = {}
    with dg.DagsterInstance.get() as instance:
        for checks in all_checks(load_contracts(contracts_folder)):
            for key in checks.check_keys:
                record = instance.get_latest_asset_check_evaluation_record(key)
                if record is None:
                    continue
                table = key.asset_key.to_user_string()
                passed.setdefault(table, 0)
                evaluation = record.evaluation
                if not isinstance(evaluation, dg.AssetCheckEvaluation):
                    not_run.setdefault(table, []).append(key.name)
                elif evaluation.passed:
                    passed[table] += 1
                else:
                    failed.setdefault(table, []).append(f"{key.name} ({evaluation.severity.value})")
    results = {}
    for table, count in passed.items():
        bad, skipped = failed.get(table, []), not_run.get(table, [])
        results[table] = (
            f"{count}/{count + len(bad) + len(skipped)} passed"
            + (f"; failed: {', '.join(bad)}" if bad else "")
            + (f"; not run: {', '.join(skipped)}" if skipped else "")
        )
    return results


def warehouse_rows(path: Path) -> list[tuple[str, int]]:
    """(model, rows) for the dbt models in the warehouse, read through a short-lived read-only
    connection (DuckDB allows one writer per file; this must never be it)."""
    if not path.exists():
        return []
    with duckdb.connect(str(path), read_only=True) as connection:
        tables = connection.sql(
            "select table_name from duckdb_tables() where schema_name = 'main' order by 1"
        )
        names = [name for (name,) in tables.fetchall()]
        return [
            (name, connection.sql(f'select count(*) from main."{name}"').fetchall()[0][0]) for name in names
        ]


def print_summary() -> int:
    lakehouse = LakehouseStorage(root=setting("LAKEHOUSE_ROOT"))
    rows = table_rows(lakehouse)
    if not rows:
        print(f"no Delta tables under {lakehouse.location}")
        return 1
    checks = check_results(Path(setting("LAKEHOUSE_CONTRACTS")))
    print(f"\nLakehouse at {lakehouse.location}\n")
    print_table(
        ("table", "rows", "version", "last added", "last commit (UTC)", "checks"),
        [
            (name, f"{count:,}", version, f"{added:,}", committed, checks.get(name, "-"))
            for name, count, version, added, committed in rows
        ],
        right={"rows", "version", "last added"},
    )
    warehouse = Path(setting("LAKEHOUSE_WAREHOUSE"))
    models = warehouse_rows(warehouse)
    if models:
        print(f"\ndbt models in {warehouse.resolve()}\n")
        print_table(("model", "rows"), [(name, f"{count:,}") for name, count in models], right={"rows"})
    return 0
