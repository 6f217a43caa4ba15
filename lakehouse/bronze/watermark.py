"""Which rows lie in a range of watermark instants, whatever form the column holds them in.

A range is read in two steps: a condition on the raw column that its index serves, which may
admit a few rows more, then the exact test on the instants the values name (see
`lakehouse.sources.timestamps`), after reading.

- Database timestamps compare exactly in SQL with a bound of their own kind: a wall-clock
  time in the contract's zone for `TIMESTAMP WITHOUT TIME ZONE` (the session's zone plays no
  part), an instant for `TIMESTAMPTZ`.
- Epoch numbers compare with an integer bound.
- Text does not compare as time when forms are mixed (`2013-06-30 18:00:00` sorts before
  `2013-06-30T17:00:00Z`). But every accepted text form starts with the date of its wall-clock
  time, which lies within a day of its instant whatever its offset or zone; so the text bound
  one day wider than the range admits every row in it. Values in the one fixed-width UTC form
  the demo writes (`SQLITE_TIMESTAMP_FORMAT`) do compare as time: of the widened day only the
  other forms are read, and a source holding that form alone reads exactly the range, through
  its index.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import polars as pl

from lakehouse.sources.timestamps import EPOCH_UNITS, TimestampForm, timestamp_text, to_utc

# Any form's wall-clock date lies within this of its instant (offsets span -12 h to +14 h).
MARGIN = timedelta(days=1)
# SQL LIKE pattern of SQLITE_TIMESTAMP_FORMAT's values: text order is time order among them.
CANONICAL_LIKE = "____-__-__ __:__:__.______+00:00"
CANONICAL = re.compile(r".{4}-.{2}-.{2} .{2}:.{2}:.{2}\..{6}\+00:00", re.DOTALL)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _day_text(moment: datetime) -> str:
    return moment.astimezone(UTC).date().isoformat()


@dataclass(frozen=True)
class WatermarkRange:
    """Rows whose `column` names an instant in [lower, upper] (an open end where None); with
    `newest`, also at most the source's newest raw value, so rows changed during a read wait
    for the next. `kind` is the column's type as the driver or the table gives it."""

    column: str
    kind: pl.DataType
    form: TimestampForm
    lower: datetime | None = None
    upper: datetime | None = None
    newest: object = None

    @property
    def is_text(self) -> bool:
        """Whether the column holds timestamps as text, whose order is not time order."""
        return self.kind in (pl.String, pl.Null) and not self.form.epoch

    def _bound(self, moment: datetime, rounding: Callable[[float], int]) -> object:
        """`moment` as a bind value for a column that holds dates, timestamps or epoch numbers:
        dates and naive timestamps are wall-clock values in the contract's zone."""
        local = moment.astimezone(ZoneInfo(self.form.time_zone))
        if self.kind == pl.Date:
            return local.date()
        if isinstance(self.kind, pl.Datetime):
            return moment if self.kind.time_zone else local.replace(tzinfo=None)
        if self.form.epoch:
            return rounding((moment - EPOCH) / timedelta(seconds=1) * EPOCH_UNITS[self.form.epoch])
        return moment

    def sql(
        self, quoted_column: str, placeholder: Callable[[int], str], first: int
    ) -> tuple[list[str], list[Any]]:
        """The SQL conditions, and their bind values numbered from `first`, that admit every
        row in the range."""
        conditions: list[str] = []
        values: list[Any] = []

        def bind(value: object) -> str:
            values.append(value)
            return placeholder(first + len(values) - 1)

        if self.newest is not None:
            conditions.append(f"{quoted_column} <= {bind(self.newest)}")
        if self.lower is not None and self.is_text:
            exact, wide = timestamp_text(self.lower), _day_text(self.lower - MARGIN)
            # One range the index serves, whose second condition reads only the index: the
            # margin's canonical rows are skipped without reading them. (An OR of two ranges
            # made SQLite scan the index from its start.)
            conditions.append(f"{quoted_column} >= {bind(wide)}")
            conditions.append(
                f"({quoted_column} >= {bind(exact)} OR {quoted_column} NOT LIKE {bind(CANONICAL_LIKE)})"
            )
        elif self.lower is not None:
            conditions.append(f"{quoted_column} >= {bind(self._bound(self.lower, math.floor))}")
        if self.upper is not None and self.is_text:
            conditions.append(f"{quoted_column} < {bind(_day_text(self.upper + 2 * MARGIN))}")
        elif self.upper is not None:
            conditions.append(f"{quoted_column} <= {bind(self._bound(self.upper, math.ceil))}")
        return conditions, values

    def candidates_sql(
        self, quoted_column: str, placeholder: Callable[[int], str], latest: datetime | None
    ) -> tuple[list[str], list[Any]]:
        """The conditions and bind values of the text values that may name a later instant
        than `latest`, the greatest text's: those in the margin before it, less those in the
        canonical form when the greatest text is (it is then their latest). With no `latest`
        (the greatest text names no instant) every value is a candidate."""
        conditions, values = [f"{quoted_column} <= {placeholder(1)}"], [self.newest]
        if latest is not None:
            conditions.append(f"{quoted_column} >= {placeholder(2)}")
            values.append(_day_text(latest - MARGIN))
        if isinstance(self.newest, str) and CANONICAL.fullmatch(self.newest):
            conditions.append(f"{quoted_column} NOT LIKE {placeholder(len(values) + 1)}")
            values.append(CANONICAL_LIKE)
        return conditions, values

    def instant(self) -> pl.Expr:
        """The column's values as UTC instants."""
        return to_utc(pl.col(self.column), self.kind, self.form)

    def admits(self) -> pl.Expr:
        """A condition on the raw column that every row in the range meets, which Delta scans
        push down to file statistics; `exact` after it."""
        raw, condition = pl.col(self.column), pl.lit(True)
        if self.is_text:
            if self.lower is not None:
                condition &= raw >= _day_text(self.lower - MARGIN)
            if self.upper is not None:
                condition &= raw < _day_text(self.upper + 2 * MARGIN)
        elif not (self.form.epoch and self.kind == pl.String):
            if self.lower is not None:
                condition &= raw >= pl.lit(self._bound(self.lower, math.floor))
            if self.upper is not None:
                condition &= raw <= pl.lit(self._bound(self.upper, math.ceil))
        return condition

    def sql_admits(self) -> pl.Expr:
        """The rows `sql` admits, `newest` aside, as a condition on the raw column: `admits`
        and, in text, the canonical form's values from the lower bound's instant on."""
        condition = self.admits()
        if self.lower is not None and self.is_text:
            raw = pl.col(self.column)
            canonical = raw.str.contains(f"^(?s:{CANONICAL.pattern})$")
            condition &= (raw >= timestamp_text(self.lower)) | ~canonical
        return condition

    def exact(self) -> pl.Expr:
        """The rows in the range. A value that names no instant is kept where `admits` keeps
        it: whether it is read depends on its text alone, so every run treats it alike."""
        moment, inside = self.instant(), pl.lit(True)
        if self.lower is not None:
            inside &= moment >= pl.lit(self.lower)
        if self.upper is not None:
            inside &= moment <= pl.lit(self.upper)
        return pl.when(moment.is_null()).then(self.admits()).otherwise(inside)
