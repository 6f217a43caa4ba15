"""A source table summarised per period of days of its watermark, by the database.

`source_rows_in_bronze` compares these summaries with those of its last pass and reads the rows
of the periods whose summary differs, not the table. Each period's summary (its rows and, for
a key of one integer column, two sums of the keys modulo a prime, otherwise its first and last
watermark) is one aggregate over the watermark's index, so only the summaries cross the wire.

Periods are cut on the column's raw values: text by the date it starts with (every accepted
text form does), timestamps at midnight, epoch numbers at UTC midnight. The cut does not depend
on the rows: a grid (its first day and its width in days) is kept from one pass to the next, so
that a period is compared with the same period. The first period also holds every earlier value
and the last every later one; more than MAX_PERIODS periods widen each period instead.

A period's summary changes when a row enters or leaves it, or when its key changes; without
key sums, when its first or last watermark does. The sums also add up: a pass records them
(`counts`), and the next takes from them the rows bronze saw leave the period since (deleted,
or updated to a later watermark) and adds those it saw join, so a period changed only by what
bronze captured is not read (`balanced`). A row updated to another watermark within its
period, keeping its key, changes no sum (and the edges only when it is at one): such a row is
found by a whole comparison (a changed contract or code, or a lost pass), not by this one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, timedelta
from typing import Any

import polars as pl

from asset_checks import last_pass
from lakehouse.bronze.deletes import PRIME, TERMS_PER_QUERY, summarised
from lakehouse.bronze.watermark import MARGIN, WatermarkRange
from lakehouse.resources import SourceDatabase
from lakehouse.sources.contract import Contract
from lakehouse.sources.errors import reading
from lakehouse.sources.timestamps import EPOCH_UNITS
from lakehouse.storage.sql import qualified, quoted

MAX_PERIODS = 512
EPOCH_DAY = date(1970, 1, 1)


@dataclass(frozen=True)
class Grid:
    """Periods of `width` days from `first` on, `count` of them."""

    first: date
    width: int
    count: int

    @classmethod
    def spanning(cls, low: date, high: date) -> Grid:
        width = 1
        while (high - low).days // width + 1 > MAX_PERIODS:
            width *= 2
        return cls(low, width, (high - low).days // width + 1)

    def extended_to(self, high: date) -> Grid | None:
        """This grid with periods added up to `high`; None when that makes too many."""
        count = max(self.count, (high - self.first).days // self.width + 1)
        return None if count > 2 * MAX_PERIODS else Grid(self.first, self.width, count)

    def days(self, number: int) -> tuple[date | None, date | None]:
        """The first day of period `number` and of the next one; None at the open ends."""
        start = self.first + timedelta(days=number * self.width)
        return (
            None if number == 0 else start,
            None if number == self.count - 1 else start + timedelta(days=self.width),
        )


@dataclass(frozen=True)
class Summary:
    """A digest of each period's summary, by period number, each period's rows and, for a key
    of one integer column, the summary as counts (`counts`)."""

    grid: Grid
    digests: list[str]
    rows: list[int]
    counts: list[list[int]]


def _day_of(value: Any) -> date | None:
    """The day a raw watermark value falls on, as the periods are cut."""
    if isinstance(value, str):
        try:
            return date.fromisoformat(value[:10])
        except ValueError:
            return None
    if isinstance(value, datetime):
        return (value.astimezone(UTC) if value.tzinfo else value).date()
    if isinstance(value, date):
        return value
    return None


class _Cut:
    """A day as a bound of the column's raw values."""

    def __init__(self, bounds: WatermarkRange) -> None:
        self.bounds = bounds

    @property
    def supported(self) -> bool:
        kind, form = self.bounds.kind, self.bounds.form
        if form.epoch:
            return kind.is_numeric()
        return kind in (pl.String, pl.Date) or isinstance(kind, pl.Datetime)

    def day_of(self, value: Any) -> date | None:
        if self.bounds.form.epoch and value is not None:
            seconds = float(value) / EPOCH_UNITS[self.bounds.form.epoch]
            return EPOCH_DAY + timedelta(days=int(seconds // 86_400))
        return _day_of(value)

    def bound(self, day: date) -> Any:
        kind, form = self.bounds.kind, self.bounds.form
        if form.epoch:
            return (day - EPOCH_DAY).days * 86_400 * EPOCH_UNITS[form.epoch]
        if kind == pl.String:
            return day.isoformat()
        if kind == pl.Date:
            return day
        midnight = datetime(day.year, day.month, day.day)
        return midnight.replace(tzinfo=UTC) if kind.time_zone else midnight  # type: ignore[union-attr]


def _conditions(
    cut: _Cut,
    column: str,
    days: tuple[date | None, date | None],
    source: SourceDatabase,
    first: int,
    excluding: WatermarkRange | None = None,
) -> tuple[list[str], list[Any]]:
    """The rows of `days`, less those the source's condition for `excluding` admits."""
    conditions, values = [], []
    for day, operator in zip(days, (">=", "<"), strict=True):
        if day is not None:
            values.append(cut.bound(day))
            conditions.append(f"{column} {operator} {source.placeholder(first + len(values) - 1)}")
    if excluding is not None:
        admitted, bound = excluding.sql(column, source.placeholder, first + len(values))
        values.extend(bound)
        conditions.append(f"NOT ({' AND '.join(admitted)})")
    return conditions or ["TRUE"], values


def summarise(
    contract: Contract, source: SourceDatabase, bounds: WatermarkRange, grid: Grid | None = None
) -> Summary | None:
    """Each period's digest, on `grid` extended to the source's newest day (a grid of its own
    without one); None when the column's values cannot be cut into days (text that starts
    with no date, epoch numbers held as text), when it holds none, or when the grid would need
    too many periods."""
    cut = _Cut(bounds)
    if not cut.supported:
        return None
    column, table = quoted(contract.watermark.column), qualified(contract.source.table)
    what = reading(contract, "summarising")
    extent = source.read(
        f"SELECT (SELECT min({column}) FROM {table}) AS low, (SELECT max({column}) FROM {table}) AS high",
        what=what,
    )
    low, high = (cut.day_of(value) for value in extent.row(0))
    if low is None or high is None:
        return None
    grid = Grid.spanning(low, high) if grid is None else grid.extended_to(high)
    if grid is None:
        return None
    found = _summaries(contract, source, cut, grid, range(grid.count))
    return Summary(
        grid,
        [last_pass.digest(row[1:]) for row in found],
        [int(row[1]) for row in found],
        [counts(row[1:]) for row in found] if _key_sums(contract) else [],
    )


def counts(summary: tuple) -> list[int]:
    """A period's summary (rows, key sum, key squares) as counts, which rows entering and
    leaving it add to and take from (an empty period sums to null)."""
    return [int(value or 0) for value in summary]


def _key_sums(contract: Contract) -> bool:
    key = contract.primary_key[0]
    return len(contract.primary_key) == 1 and contract.columns[key].type == "int"


def _summaries(
    contract: Contract,
    source: SourceDatabase,
    cut: _Cut,
    grid: Grid,
    numbers: Sequence[int],
    excluding: WatermarkRange | None = None,
) -> list[tuple]:
    """Each of the periods `numbers` summarised, less the rows the source's condition for
    `excluding` admits: (number, rows, key sum, key squares), or (number, rows, low, high)
    for a key that has no sums."""
    column, table = quoted(contract.watermark.column), qualified(contract.source.table)
    if _key_sums(contract):
        residue = f"(CAST({quoted(contract.primary_key[0])} AS BIGINT) % {PRIME})"
        measures = (
            f"CAST(sum({residue}) AS BIGINT) AS key_sum, "
            f"CAST(sum({residue} * {residue} % {PRIME}) AS BIGINT) AS key_squares"
        )
    else:
        # Comparing text costs more than the sums: a period's edges only where there are none.
        measures = f"CAST(min({column}) AS TEXT) AS low, CAST(max({column}) AS TEXT) AS high"
    found: list[tuple] = []
    for start in range(0, len(numbers), TERMS_PER_QUERY):
        terms, values = [], []
        for number in numbers[start : start + TERMS_PER_QUERY]:
            conditions, bound = _conditions(
                cut, column, grid.days(number), source, len(values) + 1, excluding
            )
            values.extend(bound)
            terms.append(
                f"SELECT {number} AS period, count(*) AS rows, {measures} FROM {table} "
                f"WHERE {' AND '.join(conditions)}"
            )
        read = source.read(" UNION ALL ".join(terms), values, what=reading(contract, "summarising"))
        found.extend(read.sort("period").rows())
    return found


def recent(grid: Grid, since: datetime, numbers: Sequence[int]) -> list[int]:
    """Those of the periods `numbers` that the rows a read from `since` admits can reach: the
    read reaches back a day before it in a text column (`WatermarkRange.sql`)."""
    reached = (since - MARGIN).date()
    return [number for number in numbers if (grid.days(number)[1] or date.max) > reached]


def after(bounds: WatermarkRange, since: datetime) -> WatermarkRange:
    """The column's values past `since`; the rows at `since` itself are rows up to it."""
    epoch = bounds.form.epoch
    step = timedelta(seconds=1 / EPOCH_UNITS[epoch]) if epoch else timedelta(microseconds=1)
    return WatermarkRange(bounds.column, bounds.kind, bounds.form, lower=since + step)


def before(
    contract: Contract,
    source: SourceDatabase,
    bounds: WatermarkRange,
    grid: Grid,
    since: datetime,
    numbers: Sequence[int],
) -> dict[int, tuple]:
    """The summary of each of the periods `numbers`, of its rows up to `since`: the rows a read
    from `since` does not admit (`source_chunks(..., keep_admitted=True)` reads the others).

    A pass records these beside its whole periods' summaries: the source gains rows past
    bronze's watermark while bronze loads and its checks run, and those rows are in the
    period's whole summary but not among its rows up to the watermark."""
    cut = _Cut(bounds)
    # The first period holds the rows without a watermark, which no condition admits.
    numbers = [number for number in numbers if number > 0]
    if not cut.supported or not numbers:
        return {}
    found = _summaries(contract, source, cut, grid, numbers, excluding=after(bounds, since))
    return {row[0]: row[1:] for row in found}


def unchanged_before(now: dict[int, tuple], recorded: dict[int, str]) -> list[int]:
    """Those of the periods `recorded` (number: the digest a pass recorded, by `before` or of
    the whole period) whose rows up to that pass's watermark (`now`, by `before`) are as it
    found them: their rows since are the ones a read from that watermark admits.

    A whole period's digest matches only when that period held no row the read admits at the
    pass."""
    return [
        number
        for number in sorted(recorded)
        if number in now and last_pass.digest(now[number]) == recorded[number]
    ]


def counted(
    rows: pl.DataFrame, contract: Contract, bounds: WatermarkRange, grid: Grid, since: datetime
) -> dict[int, list[int]]:
    """The counts (`counts`) of `rows` (source rows: the key and the raw watermark, as the
    driver types them) up to `since`, by period, as the source summarises its rows."""
    key, column = contract.primary_key[0], contract.watermark.column
    kind = rows.schema[column]
    admitted = replace(after(bounds, since), kind=kind).sql_admits().fill_null(False)
    rows = rows.filter(pl.col(column).is_not_null() & ~admitted)
    cut = _Cut(replace(bounds, kind=kind))
    starts = [cut.bound(grid.days(number)[0]) for number in range(1, grid.count)]
    # A period starts at its first day: a value on it is the period's, not the one before's.
    periods = pl.Series(starts, dtype=kind).search_sorted(rows.get_column(column), side="right")
    # SQL's remainder takes the sign of the key, polars' that of the divisor.
    residue = pl.col(key).cast(pl.Int64).abs() % PRIME * pl.col(key).cast(pl.Int64).sign()
    found = rows.with_columns(period=periods).group_by("period").agg(summarised(residue))
    return {int(period): [int(value) for value in values] for period, *values in found.iter_rows()}


def balanced(
    contract: Contract,
    bounds: WatermarkRange,
    grid: Grid,
    recorded: list[list[int]],
    now: dict[int, list[int]],
    since: datetime,
    moved: tuple[pl.DataFrame, pl.DataFrame],
) -> list[int]:
    """Those of the periods `now` (number: the counts of its rows up to `since`) whose counts
    are those a pass whose watermark was `since` recorded (`recorded`, by period), less the
    rows that left them and plus those that joined them (`moved`, as `counted` takes them):
    the periods changed only by the rows bronze saw leave and join.

    A row the source gained or lost that bronze did not see leaves its period unbalanced, and
    read."""
    # The first period holds the rows without a watermark, which no count up to `since` does.
    expected = {number: list(recorded[number]) for number in now if 0 < number < len(recorded)}
    for sign, rows in zip((-1, 1), moved, strict=True):
        for number, values in counted(rows, contract, bounds, grid, since).items():
            if number in expected:
                was = expected[number]
                expected[number] = [total + sign * part for total, part in zip(was, values, strict=True)]
    return [number for number in sorted(expected) if now[number] == expected[number]]


def period_rows(
    contract: Contract,
    source: SourceDatabase,
    bounds: WatermarkRange,
    grid: Grid,
    number: int,
    columns: list[str],
    excluding: WatermarkRange | None = None,
) -> pl.DataFrame:
    """The `columns` of the source rows of period `number` that lie in `bounds`, less those the
    source's condition for `excluding` admits (a read of those reads them)."""
    name = contract.watermark.column
    conditions, values = _conditions(_Cut(bounds), quoted(name), grid.days(number), source, 1, excluding)
    rows = source.read(
        f"SELECT {', '.join(map(quoted, dict.fromkeys([*columns, name])))} "
        f"FROM {qualified(contract.source.table)} WHERE {' AND '.join(conditions)}",
        values,
        what=reading(contract, "reconciling"),
    )
    return rows.filter(replace(bounds, kind=rows.schema[name]).exact()).select(columns)
