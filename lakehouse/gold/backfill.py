"""A gold backfill: the day range a run is told to rebuild, given as the gold assets' run config.

Gold tables are not Dagster-partitioned, so `dagster asset materialize --select '*'` runs with
no option at all: a run without a range rebuilds exactly the periods whose silver rows changed
since the table's last build. A range (UTC days, both ends included) rebuilds those days from
silver whatever changed, from the CLI (`--config-json`) or the UI's launchpad.
"""

from datetime import date, timedelta

import dagster as dg
from pydantic import Field

# Enough for years of history, and a bound on a typo such as 2062 for 2026.
MAX_DAYS = 3660


class Backfill(dg.Config):
    """Left empty, the run rebuilds what changed in silver; with `first_day`, a backfill."""

    first_day: str | None = Field(
        default=None, description="First day to rebuild (YYYY-MM-DD, UTC); empty: only what changed."
    )
    last_day: str | None = Field(
        default=None, description="Last day to rebuild, included (YYYY-MM-DD); empty: first_day alone."
    )

    def days(self) -> list[str] | None:
        """The days of the range in order, None when the run is not a backfill."""
        if self.first_day is None:
            if self.last_day is not None:
                raise dg.Failure(f"backfill: last_day {self.last_day} needs a first_day")
            return None
        first = _day("first_day", self.first_day)
        last = _day("last_day", self.last_day) if self.last_day is not None else first
        count = (last - first).days + 1
        if not 0 < count <= MAX_DAYS:
            raise dg.Failure(
                f"backfill: first_day {first} to last_day {last} is not a range of 1 to {MAX_DAYS} days"
            )
        return [str(first + timedelta(days=offset)) for offset in range(count)]


def _day(field: str, text: str) -> date:
    try:
        return date.fromisoformat(text.strip())
    except ValueError:
        raise dg.Failure(f"backfill: {field} {text!r} is not a day (YYYY-MM-DD)") from None
