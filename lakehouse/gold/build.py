"""Building a gold table incrementally: only the periods new silver rows touch are rewritten.

For each silver table it reads, a gold table remembers the newest silver `_loaded_at` it has
seen, as an app transaction in its own commit. A run finds the periods (days or months) of
the silver rows loaded since, rebuilds exactly those periods from silver, and replaces them
with a predicate overwrite in one commit that also moves the positions. A table without a
period is rebuilt whole when any input changed. Rebuilding a period from silver, rather than
patching it, is what makes the result equal to a full rebuild. The periods are built a part
of their days at a time, each holding about `PART_ROWS` input rows, and written as one stream:
memory follows the part, not the table or its largest month.

Rows silver deletes leave no `_loaded_at` behind: silver's deleting commits name the days the
deleted rows held, and a gold table also remembers the silver version it has read those
commits up to; their periods are rebuilt like the others.

A backfill rebuilds the periods of the days it is given, changed or not, and leaves the
positions where they are: what changed since the last build is still rebuilt by the next run.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import polars as pl

from lakehouse.gold.tables import GoldTable
from lakehouse.gold.transforms import DAY, MONTH, Reader, period_bounds
from lakehouse.resources import LakehouseStorage
from lakehouse.storage import delta, ledger
from lakehouse.storage.ledger import DELETED_DAYS, LOADED_AT
from lakehouse.storage.sql import quoted

PART_ROWS = 2_000_000  # input rows a build of periods holds at a time


@dataclass(frozen=True)
class GoldBuild:
    rebuilt: list[str] | None  # periods rewritten; None: the whole table
    rows_written: int
    table: delta.DeltaTable | None


def _deleted_days(uri: str, since: int | None, column: str) -> tuple[int, set[str]]:
    """The silver table's version now, and the days of `column` its rows deleted after
    version `since` held (None: none looked for yet, so none are owed)."""
    silver = delta.load_table(uri)
    version = silver.version()
    days: set[str] = set()
    if since is None:
        return version, days
    for commit in delta.commits_after(silver, since):
        if DELETED_DAYS in commit:
            days.update(json.loads(commit[DELETED_DAYS]).get(column, []))
    return version, days


def silver_reader(lakehouse: LakehouseStorage) -> Reader:
    def read(name: str) -> pl.LazyFrame:
        return delta.scan(lakehouse.table_uri("silver", name))

    return read


def _replace_periods(
    uri: str,
    table: GoldTable,
    frames: pl.DataFrame | Iterable[pl.DataFrame],
    periods: list[str],
    **commit: Any,
) -> delta.DeltaTable:
    values = ", ".join(f"'{period}'" for period in periods)
    return delta.write(
        uri, frames, mode="overwrite", predicate=f"{quoted(table.period)} IN ({values})", **commit
    )


def _rows_per_day(table: GoldTable, read: Reader, periods: list[str]) -> dict[str, int]:
    """The input rows of each day of `periods` (days, or months of a monthly table)."""
    start, end = period_bounds(periods)
    rows: Counter[str] = Counter()
    for upstream, moment in table.upstream.items():
        counts = (
            read(upstream)
            .filter(pl.col(moment).is_between(start, end, closed="left"))
            .group_by(pl.col(moment).dt.date().alias("day"))
            .len()
            .collect()
        )
        rows.update({day.isoformat(): count for day, count in counts.iter_rows()})
    wanted = set(periods)
    return {day: count for day, count in rows.items() if day[: len(periods[0])] in wanted}


def _parts(rows_per_day: dict[str, int], limit: int) -> list[list[str]]:
    """Consecutive days in parts of at most `limit` rows (a larger day is a part of its own)."""
    parts: list[list[str]] = []
    held = 0
    for day in sorted(rows_per_day):
        if not parts or held + rows_per_day[day] > limit:
            parts.append([])
            held = 0
        parts[-1].append(day)
        held += rows_per_day[day]
    return parts


class _Built:
    """The frames of a build's parts, one at a time, counting the rows they hold."""

    def __init__(self, table: GoldTable, read: Reader, parts: list[list[str]]) -> None:
        self.table, self.read, self.parts, self.rows = table, read, parts, 0

    def __iter__(self) -> Iterator[pl.DataFrame]:
        self.rows = 0  # a write that retries iterates again
        for part in self.parts:
            frame = self.table.build(self.read, part)
            self.rows += frame.height
            yield frame


def build_gold(table: GoldTable, lakehouse: LakehouseStorage, run_id: str) -> GoldBuild:
    """Rebuild the periods the silver rows loaded since the table's positions touch; a build
    overtaken by another that moved the positions first starts again from them."""
    return ledger.redo_when_moved(lambda: _build_once(table, lakehouse, run_id), f"gold/{table.name}")


def _build_once(table: GoldTable, lakehouse: LakehouseStorage, run_id: str) -> GoldBuild:
    uri = lakehouse.table_uri("gold", table.name)
    read = silver_reader(lakehouse)
    existing = delta.open_table(uri)
    claim = ledger.Claim(uri, existing)
    pattern = MONTH if table.granularity == "month" else DAY
    positions, periods = {}, set()
    for upstream, moment in table.upstream.items():
        seen = ledger.read(existing, ledger.gold_position(table.name, upstream))
        since = ledger.moment(seen or 0)
        changed = read(upstream).filter(pl.col(LOADED_AT) > since)
        summary = changed.select(
            newest=pl.col(LOADED_AT).max(), periods=pl.col(moment).dt.strftime(pattern).unique().implode()
        ).collect()
        newest = summary["newest"][0]
        positions[ledger.gold_position(table.name, upstream)] = (
            ledger.micros(newest) if newest else (seen or 0)
        )
        periods.update(summary["periods"].explode().drop_nulls().to_list())
        deletes = ledger.gold_deletes_position(table.name, upstream)
        version, days = _deleted_days(
            lakehouse.table_uri("silver", upstream), ledger.read(existing, deletes), moment
        )
        positions[deletes] = version
        periods.update(day[: len("YYYY-MM")] if pattern == MONTH else day for day in days)

    if existing is not None and not periods:
        return GoldBuild([], 0, existing)
    metadata = {
        "lakehouse.run_id": run_id,
        "lakehouse.gold.periods": ",".join(sorted(periods)) if existing else "all",
    }
    partition_by = [table.partition_by] if table.partition_by else None
    if table.period is None or not periods:
        frame = table.build(read, None)
        written = delta.write(
            uri, frame, mode="overwrite", partition_by=partition_by,
            metadata=metadata, transactions=positions, claim=claim,
        )  # fmt: skip
        return GoldBuild(None, frame.height, written)
    if existing is None:
        built = _Built(table, read, _parts_of(table, read, sorted(periods)))
        written = delta.write(
            uri, built, mode="overwrite", partition_by=partition_by,
            metadata=metadata, transactions=positions, claim=claim,
        )  # fmt: skip
        return GoldBuild(None, built.rows, written)
    return _rebuild_periods(
        uri, table, read, sorted(periods), metadata=metadata, transactions=positions, claim=claim
    )


def _parts_of(table: GoldTable, read: Reader, periods: list[str]) -> list[list[str]]:
    # Periods left without rows (all moved elsewhere) build empty: their old rows go.
    return _parts(_rows_per_day(table, read, periods), PART_ROWS) or [periods]


def _rebuild_periods(
    uri: str, table: GoldTable, read: Reader, periods: list[str], **commit: Any
) -> GoldBuild:
    built = _Built(table, read, _parts_of(table, read, periods))
    written = _replace_periods(uri, table, built, periods, **commit)
    return GoldBuild(periods, built.rows, written)


def backfill(table: GoldTable, lakehouse: LakehouseStorage, days: list[str], run_id: str) -> GoldBuild:
    """Rebuild the periods holding `days` from silver (a table without periods: whole), changed
    or not: the days, or their months for a monthly table.

    A table not built yet is built whole, as a run without a backfill would."""
    uri = lakehouse.table_uri("gold", table.name)
    existing = delta.open_table(uri)
    if existing is None:
        return build_gold(table, lakehouse, run_id)
    read = silver_reader(lakehouse)
    periods = sorted({day[: len("YYYY-MM")] for day in days}) if table.granularity == "month" else days
    metadata = {"lakehouse.run_id": run_id, "lakehouse.gold.periods": ",".join(periods)}
    if table.period is None:
        frame = table.build(read, None)
        return GoldBuild(None, frame.height, delta.write(uri, frame, mode="overwrite", metadata=metadata))
    return _rebuild_periods(uri, table, read, periods, metadata=metadata)
