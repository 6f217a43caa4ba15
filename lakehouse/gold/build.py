"""Building a gold table incrementally: only the periods new silver rows touch are rewritten.

For each silver table it reads, a gold table remembers the newest silver `_loaded_at` it has
seen, as an app transaction in its own commit. A run finds the periods (days or months) of
the silver rows loaded since, rebuilds exactly those periods from silver, and replaces them
with a predicate overwrite in one commit that also moves the positions. A table without a
period is rebuilt whole when any input changed. Rebuilding a period from silver, rather than
patching it, is what makes the result equal to a full rebuild.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import polars as pl

from lakehouse import delta
from lakehouse.delta import LakehouseStorage
from lakehouse.gold.tables import DAY, MONTH, GoldTable
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


def build_gold(table: GoldTable, lakehouse: LakehouseStorage, full: bool = False) -> GoldBuild:
    uri = lakehouse.table_uri("gold", table.name)

    def read(name: str) -> pl.LazyFrame:
        return pl.scan_delta(lakehouse.table_uri("silver", name))

    existing = None if full else delta.open_table(uri)
    pattern = MONTH if table.granularity == "month" else DAY
    positions, periods = {}, set()
    for upstream, moment in table.upstream.items():
        seen = existing.transaction_version(position_key(table, upstream)) if existing else None
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
    metadata = {"lakehouse.gold.periods": ",".join(sorted(periods)) if existing else "all"}
    if existing is None or table.period is None:
        frame = table.build(read, None)
        written = delta.write(
            uri, frame, mode="overwrite", partition_by=[table.partition_by] if table.partition_by else None,
            metadata=metadata, transactions=positions,
        )  # fmt: skip
        return GoldBuild(None, frame.height, written)
    rebuilt = sorted(periods)
    frame = table.build(read, rebuilt)
    values = ", ".join(f"'{period}'" for period in rebuilt)
    written = delta.write(
        uri, frame, mode="overwrite", predicate=f'"{table.period}" IN ({values})',
        metadata=metadata, transactions=positions,
    )  # fmt: skip
    return GoldBuild(rebuilt, frame.height, written)
