"""Building a gold table incrementally: only the periods new silver rows touch are rewritten.

For each silver table it reads, a gold table remembers the newest silver `_loaded_at` it has
seen, as an app transaction in its own commit. A run finds the periods (days or months) of
the silver rows loaded since, rebuilds exactly those periods from silver, and replaces them
with a predicate overwrite in one commit that also moves the positions. A table without a
period is rebuilt whole when any input changed. Rebuilding a period from silver, rather than
patching it, is what makes the result equal to a full rebuild.

Daily-partitioned tables are told their days by Dagster (a partition, a backfill's range) and
rebuild exactly those: `build_days`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from itertools import groupby
from typing import Any

import polars as pl

from lakehouse import delta
from lakehouse.delta import LakehouseStorage
from lakehouse.gold.tables import DAY, MONTH, GoldTable, Reader
from lakehouse.silver.load import LOADED_AT

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class GoldBuild:
    rebuilt: list[str] | None  # periods rewritten; None: the whole table
    rows_written: int
    table: delta.DeltaTable | None


def position_key(table: GoldTable, upstream: str) -> str:
    return f"lakehouse.gold.{table.name}.{upstream}.loaded_at"


def _micros(moment: datetime) -> int:
    return (moment - EPOCH) // timedelta(microseconds=1)


def _silver_reader(lakehouse: LakehouseStorage) -> Reader:
    def read(name: str) -> pl.LazyFrame:
        return pl.scan_delta(lakehouse.table_uri("silver", name))

    return read


def _replace_periods(
    uri: str, table: GoldTable, frame: pl.DataFrame, periods: list[str], **commit: Any
) -> delta.DeltaTable:
    values = ", ".join(f"'{period}'" for period in periods)
    return delta.write(uri, frame, mode="overwrite", predicate=f'"{table.period}" IN ({values})', **commit)


def build_gold(table: GoldTable, lakehouse: LakehouseStorage, run_id: str) -> GoldBuild:
    uri = lakehouse.table_uri("gold", table.name)
    read = _silver_reader(lakehouse)
    existing = delta.open_table(uri)
    pattern = MONTH if table.granularity == "month" else DAY
    positions, periods = {}, set()
    for upstream, moment in table.upstream.items():
        seen = delta.marker(existing, position_key(table, upstream))
        since = EPOCH + timedelta(microseconds=seen) if seen is not None else EPOCH
        changed = read(upstream).filter(pl.col(LOADED_AT) > since)
        summary = changed.select(
            newest=pl.col(LOADED_AT).max(), periods=pl.col(moment).dt.strftime(pattern).unique().implode()
        ).collect()
        newest = summary["newest"][0]
        positions[position_key(table, upstream)] = _micros(newest) if newest else (seen or 0)
        periods.update(summary["periods"].explode().drop_nulls().to_list())

    if existing is not None and not periods:
        return GoldBuild([], 0, existing)
    metadata = {
        "lakehouse.run_id": run_id,
        "lakehouse.gold.periods": ",".join(sorted(periods)) if existing else "all",
    }
    partition_by = [table.partition_by] if table.partition_by else None
    if existing is None and table.period is not None and periods:
        # A month at a time, all in one commit: memory follows the largest month, not the table.
        months = groupby(sorted(periods), key=lambda period: period[:7])
        frames = (table.build(read, list(month)) for _, month in months)
        written = delta.write(
            uri, frames, mode="overwrite", partition_by=partition_by,
            metadata=metadata, transactions=positions,
        )  # fmt: skip
        return GoldBuild(None, delta.row_count(written), written)
    if existing is None or table.period is None:
        frame = table.build(read, None)
        written = delta.write(
            uri, frame, mode="overwrite", partition_by=partition_by,
            metadata=metadata, transactions=positions,
        )  # fmt: skip
        return GoldBuild(None, frame.height, written)
    rebuilt = sorted(periods)
    frame = table.build(read, rebuilt)
    written = _replace_periods(uri, table, frame, rebuilt, metadata=metadata, transactions=positions)
    return GoldBuild(rebuilt, frame.height, written)


def _same_rows(built: pl.DataFrame, stored: pl.DataFrame) -> bool:
    if set(built.columns) != set(stored.columns):
        return False
    columns = built.columns
    return built.sort(columns).equals(stored.select(columns).sort(columns))


def build_days(table: GoldTable, lakehouse: LakehouseStorage, days: list[str], run_id: str) -> GoldBuild:
    """Rebuild exactly `days` from silver: every other day of the table stays as it is.

    Days whose rebuilt rows equal the stored ones are not rewritten: without a new version of
    the table, what reads it (dbt) can tell that nothing changed.
    """
    uri = lakehouse.table_uri("gold", table.name)
    frame = table.build(_silver_reader(lakehouse), days)
    metadata = {"lakehouse.run_id": run_id, "lakehouse.gold.periods": ",".join(days)}
    existing = delta.open_table(uri)
    if existing is None:
        return GoldBuild(days, frame.height, delta.write(uri, frame, mode="overwrite", metadata=metadata))
    assert table.period is not None
    stored = pl.scan_delta(existing).filter(pl.col(table.period).cast(pl.String).is_in(days)).collect()
    if _same_rows(frame, stored):
        return GoldBuild([], 0, existing)
    return GoldBuild(days, frame.height, _replace_periods(uri, table, frame, days, metadata=metadata))
