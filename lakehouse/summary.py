"""The per-table summary `make run` prints after materialising."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import duckdb

from lakehouse import delta
from lakehouse.settings import setting

LAYERS = ("bronze", "silver", "gold", "quarantine")


def _rows_added(commit: dict) -> int:
    metrics = commit.get("operationMetrics", {})
    return int(metrics.get("num_added_rows", metrics.get("num_target_rows_inserted", 0)))


def table_rows(root: Path) -> list[tuple[str, int, int, int, str]]:
    """(layer/table, rows, Delta version, rows the last commit added, its time) per table."""
    rows = []
    for layer in LAYERS:
        for folder in sorted((root / layer).glob("*/_delta_log")):
            table = delta.open_table(str(folder.parent))
            if table is None:
                continue
            last = table.history(1)[0]
            committed = datetime.fromtimestamp(last["timestamp"] / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S")
            rows.append(
                (
                    f"{layer}/{folder.parent.name}",
                    delta.row_count(table),
                    table.version(),
                    _rows_added(last),
                    committed,
                )
            )
    return rows


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
    root = Path(setting("LAKEHOUSE_ROOT"))
    if "://" in str(setting("LAKEHOUSE_ROOT")):
        print(f"summary lists local tables only; {setting('LAKEHOUSE_ROOT')} is remote")
        return 0
    rows = table_rows(root)
    if not rows:
        print(f"no Delta tables under {root.resolve()}")
        return 1
    print(f"\nLakehouse at {root.resolve()}\n")
    print(f"{'table':<32} {'rows':>12} {'version':>8} {'last added':>11}  last commit (UTC)")
    for name, count, version, added, committed in rows:
        print(f"{name:<32} {count:>12,} {version:>8} {added:>11,}  {committed}")
    warehouse = Path(setting("LAKEHOUSE_WAREHOUSE"))
    models = warehouse_rows(warehouse)
    if models:
        print(f"\ndbt models in {warehouse.resolve()}\n")
        print(f"{'model':<32} {'rows':>12}")
        for name, count in models:
            print(f"{name:<32} {count:>12,}")
    return 0
