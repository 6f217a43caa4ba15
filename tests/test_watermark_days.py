"""A source table cut into periods of days of its watermark, by the database: the periods hold
every row once, each period's rows are those its summary counts, and a row written late into
an old day changes that day's summary alone. For each form a watermark takes: SQLite text (one
value with an offset) and epoch milliseconds, PostgreSQL `TIMESTAMPTZ` and `TIMESTAMP`."""

import sqlite3
import uuid
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import psycopg2
import pytest
from conftest import postgres_source

from asset_checks import last_pass, watermark_days
from lakehouse.bronze.database import source_chunks, source_range
from lakehouse.bronze.watermark import WatermarkRange
from lakehouse.resources import SourceDatabase
from lakehouse.sources.contract import Contract
from lakehouse.sources.contract_files import load_contract

FIRST = datetime(2026, 11, 2, 6, 0, tzinfo=UTC)
DAYS = 5
PER_DAY = 4
CONTRACT = """\
name: visits
description: Visits to a museum.
source: {{kind: database, table: {table}}}
primary_key: [visit_id]
watermark: {{column: seen}}
columns:
  visit_id: {{type: int, nullable: false, unique: true}}
  seen: {{type: timestamp, nullable: false{epoch}}}
"""
FORMS = ["sqlite-text", "sqlite-epoch-ms", "postgresql-timestamptz", "postgresql-timestamp"]


def _moments() -> list[datetime]:
    return [FIRST + timedelta(days=day, hours=3 * n) for day in range(DAYS) for n in range(PER_DAY)]


def _value(form: str, moment: datetime, index: int) -> object:
    if form == "sqlite-text":
        # One value with an offset: its text starts with its wall-clock date.
        if index == 5:
            return moment.astimezone(UTC).replace(tzinfo=None).isoformat() + "+00:00"
        return moment.isoformat(sep=" ")
    if form == "sqlite-epoch-ms":
        return int(moment.timestamp() * 1000)
    if form == "postgresql-timestamp":
        return moment.replace(tzinfo=None)
    return moment


class Visits:
    """The visits table in the `form`'s database, and rows added to it."""

    def __init__(self, form: str, folder: Path) -> None:
        self.form = form
        if form.startswith("sqlite"):
            self.path = folder / "museum.db"
            self.source = SourceDatabase(url=f"sqlite:///{self.path}", backoff_seconds=0.05)
            kind = "integer" if form.endswith("ms") else "text"
            self._run([f"create table visits (visit_id integer primary key, seen {kind} not null)",
                       "create index visits_seen on visits (seen)"])  # fmt: skip
            self.table = "visits"
        else:
            self.source = postgres_source()
            self.schema = f"museum_{uuid.uuid4().hex[:8]}"
            kind = "timestamptz" if form.endswith("timestamptz") else "timestamp"
            self.table = f"{self.schema}.visits"
            self._run([f"create schema {self.schema}",
                       f"create table {self.table} (visit_id bigint primary key, seen {kind} not null)",
                       f"create index on {self.table} (seen)"])  # fmt: skip
        epoch = ", epoch: ms" if form.endswith("ms") else ""
        contract = folder / "visits.yaml"
        contract.write_text(CONTRACT.format(table=self.table, epoch=epoch))
        self.contract: Contract = load_contract(contract)

    def _run(self, statements: list[str], rows: list[tuple] = ()) -> None:
        connect = (
            sqlite3.connect(self.path)
            if self.form.startswith("sqlite")
            else psycopg2.connect(self.source.url)
        )
        with connect as connection:
            cursor = connection.cursor()
            for statement in statements:
                cursor.execute(statement)
            if rows:
                marks = "?, ?" if self.form.startswith("sqlite") else "%s, %s"
                cursor.executemany(f"insert into {self.table} values ({marks})", rows)
        connection.close()

    def add(self, rows: list[tuple[int, datetime]]) -> None:
        self._run([], [(key, _value(self.form, moment, key)) for key, moment in rows])

    def remove(self, keys: list[int]) -> None:
        self._run([f"delete from {self.table} where visit_id in ({', '.join(map(str, keys))})"])

    def drop(self) -> None:
        if not self.form.startswith("sqlite"):
            self._run([f"drop schema {self.schema} cascade"])


def _unchanged_before(
    visits: Visits,
    bounds: WatermarkRange,
    grid: watermark_days.Grid,
    recorded: dict[int, str],
    since: datetime,
) -> list[int]:
    now = watermark_days.before(visits.contract, visits.source, bounds, grid, since, sorted(recorded))
    return watermark_days.unchanged_before(now, recorded)


@pytest.fixture(params=FORMS)
def visits(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Visits]:
    table = Visits(request.param, tmp_path)
    table.add(list(enumerate(_moments())))
    yield table
    table.drop()


def test_the_periods_hold_every_row_once_and_a_late_row_changes_its_day_alone(visits: Visits) -> None:
    upper = FIRST + timedelta(days=DAYS)
    bounds, _ = source_range(visits.contract, visits.source, upper=upper)
    summary = watermark_days.summarise(visits.contract, visits.source, bounds)
    assert summary is not None
    assert summary.grid.count == DAYS and sum(summary.rows) == DAYS * PER_DAY

    periods = [
        watermark_days.period_rows(visits.contract, visits.source, bounds, summary.grid, number, ["visit_id"])
        for number in range(summary.grid.count)
    ]
    assert [period.height for period in periods] == summary.rows
    assert sorted(pl.concat(periods).get_column("visit_id")) == list(range(DAYS * PER_DAY))

    # A visit written late with the third day's time: only that day's summary changes.
    visits.add([(1_000, FIRST + timedelta(days=2, hours=1))])
    again = watermark_days.summarise(visits.contract, visits.source, bounds, summary.grid)
    assert again is not None and last_pass.changed(again.digests, summary.digests) == [2]
    # A day past the grid's last one extends it: only the new periods differ.
    visits.add([(1_001, FIRST + timedelta(days=DAYS + 1))])
    later = watermark_days.summarise(visits.contract, visits.source, bounds, summary.grid)
    assert later is not None and later.grid.count == DAYS + 2
    assert last_pass.changed(later.digests, again.digests) == [DAYS, DAYS + 1]


def test_a_day_that_gained_rows_only_since_a_pass_s_watermark_is_told_from_one_written_late(
    visits: Visits,
) -> None:
    bounds, _ = source_range(visits.contract, visits.source, upper=FIRST + timedelta(days=DAYS))
    passed = watermark_days.summarise(visits.contract, visits.source, bounds)
    assert passed is not None
    last = passed.grid.count - 1
    watermark = max(_moments())
    recorded = {last: passed.digests[last]}

    # A visit after the watermark, on its day: the day's rows up to the watermark are unchanged.
    visits.add([(1_000, watermark + timedelta(hours=1))])
    since = _unchanged_before(visits, bounds, passed.grid, recorded, watermark)
    # Text in another form than the canonical one is admitted from the day before the watermark
    # on (`WatermarkRange.sql`): such a day is read whole.
    assert since == ([] if visits.form == "sqlite-text" else [last])

    # A visit written late into that day, before the watermark: the day is read.
    visits.add([(1_001, watermark - timedelta(hours=1))])
    assert _unchanged_before(visits, bounds, passed.grid, recorded, watermark) == []


def test_a_pass_s_digests_up_to_its_watermark_settle_the_days_the_next_rows_join(visits: Visits) -> None:
    bounds, _ = source_range(visits.contract, visits.source, upper=FIRST + timedelta(days=DAYS))
    watermark = max(_moments())
    # The source gained a visit past the watermark while bronze loaded: it is in its day's
    # whole digest, not among the day's rows up to the watermark.
    visits.add([(1_000, watermark + timedelta(hours=1))])
    passed = watermark_days.summarise(visits.contract, visits.source, bounds)
    assert passed is not None
    last = passed.grid.count - 1
    # A read from the watermark reaches back a day in text: the day before it too.
    reached = watermark_days.recent(passed.grid, watermark, range(passed.grid.count))
    assert reached == [last - 1, last]
    summaries = watermark_days.before(visits.contract, visits.source, bounds, passed.grid, watermark, reached)
    recorded = {number: last_pass.digest(summary) for number, summary in summaries.items()}

    def settled() -> list[int]:
        return _unchanged_before(visits, bounds, passed.grid, recorded, watermark)

    # In every form, text the read admits from the day before included.
    visits.add([(1_001, watermark + timedelta(hours=2))])
    assert settled() == reached
    # A visit written late into that day, before the watermark: the day is read, unless the
    # read from the watermark admits it (text not in the canonical form: read with the rows since).
    visits.add([(1_002, watermark - timedelta(hours=1))])
    assert settled() == (reached if visits.form == "sqlite-text" else [last - 1])

    # The day read less the rows a read from the watermark admits, and that read: every row of
    # the day, the newest once.
    bounds, _ = source_range(visits.contract, visits.source, upper=watermark + timedelta(hours=3))
    up_to = watermark_days.after(bounds, watermark)
    day = watermark_days.period_rows(
        visits.contract, visits.source, bounds, passed.grid, last, ["visit_id"], up_to
    )
    since = source_chunks(
        visits.contract,
        visits.source,
        replace(bounds, lower=watermark),
        ["visit_id", "seen"],
        "reconciling",
        keep_admitted=True,
    )
    read = pl.concat([day.get_column("visit_id"), *(chunk.get_column("visit_id") for chunk in since)])
    whole = watermark_days.period_rows(
        visits.contract, visits.source, bounds, passed.grid, last, ["visit_id"]
    )
    assert {1_000, 1_001, 1_002} <= set(whole.get_column("visit_id")) <= set(read)
    assert read.filter(read == 1_001).len() == 1


def test_the_rows_bronze_saw_leave_and_join_a_day_balance_it_and_a_row_it_did_not_see_does_not(
    visits: Visits,
) -> None:
    bounds, _ = source_range(visits.contract, visits.source, upper=FIRST + timedelta(days=DAYS))
    watermark = max(_moments())
    passed = watermark_days.summarise(visits.contract, visits.source, bounds)
    assert passed is not None
    reached = watermark_days.recent(passed.grid, watermark, range(passed.grid.count))
    up_to = watermark_days.before(visits.contract, visits.source, bounds, passed.grid, watermark, reached)
    counts = [
        watermark_days.counts(up_to[number]) if number in up_to else counted
        for number, counted in enumerate(passed.counts)
    ]

    def raw(keys: set[int]) -> pl.DataFrame:
        """The rows of `keys` as the driver types them, as bronze holds them."""
        rows = [
            watermark_days.period_rows(
                visits.contract, visits.source, bounds, passed.grid, number, ["visit_id", "seen"]
            )
            for number in range(passed.grid.count)
        ]
        return pl.concat(rows).filter(pl.col("visit_id").is_in(keys))

    # Deleted in the second and third days; the fourth day's visit 13 updated past the
    # watermark; the last day's visit 17 moved back into the third day.
    left = raw({6, 9, 13, 17})
    visits.remove([6, 9, 13, 17])
    visits.add([(13, watermark + timedelta(hours=1)), (17, FIRST + timedelta(days=2, hours=1))])
    joined = raw({13, 17})
    now = watermark_days.summarise(visits.contract, visits.source, bounds, passed.grid)
    assert now is not None
    changed = last_pass.changed(now.digests, passed.digests)

    def balanced() -> list[int]:
        now = watermark_days.before(visits.contract, visits.source, bounds, passed.grid, watermark, changed)
        up_to = {number: watermark_days.counts(summary) for number, summary in now.items()}
        return watermark_days.balanced(
            visits.contract, bounds, passed.grid, counts, up_to, watermark, (left, joined)
        )

    assert changed == [1, 2, 3, 4] and balanced() == [1, 2, 3, 4]
    # A visit written late into the third day and one deleted from the second, which bronze
    # did not see: those days no longer balance and are read.
    visits.add([(2_000, FIRST + timedelta(days=2, hours=2))])
    visits.remove([5])
    assert balanced() == [3, 4]
