"""Which days of a day-rebuilt gold table dbt reads as rebuilt since its last build: the days
gold's commits since name, and every day when they do not say (a whole rebuild, another
writer, a table created again, a model with no build). Delta tables of a second domain, a
library's daily loans, written as gold writes them."""

import shutil
from datetime import date
from pathlib import Path

import dagster as dg
import duckdb
import polars as pl

from lakehouse.gold.build import PERIODS
from lakehouse.marts.assets import built_from
from lakehouse.marts.rebuilt_days import rebuilt_days
from lakehouse.marts.warehouse import expose_gold
from lakehouse.storage import delta

DAYS = ["2026-11-01", "2026-11-02", "2026-11-03"]


def _loans(days: list[str]) -> pl.DataFrame:
    return pl.DataFrame({"loan_day": [date.fromisoformat(day) for day in days], "loans": [1] * len(days)})


def _rewrite(uri: str, days: list[str]) -> None:
    listed = ", ".join(f"'{day}'" for day in days)
    delta.write(
        uri,
        _loans(days),
        mode="overwrite",
        predicate=f"loan_day IN ({listed})",
        metadata={PERIODS: ",".join(days)},
    )


def _build(uri: str) -> str:
    """What a dbt build that read the table now records."""
    return built_from({dg.AssetKey(["gold", "daily_loans"]): delta.load_table(uri)})


def test_the_days_gold_named_since_the_build_and_every_day_when_the_commits_do_not_say(
    tmp_path: Path,
) -> None:
    uri = str(tmp_path / "daily_loans")
    delta.write(uri, _loans(DAYS), metadata={PERIODS: "all"})
    built = _build(uri)
    _rewrite(uri, ["2026-11-02"])
    delta.load_table(uri).optimize.compact()  # keeps the rows: says nothing of days
    _rewrite(uri, ["2026-11-03"])

    def days(*builds: str | None) -> list[str] | None:
        return rebuilt_days({"daily_loans": delta.load_table(uri)}, builds)["daily_loans"]

    assert days(built) == ["2026-11-02", "2026-11-03"]
    # Two models built at different versions: from the older one.
    assert days(_build(uri), built) == ["2026-11-02", "2026-11-03"]
    assert days(_build(uri)) == []
    # A model never built, or none selected: every day.
    assert days(built, None) is None and days() is None

    # A write that names no days (by hand, or a rebuild of the whole table).
    latest = _build(uri)
    delta.write(uri, _loans(["2026-11-04"]))
    assert days(latest) is None
    # The table created again under the same name.
    shutil.rmtree(uri)
    delta.write(uri, _loans(DAYS), metadata={PERIODS: "all"})
    assert days(latest) is None


def test_the_warehouse_holds_the_days_and_every_day_of_a_table_without_a_build(tmp_path: Path) -> None:
    named, unknown = str(tmp_path / "daily_loans"), str(tmp_path / "daily_visits")
    delta.write(named, _loans(DAYS))
    delta.write(unknown, _loans(DAYS).rename({"loan_day": "visit_day"}))
    warehouse = tmp_path / "warehouse.duckdb"

    expose_gold(
        warehouse,
        {"daily_loans": delta.load_table(named), "daily_visits": delta.load_table(unknown)},
        {"daily_loans": ("loan_day", ["2026-11-02"]), "daily_visits": ("visit_day", None)},
    )

    with duckdb.connect(str(warehouse), read_only=True) as connection:
        rows = connection.sql("select table_name, day from gold.rebuilt_days order by all").fetchall()
    assert rows == [
        ("daily_loans", date(2026, 11, 2)),
        *[("daily_visits", date.fromisoformat(day)) for day in DAYS],
    ]
