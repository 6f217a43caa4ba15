"""Timestamps for the demo: seasonal sampling inside a time window."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import polars as pl

# Relative order intensity by hour of day (UTC): quiet nights, a lunch and an evening peak.
HOUR_WEIGHTS = np.array(
    [2, 1, 1, 1, 1, 2, 4, 6, 8, 9, 10, 12, 13, 11, 10, 10, 11, 12, 14, 16, 17, 14, 9, 5],
    dtype=float,
)
# Monday .. Sunday: weekends sell more.
WEEKDAY_WEIGHTS = np.array([1.0, 0.95, 0.95, 1.0, 1.1, 1.35, 1.3])


def seasonal_times(rng: np.random.Generator, start: datetime, end: datetime, n: int) -> np.ndarray:
    """`n` sorted UTC timestamps (epoch microseconds) in (start, end], denser at busy hours."""
    if n == 0:
        return np.empty(0, dtype=np.int64)
    start_us, end_us = to_micros(start), to_micros(end)
    hour_us = 3_600_000_000
    first_hour = start_us // hour_us
    hours = np.arange(first_hour, (end_us - 1) // hour_us + 1)
    moments = hours * hour_us
    hour_of_day = (moments // hour_us) % 24
    weekday = ((moments // (24 * hour_us)) + 3) % 7  # 1970-01-01 was a Thursday
    weights = HOUR_WEIGHTS[hour_of_day] * WEEKDAY_WEIGHTS[weekday]
    # Partial first and last hours get weight in proportion to the part inside the window.
    lo = np.maximum(moments, start_us)
    hi = np.minimum(moments + hour_us, end_us)
    weights = weights * (hi - lo) / hour_us
    chosen = rng.choice(len(hours), size=n, p=weights / weights.sum())
    offsets = rng.random(n)
    times = lo[chosen] + (offsets * (hi[chosen] - lo[chosen])).astype(np.int64) + 1
    return np.sort(np.minimum(times, end_us))


def to_micros(moment: datetime) -> int:
    return int(moment.replace(microsecond=0).timestamp()) * 1_000_000 + moment.microsecond


def from_micros(micros: int) -> datetime:
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=int(micros))


def as_datetimes(micros: np.ndarray) -> pl.Series:
    return pl.Series(micros, dtype=pl.Int64).cast(pl.Datetime("us", "UTC"))
