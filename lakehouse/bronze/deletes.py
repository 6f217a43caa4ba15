"""Finding the rows a source database deleted: its keys against the keys bronze holds live.

Watermark extraction reads every row that changed and never one that is gone, so each run
(or each run on the contract's cadence) compares keys. Cost follows the change, not the
table: for a key of one integer column, both sides are summarised per range of at least
`RANGE_WIDTH` key values (rows, and two sums of the keys modulo a prime), the source's in
SQL over the key's index, so that only the summaries cross the wire, bronze's from the keys it
holds live or from the summary the last run left (lakehouse/bronze/live_keys.py); keys are
read only for the ranges whose summaries differ. A key of another type, or of several
columns, is compared whole.

A range also differs when the source holds keys bronze does not have yet (inserted since the
extraction, or without a watermark): its keys are read, and only those gone are deletes.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import polars as pl

from lakehouse.resources import SourceDatabase
from lakehouse.sources.contract import Contract, DeleteCadence
from lakehouse.sources.errors import reading
from lakehouse.storage import ledger
from lakehouse.storage.sql import qualified, quoted

RANGE_WIDTH = 1 << 16  # key values per range, at least
MAX_RANGES = 1024
TERMS_PER_QUERY = 200  # SQLite allows 500 SELECTs in one UNION
PRIME = 1_000_003
SUMMARY = ("rows", "sum", "squares")
SUMMARY_SCHEMA = {"range": pl.Int64, **dict.fromkeys(SUMMARY, pl.Int64)}
SUMMARY_PART = 1 << 20


@dataclass(frozen=True)
class Deletes:
    """The keys bronze holds live that the source no longer has, and what finding them took."""

    keys: pl.DataFrame
    ranges_compared: int  # 0: compared whole
    ranges_read: int
    # For a key of one integer column: the ranges compared and the summary of the live keys.
    ranges: KeyRanges | None = None
    held: pl.DataFrame | None = None
    carried: bool = False  # the live keys' summary came from the last run
    in_source: pl.DataFrame | None = None  # the source's summary of the same ranges


def due(contract: Contract, checked: int | None, now: datetime) -> bool:
    """Whether this run looks for deletes: `checked` is when bronze last did (microseconds
    since the epoch, from its ledger)."""
    if contract.deletes == "never":
        return False
    if not isinstance(contract.deletes, DeleteCadence) or checked is None:
        return True
    return now - ledger.moment(checked) >= contract.deletes.every


def describe(contract: Contract, found: Deletes | None, first_load: bool) -> str:
    """How a run looked for deletes, or why it did not, for its metadata."""
    if found is not None:
        carried = " (bronze's from the last run's summary)" if found.carried else ""
        how = (
            f"compared key ranges: {found.ranges_compared}{carried}, read the keys of {found.ranges_read}"
            if found.ranges_compared
            else "compared every key"
        )
        return f"{how}: {found.keys.height} deleted"
    if contract.deletes == "never":
        return "off (deletes: never)"
    if first_load:
        return "not on a first load"
    return f"not due ({contract.deletes})"


def ranged(contract: Contract, live: pl.DataFrame) -> bool:
    return len(contract.primary_key) == 1 and live.schema[contract.primary_key[0]].is_integer()


@dataclass(frozen=True)
class KeyRanges:
    """`count` ranges of `width` key values from `low` on, both sides cut alike."""

    low: int
    width: int
    count: int

    @classmethod
    def spanning(cls, low: int, high: int) -> KeyRanges:
        # Sparse keys widen the ranges rather than multiply them.
        width = RANGE_WIDTH
        while (high - low) // width + 1 > MAX_RANGES:
            width *= 2
        return cls(low, width, (high - low) // width + 1)

    def extended_to(self, low: int, high: int) -> KeyRanges | None:
        """These ranges and more up to `high`; None when `low` lies before them or the ranges
        would be too many."""
        count = max(self.count, (high - self.low) // self.width + 1)
        return None if low < self.low or count > 2 * MAX_RANGES else KeyRanges(self.low, self.width, count)

    def bounds(self, number: int) -> tuple[int, int]:
        start = self.low + number * self.width
        return start, start + self.width - 1


def summary_as_json(ranges: KeyRanges, summary: pl.DataFrame) -> dict[str, Any]:
    """`ranges` and their `summary`, as a materialization's JSON metadata keeps them."""
    return {
        "ranges": [ranges.low, ranges.width, ranges.count],
        **{name: summary.get_column(name).to_list() for name in SUMMARY_SCHEMA},
    }


def summary_from_json(data: Any) -> tuple[KeyRanges, pl.DataFrame]:
    """What `summary_as_json` kept; KeyError, TypeError or ValueError when it is not that."""
    columns = {name: data[name] for name in SUMMARY_SCHEMA}
    return KeyRanges(*data["ranges"]), pl.DataFrame(columns, schema=SUMMARY_SCHEMA)


@dataclass(frozen=True)
class SourceKeys:
    """The source's summary of each of `ranges`, as a search for deletes took it: the ranges
    reach past every key the source held."""

    ranges: KeyRanges
    summary: pl.DataFrame

    def over(self, ranges: KeyRanges) -> pl.DataFrame | None:
        """The summary of `ranges`, when they are cut as these are (more or fewer of them: those
        past the source's keys are empty); None when they are cut otherwise."""
        if (ranges.low, ranges.width) != (self.ranges.low, self.ranges.width):
            return None
        numbers = pl.DataFrame({"range": pl.int_range(ranges.count, eager=True, dtype=pl.Int64)})
        return numbers.join(self.summary, on="range", how="left").fill_null(0)


def summarised(residue: pl.Expr) -> list[pl.Expr]:
    """A group's `SUMMARY`: its rows, and the sums of each row's `residue` (of its key, modulo
    `PRIME`) and of that residue's square."""
    return [
        pl.len().cast(pl.Int64).alias("rows"),
        residue.sum().alias("sum"),
        (residue * residue % PRIME).sum().alias("squares"),
    ]


def summary(live: pl.DataFrame, key: str, ranges: KeyRanges) -> pl.DataFrame:
    """The summary of each range of the keys `live`, added up from parts of `SUMMARY_PART` keys:
    the whole at once would hold each intermediate column for every key (1.3 GiB for 30M)."""
    offset = pl.col(key) - ranges.low
    parts = [
        live.slice(start, SUMMARY_PART)
        .group_by((offset // ranges.width).alias("range"))
        .agg(summarised(offset % PRIME))
        for start in range(0, max(live.height, 1), SUMMARY_PART)
    ]
    return pl.concat(parts).group_by("range").agg(pl.col(SUMMARY).sum())


def source_summary(contract: Contract, source: SourceDatabase, key: str, ranges: KeyRanges) -> pl.DataFrame:
    """The source's summary of each range: one aggregate per range over the key's index, which
    reads the keys in order; a `GROUP BY` of the ranges would sort every key first."""
    column, table = quoted(key), qualified(contract.source.table)
    residue = f"((CAST({column} AS BIGINT) - {ranges.low}) % {PRIME})"
    terms = [
        f"SELECT {number} AS range, count(*) AS rows, CAST(sum({residue}) AS BIGINT) AS sum, "
        f"CAST(sum({residue} * {residue} % {PRIME}) AS BIGINT) AS squares "
        f"FROM {table} WHERE {column} BETWEEN {low} AND {high}"
        for number in range(ranges.count)
        for low, high in [ranges.bounds(number)]
    ]
    parts = [
        source.read(
            " UNION ALL ".join(terms[first : first + TERMS_PER_QUERY]),
            what=reading(contract, "comparing keys of"),
        )
        for first in range(0, len(terms), TERMS_PER_QUERY)
    ]
    return pl.concat(parts).cast({"range": pl.Int64, **dict.fromkeys(SUMMARY, pl.Int64)}).fill_null(0)


def source_extent(contract: Contract, source: SourceDatabase, key: str) -> tuple[int | None, int | None]:
    column, table = quoted(key), qualified(contract.source.table)
    # Two subqueries, each one step down the key's index; min and max in one SELECT scan it all.
    extent = source.read(
        f"SELECT (SELECT min({column}) FROM {table}) AS low, (SELECT max({column}) FROM {table}) AS high",
        what=reading(contract, "comparing keys of"),
    )
    low, high = extent.row(0)
    return (None, None) if low is None or high is None else (int(low), int(high))


def source_keys(
    contract: Contract, source: SourceDatabase, live: pl.DataFrame, bounds: tuple[int, int] | None = None
) -> pl.DataFrame:
    keys = ", ".join(map(quoted, contract.primary_key))
    condition = ""
    if bounds is not None:
        condition = f" WHERE {quoted(contract.primary_key[0])} BETWEEN {bounds[0]} AND {bounds[1]}"
    found = source.read(
        f"SELECT {keys} FROM {qualified(contract.source.table)}{condition}",
        what=reading(contract, "comparing keys of"),
    )
    return found.cast(dict(live.schema))


def side_by_side(source_side: pl.DataFrame, held: pl.DataFrame) -> pl.DataFrame:
    """Each range's summary in the source and of the keys `held` (its columns suffixed `_held`)."""
    return source_side.join(held, on="range", how="left", suffix="_held").fill_null(0)


def differing(compared: pl.DataFrame) -> list[int]:
    """The ranges whose two summaries differ, of those `side_by_side` compared."""
    differs = pl.any_horizontal(pl.col(name) != pl.col(f"{name}_held") for name in SUMMARY)
    return compared.filter(differs).get_column("range").sort().to_list()


def gone_from(
    contract: Contract, source: SourceDatabase, held: pl.DataFrame, ranges: KeyRanges, numbers: list[int]
) -> pl.DataFrame:
    """The keys of `held` in the ranges `numbers` that the source no longer has."""
    key = contract.primary_key[0]
    gone = [held.head(0)]
    for number in numbers:
        low, high = ranges.bounds(number)
        inside = held.filter(pl.col(key).is_between(low, high))
        if not inside.is_empty():
            gone.append(inside.join(source_keys(contract, source, held, (low, high)), on=key, how="anti"))
    return pl.concat(gone)


def find_deletes(contract: Contract, source: SourceDatabase, live: pl.DataFrame) -> Deletes:
    """The keys of `live` (the keys bronze holds live) the source no longer has."""
    if not ranged(contract, live):
        gone = live.join(source_keys(contract, source, live), on=contract.primary_key, how="anti")
        return Deletes(gone, 0, 0)
    key = contract.primary_key[0]
    live = live.filter(pl.col(key).is_not_null())
    low, high = source_extent(contract, source, key)
    if live.is_empty() or low is None or high is None:
        return Deletes(live, 0, 0)  # nothing held, or the source holds nothing
    ranges = KeyRanges.spanning(min(low, live[key].min()), max(high, live[key].max()))
    held = summary(live, key, ranges)
    in_source = source_summary(contract, source, key, ranges)
    numbers = differing(side_by_side(in_source, held))
    gone = gone_from(contract, source, live, ranges, numbers)
    return Deletes(gone, ranges.count, len(numbers), ranges, held, in_source=in_source)
