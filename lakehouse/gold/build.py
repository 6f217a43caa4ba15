"""Building a gold table incrementally: only the days new silver rows touch are rewritten.

For each silver table it reads, a gold table remembers the newest silver `_loaded_at` it has
seen, as an app transaction in its own commit. A run finds the days of the silver rows loaded
since, rebuilds exactly those days from silver, and replaces them with a predicate overwrite
in one commit that also moves the positions. A table without a period is rebuilt whole when
any input changed. Rebuilding a day from silver, rather than patching it, is what makes the
result equal to a full rebuild. The days are built a part at a time, each holding about
`PART_ROWS` input rows, and written as one stream: memory follows the part, not the table. A
day larger than a part is built in ranges of the table's `split_by` key, where it has one.

Rows silver deletes leave no `_loaded_at` behind: silver's deleting commits name the days the
deleted rows held, and a gold table also remembers the silver version it has read those
commits up to; those days are rebuilt like the others.

A backfill rebuilds the days it is given, changed or not, and leaves the
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
from lakehouse.gold.transforms import DAY, Reader, day_bounds
from lakehouse.resources import LakehouseStorage
from lakehouse.storage import delta, ledger
from lakehouse.storage.ledger import DELETED_DAYS, LOADED_AT
from lakehouse.storage.slices import bounds, key_cuts
from lakehouse.storage.sql import quoted

PART_ROWS = 2_000_000  # input rows a build of days holds at a time
# A table with a period is written in order of time into files of about this size, so that a
# day's rewrite replaces the few files holding it: the order facts keep a month per folder,
# whose one file would otherwise be rewritten for any of its days.
DAY_FILE_BYTES = 16 << 20
# Commit metadata: the days a write rebuilt, comma-separated, or "all".
PERIODS = "lakehouse.gold.periods"


@dataclass(frozen=True)
class GoldBuild:
    rebuilt: list[str] | None  # days rewritten; None: the whole table
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


def _replace_days(
    uri: str,
    table: GoldTable,
    frames: pl.DataFrame | Iterable[pl.DataFrame],
    days: list[str],
    **commit: Any,
) -> delta.DeltaTable:
    values = ", ".join(f"'{day}'" for day in days)
    return delta.write(
        uri, frames, mode="overwrite", predicate=f"{quoted(table.period)} IN ({values})",
        target_file_size=DAY_FILE_BYTES, **commit,
    )  # fmt: skip


def _rows_per_day(table: GoldTable, read: Reader, days: list[str]) -> dict[str, int]:
    """The input rows of each of `days`."""
    start, end = day_bounds(days)
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
    wanted = set(days)
    return {day: count for day, count in rows.items() if day in wanted}


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


@dataclass(frozen=True)
class _Part:
    days: list[str]
    keys: pl.Expr | None = None  # the range of the table's `split_by` it holds; None: all


def _split(table: GoldTable, read: Reader, day: str) -> list[_Part]:
    """`day` in parts of about PART_ROWS input rows by ranges of `split_by`, every row of one
    key value in the same part."""
    assert table.split_by is not None
    start, end = day_bounds([day])
    keys = pl.concat(
        read(name).filter(pl.col(moment).is_between(start, end, closed="left")).select(table.split_by)
        for name, moment in table.upstream.items()
    )
    cuts = key_cuts(keys, table.split_by, PART_ROWS)
    return [_Part([day], bound) for bound in bounds(pl.col(table.split_by), cuts)]


def _parts_of(table: GoldTable, read: Reader, days: list[str]) -> list[_Part]:
    rows = _rows_per_day(table, read, days)
    # Days left without rows (all moved elsewhere) build empty: their old rows go.
    parts: list[_Part] = []
    for part in _parts(rows, PART_ROWS) or [days]:
        large = len(part) == 1 and rows.get(part[0], 0) > PART_ROWS
        parts += _split(table, read, part[0]) if large and table.split_by else [_Part(part)]
    return parts


class _Built:
    """The frames of a build's parts, one at a time, counting the rows they hold."""

    def __init__(self, table: GoldTable, read: Reader, parts: list[_Part]) -> None:
        self.table, self.read, self.parts, self.rows = table, read, parts, 0

    def _reader(self, keys: pl.Expr | None) -> Reader:
        """The silver tables as a part reads them: its upstream tables within its `keys`."""
        if keys is None:
            return self.read
        return lambda name: self.read(name).filter(keys) if name in self.table.upstream else self.read(name)

    def __iter__(self) -> Iterator[pl.DataFrame]:
        self.rows = 0  # a write that retries iterates again
        for part in self.parts:
            frame = self.table.build(self._reader(part.keys), part.days)
            self.rows += frame.height
            yield frame


def build_gold(table: GoldTable, lakehouse: LakehouseStorage, run_id: str) -> GoldBuild:
    """Rebuild the days the silver rows loaded since the table's positions touch; a build
    overtaken by another that moved the positions first starts again from them."""
    return ledger.redo_when_moved(lambda: _build_once(table, lakehouse, run_id), f"gold/{table.name}")


def _build_once(table: GoldTable, lakehouse: LakehouseStorage, run_id: str) -> GoldBuild:
    uri = lakehouse.table_uri("gold", table.name)
    read = silver_reader(lakehouse)
    existing = delta.open_table(uri)
    claim = ledger.Claim(uri, existing)
    positions, days = {}, set()
    for upstream, moment in table.upstream.items():
        seen = ledger.read(existing, ledger.gold_position(table.name, upstream))
        since = ledger.moment(seen or 0)
        changed = read(upstream).filter(pl.col(LOADED_AT) > since)
        summary = changed.select(
            newest=pl.col(LOADED_AT).max(), days=pl.col(moment).dt.strftime(DAY).unique().implode()
        ).collect()
        newest = summary["newest"][0]
        positions[ledger.gold_position(table.name, upstream)] = (
            ledger.micros(newest) if newest else (seen or 0)
        )
        days.update(summary["days"].explode().drop_nulls().to_list())
        deletes = ledger.gold_deletes_position(table.name, upstream)
        version, deleted = _deleted_days(
            lakehouse.table_uri("silver", upstream), ledger.read(existing, deletes), moment
        )
        positions[deletes] = version
        days.update(deleted)

    if existing is not None and not days:
        return GoldBuild([], 0, existing)
    metadata = {
        "lakehouse.run_id": run_id,
        PERIODS: ",".join(sorted(days)) if existing else "all",
    }
    partition_by = [table.partition_by] if table.partition_by else None
    if table.period is None or not days:
        frame = table.build(read, None)
        written = delta.write(
            uri, frame, mode="overwrite", partition_by=partition_by,
            metadata=metadata, transactions=positions, claim=claim,
        )  # fmt: skip
        return GoldBuild(None, frame.height, written)
    if existing is None:
        built = _Built(table, read, _parts_of(table, read, sorted(days)))
        written = delta.write(
            uri, built, mode="overwrite", partition_by=partition_by, target_file_size=DAY_FILE_BYTES,
            metadata=metadata, transactions=positions, claim=claim,
        )  # fmt: skip
        return GoldBuild(None, built.rows, written)
    return _rebuild_days(
        uri, table, read, sorted(days), metadata=metadata, transactions=positions, claim=claim
    )


def _rebuild_days(uri: str, table: GoldTable, read: Reader, days: list[str], **commit: Any) -> GoldBuild:
    built = _Built(table, read, _parts_of(table, read, days))
    written = _replace_days(uri, table, built, days, **commit)
    return GoldBuild(days, built.rows, written)


def backfill(table: GoldTable, lakehouse: LakehouseStorage, days: list[str], run_id: str) -> GoldBuild:
    """Rebuild `days` from silver (a table without periods: whole), changed or not.

    A table not built yet is built whole, as a run without a backfill would."""
    uri = lakehouse.table_uri("gold", table.name)
    existing = delta.open_table(uri)
    if existing is None:
        return build_gold(table, lakehouse, run_id)
    read = silver_reader(lakehouse)
    metadata = {"lakehouse.run_id": run_id, PERIODS: ",".join(days)}
    if table.period is None:
        frame = table.build(read, None)
        return GoldBuild(None, frame.height, delta.write(uri, frame, mode="overwrite", metadata=metadata))
    return _rebuild_days(uri, table, read, days, metadata=metadata)
