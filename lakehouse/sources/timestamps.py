"""Reading a timestamp column in whatever form its source holds it, as UTC instants.

Accepted forms: ISO 8601 text with a `T` or a space between date and time, with or without
fractional seconds (up to nine digits; kept to the microsecond), with `Z`, an offset (`+HH:MM`,
`+HHMM`, `+HH`) or none; a date alone (midnight); database timestamps with or without a time
zone; and, on a column whose contract sets `epoch`, integer seconds or milliseconds since
1970-01-01 UTC (integers or digit text). A value without an offset (naive text, a date, a
`TIMESTAMP WITHOUT TIME ZONE`) is a wall-clock time in the contract's `time_zone`; a wall-clock
time that is ambiguous there (the hour repeated when clocks go back) is its first occurrence.
A value that is none of these, or a wall-clock time that does not exist in the zone (skipped
when clocks go forward), reads as null: silver quarantines it as unparseable.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

import polars as pl

# SQLite has no timestamp type: the demo writes ISO-8601 text in UTC in this one fixed-width
# form (a polars format; Python's `isoformat(sep=" ", timespec="microseconds")` of a UTC
# datetime is the same), whose text order is time order: watermark ranges compare values in
# it as text, through the column's index (see `lakehouse.bronze.watermark`).
SQLITE_TIMESTAMP_FORMAT = "%Y-%m-%d %H:%M:%S%.6f%:z"


def timestamp_text(value: datetime) -> str:
    """A moment in the text form SQLite sources store (see SQLITE_TIMESTAMP_FORMAT)."""
    return value.astimezone(UTC).isoformat(sep=" ", timespec="microseconds")


UTC_TIMESTAMP = pl.Datetime("us", "UTC")
WITH_OFFSET = "%Y-%m-%d %H:%M:%S%.f%#z"  # %#z: Z, +HH:MM, +HHMM or +HH
WALL_CLOCK = "%Y-%m-%d %H:%M:%S%.f"
DATE = "%Y-%m-%d"
EPOCH_UNITS = {"s": 1, "ms": 1_000}  # units per second


@dataclass(frozen=True)
class TimestampForm:
    """How a column's values name an instant: the zone of wall-clock values, or the epoch unit."""

    time_zone: str = "UTC"
    epoch: Literal["s", "ms"] | None = None


def in_zone(wall_clock: pl.Expr, time_zone: str) -> pl.Expr:
    """Naive datetimes read as wall-clock times in `time_zone`, as UTC instants."""
    return wall_clock.dt.replace_time_zone(
        time_zone, ambiguous="earliest", non_existent="null"
    ).dt.convert_time_zone("UTC")


def _from_text(text: pl.Expr, form: TimestampForm) -> pl.Expr:
    if form.epoch:
        return _from_epoch(text.str.strip_chars().cast(pl.Int64, strict=False), form.epoch)
    spaced = text.str.replace("T", " ", literal=True)
    return pl.coalesce(
        spaced.str.to_datetime(WITH_OFFSET, strict=False, time_unit="us").dt.convert_time_zone("UTC"),
        in_zone(spaced.str.to_datetime(WALL_CLOCK, strict=False, time_unit="us"), form.time_zone),
        in_zone(spaced.str.to_date(DATE, strict=False).cast(pl.Datetime("us")), form.time_zone),
    )


def _from_epoch(number: pl.Expr, unit: str) -> pl.Expr:
    return pl.from_epoch(number, time_unit=unit).cast(pl.Datetime("us")).dt.replace_time_zone("UTC")


def to_utc(raw: pl.Expr, source: pl.DataType, form: TimestampForm) -> pl.Expr:
    """`raw`, of type `source`, as UTC instants (`Datetime('us', 'UTC')`); null where unreadable."""
    if source in (pl.String, pl.Null):
        return _from_text(raw.cast(pl.String), form)
    if isinstance(source, pl.Datetime):
        moment = raw.dt.cast_time_unit("us")
        return moment.dt.convert_time_zone("UTC") if source.time_zone else in_zone(moment, form.time_zone)
    if source == pl.Date:
        return in_zone(raw.cast(pl.Datetime("us")), form.time_zone)
    if source.is_integer() and form.epoch:
        return _from_epoch(raw.cast(pl.Int64), form.epoch)
    # Numbers on a column that is not declared epoch are not instants.
    return pl.lit(None, dtype=UTC_TIMESTAMP)


def instant(value: object, form: TimestampForm) -> datetime | None:
    """One value as the database driver returns it, as a UTC datetime (None if unreadable)."""
    series = pl.Series("value", [value])
    return pl.select(to_utc(pl.lit(series), series.dtype, form)).item()
