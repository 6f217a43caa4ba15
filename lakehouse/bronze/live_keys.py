"""A summary of the keys bronze holds live, per range of the key, carried from run to run.

Finding deletes compares the source's summary of each key range with that of the keys bronze
holds live (lakehouse/bronze/deletes.py). Working out which keys are live reads every bronze
row. Instead, a run that looked for deletes, or a first load, records the live keys' summary
after its commit (the bronze asset keeps it in its materialization's metadata, with the bronze
version it describes), and the next run starts from it: it adds the keys its own rows make
live, looked up in bronze by key, and reads bronze's live keys only in the ranges whose
summaries differ.

A record holds while the last commit that changed bronze's rows is the one it names (a
compaction or vacuum since changes none); otherwise, and for a key of several columns or of
another type, the run reads every live key.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import polars as pl
from deltalake import DeltaTable

from lakehouse.bronze import tombstones
from lakehouse.bronze.deletes import (
    SUMMARY,
    SUMMARY_SCHEMA,
    Deletes,
    KeyRanges,
    differing,
    gone_from,
    ranged,
    side_by_side,
    source_extent,
    source_summary,
    summary,
    summary_as_json,
    summary_from_json,
)
from lakehouse.resources import SourceDatabase
from lakehouse.sources.contract import Contract
from lakehouse.storage import delta


@dataclass(frozen=True)
class LiveKeys:
    """The summary (range, rows, sum, squares) of the keys bronze holds live at `version`."""

    version: int
    ranges: KeyRanges
    summary: pl.DataFrame

    def as_json(self) -> dict[str, Any]:
        return {"version": self.version, **summary_as_json(self.ranges, self.summary)}

    @classmethod
    def from_json(cls, data: Any) -> LiveKeys | None:
        try:
            return cls(int(data["version"]), *summary_from_json(data))
        except (KeyError, TypeError, ValueError):
            return None

    def holds_for(self, table: DeltaTable) -> bool:
        """Whether `table` holds the rows it held at the recorded version."""
        return delta.last_row_change(table) == self.version


def _plus(left: pl.DataFrame, right: pl.DataFrame, sign: int) -> pl.DataFrame:
    joined = left.join(right, on="range", how="full", coalesce=True, suffix="_other").fill_null(0)
    return joined.select(
        "range", *((pl.col(name) + sign * pl.col(f"{name}_other")).alias(name) for name in SUMMARY)
    ).filter(pl.col("rows") != 0)


def remaining(found: Deletes, key: str) -> LiveKeys | None:
    """The live keys' summary once the keys `found` are tombstones (its version still to be
    set); None when the keys were compared whole."""
    if found.ranges is None or found.held is None:
        return None
    gone = summary(found.keys, key, found.ranges).cast(SUMMARY_SCHEMA)
    return LiveKeys(-1, found.ranges, _plus(found.held.cast(SUMMARY_SCHEMA), gone, -1))


def first_load(contract: Contract, table: DeltaTable) -> LiveKeys | None:
    """The live keys' summary after a first load wrote `table`, every key of which is live (its
    version still to be set); None for a key compared whole. Without it, the first run after
    would read every live key."""
    key = contract.primary_key[0]
    keys = pl.scan_delta(table).select(contract.primary_key).collect()
    if not ranged(contract, keys):
        return None
    keys = tombstones.distinct_keys(keys.filter(pl.col(key).is_not_null()))
    if keys.is_empty():
        return None
    ranges = KeyRanges.spanning(keys[key].min(), keys[key].max())
    return LiveKeys(-1, ranges, summary(keys, key, ranges).cast(SUMMARY_SCHEMA))


def find_deletes_from(
    contract: Contract, source: SourceDatabase, table: DeltaTable, record: LiveKeys, appended: pl.DataFrame
) -> tuple[Deletes, LiveKeys] | None:
    """The deletes, starting from `record` (which must hold for `table`) and the keys this run
    `appended`, and the live keys' summary after them (`remaining`); None when the record's
    ranges cannot take the keys the source or this run holds now."""
    key = contract.primary_key[0]
    appended = appended.filter(pl.col(key).is_not_null())
    low, high = source_extent(contract, source, key)
    if low is None or high is None:
        return None
    if not appended.is_empty():
        low, high = min(low, appended[key].min()), max(high, appended[key].max())
    ranges = record.ranges.extended_to(low, high)
    if ranges is None:
        return None
    bronze = pl.scan_delta(table)
    earlier = tombstones.live_keys(bronze.filter(pl.col(key).is_in(appended[key].implode())), contract)
    became_live = appended.join(earlier.cast(dict(appended.schema)), on=key, how="anti")
    held = _plus(record.summary, summary(became_live, key, ranges).cast(SUMMARY_SCHEMA), 1)
    in_source = source_summary(contract, source, key, ranges)
    numbers = differing(side_by_side(in_source, held))
    live = appended
    if numbers:
        # The live keys of the ranges that differ only: bronze's, and those this run appended.
        inside = pl.any_horizontal(pl.col(key).is_between(*ranges.bounds(number)) for number in numbers)
        held_inside = tombstones.live_keys(bronze.filter(inside), contract)
        live = tombstones.distinct_keys(pl.concat([held_inside.cast(dict(appended.schema)), appended]))
    gone = gone_from(contract, source, live, ranges, numbers)
    found = Deletes(gone, ranges.count, len(numbers), ranges, held, carried=True, in_source=in_source)
    return found, remaining(found, key)
