"""The marts' Delta copies in the lake: each the warehouse's table with UTC timestamps, written
once per build it came from, overwritten whole by the next, a batch of rows at a time."""

from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path

import duckdb
import polars as pl
import pytest

from lakehouse.marts import publish as publish_module
from lakehouse.marts.publish import ByDay, is_published, publish
from lakehouse.resources import LakehouseStorage
from lakehouse.storage import delta, ledger

MART = """
create table main.mart_visits as
select * from (values
    (1, 'Vienna', 12.50::decimal(12, 2), timestamptz '2026-11-01 09:30+01', timestamp '2026-11-01 08:30'),
    (2, 'Graz', 7.25::decimal(12, 2), timestamptz '2026-11-02 10:00+00', timestamp '2026-11-02 10:00')
) as visits(visitor_id, city, spent, first_seen_at, last_seen_at)
"""


def test_a_mart_is_copied_once_per_build_with_utc_timestamps(tmp_path: Path) -> None:
    lakehouse = LakehouseStorage(root=str(tmp_path / "lake"))
    with duckdb.connect() as connection:
        connection.execute("set TimeZone = 'Europe/Vienna'")  # the warehouse session's zone plays no part
        connection.execute(MART)

        copied = publish(lakehouse, connection, "mart_visits", "gold/visits v3")
        again = publish(lakehouse, connection, "mart_visits", "gold/visits v3")  # the step run again
        assert again.version() == copied.version() == 0
        assert is_published(lakehouse, "mart_visits", "gold/visits v3")
        assert not is_published(lakehouse, "mart_visits", "gold/visits v4")

        connection.execute("delete from main.mart_visits where visitor_id = 2")
        rebuilt = publish(lakehouse, connection, "mart_visits", "gold/visits v4")

    assert rebuilt.version() == 1
    assert ledger.read(rebuilt, ledger.mart_built_from("mart_visits")) == ledger.checksum(b"gold/visits v4")
    rows = pl.read_delta(lakehouse.table_uri("marts", "mart_visits"))
    assert rows.to_dicts() == [
        {
            "visitor_id": 1,
            "city": "Vienna",
            "spent": Decimal("12.50"),
            "first_seen_at": datetime(2026, 11, 1, 8, 30, tzinfo=UTC),
            "last_seen_at": datetime(2026, 11, 1, 8, 30, tzinfo=UTC),
        }
    ]
    assert delta.arrow_schema(rebuilt).field("first_seen_at").type.tz == "UTC"
    assert delta.load_table(lakehouse.table_uri("marts", "mart_visits")).protocol().min_reader_version == 1


def test_a_mart_is_copied_in_batches_and_an_empty_one_keeps_its_columns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(publish_module, "BATCH_ROWS", 1)  # one batch per row of the mart
    lakehouse = LakehouseStorage(root=str(tmp_path / "lake"))
    with duckdb.connect() as connection:
        connection.execute(MART)
        publish(lakehouse, connection, "mart_visits", "gold/visits v1")
        connection.execute("create table main.mart_nobody as select * from main.mart_visits where false")
        publish(lakehouse, connection, "mart_nobody", "gold/visits v1")

    copied = pl.read_delta(lakehouse.table_uri("marts", "mart_visits")).sort("visitor_id")
    assert copied.get_column("visitor_id").to_list() == [1, 2]
    assert copied.get_column("spent").to_list() == [Decimal("12.50"), Decimal("7.25")]
    nobody = pl.read_delta(lakehouse.table_uri("marts", "mart_nobody"))
    assert nobody.is_empty() and nobody.schema == copied.schema


DAILY = """
create table main.mart_daily_visits as
select * from (values
    (1, date '2026-11-01', 'Vienna'),
    (2, date '2026-11-01', 'Graz'),
    (3, date '2026-11-02', 'Linz'),
    (4, date '2026-11-03', 'Wels')
) as visits(visit_id, visit_day, city)
"""


def test_a_mart_rebuilt_by_day_has_only_those_days_replaced_in_its_copy(tmp_path: Path) -> None:
    lakehouse = LakehouseStorage(root=str(tmp_path / "lake"))
    uri = lakehouse.table_uri("marts", "mart_daily_visits")
    with duckdb.connect() as connection:
        connection.execute(DAILY)
        first = publish(lakehouse, connection, "mart_daily_visits", "gold/visits v1", ByDay("visit_day"))
        # The next build changed the first day only: a visit gone, one changed.
        connection.execute("delete from main.mart_daily_visits where visit_id = 2")
        connection.execute("update main.mart_daily_visits set city = 'Wien' where visit_id = 1")
        first_day = ByDay("visit_day", ["2026-11-01"], since="gold/visits v1")
        replaced = publish(lakehouse, connection, "mart_daily_visits", "gold/visits v2", first_day)

        warehouse = connection.sql("select * from main.mart_daily_visits order by visit_id").pl()
        # A build that changed no day of it only records what the copy now stands for.
        nothing = ByDay("visit_day", [], since="gold/visits v2")
        recorded = publish(lakehouse, connection, "mart_daily_visits", "gold/visits v3", nothing)
        # A copy that is not the build's the days are counted from is copied whole.
        connection.execute("update main.mart_daily_visits set city = 'Steyr' where visit_id = 4")
        stale = ByDay("visit_day", ["2026-11-01"], since="gold/visits v2")
        whole = publish(lakehouse, connection, "mart_daily_visits", "gold/visits v4", stale)

    commits = {commit["version"]: commit for commit in delta.load_table(uri).history()}
    assert first.version() == 0
    assert "visit_day = '2026-11-01'" in commits[replaced.version()]["operationParameters"]["predicate"]
    assert pl.read_delta(uri, version=replaced.version()).sort("visit_id").equals(warehouse)
    assert commits[recorded.version()]["operationMetrics"]["num_added_rows"] == 0
    stamped = ledger.read(
        delta.load_table(uri, recorded.version()), ledger.mart_built_from("mart_daily_visits")
    )
    assert stamped == ledger.checksum(b"gold/visits v3")
    assert "predicate" not in commits[whole.version()]["operationParameters"]
    assert pl.read_delta(uri).sort("visit_id").get_column("city").to_list() == ["Wien", "Linz", "Steyr"]


def test_a_mart_by_day_is_kept_in_order_of_its_day_so_a_day_is_in_few_of_its_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(publish_module, "BATCH_ROWS", 100_000)
    monkeypatch.setattr(publish_module, "DAY_FILE_BYTES", 256 << 10)
    lakehouse = LakehouseStorage(root=str(tmp_path / "lake"))
    with duckdb.connect() as connection:
        # 600k visits over 30 days, held in no order of their day.
        connection.execute(
            "create table main.mart_daily_visits as select range as visit_id, "
            "date '2026-11-01' + (range * 7919 % 30)::int as visit_day from range(600000)"
        )
        copied = publish(lakehouse, connection, "mart_daily_visits", "gold/visits v1", ByDay("visit_day"))
        connection.execute(
            "update main.mart_daily_visits set visit_id = -visit_id where visit_day = '2026-11-15'"
        )
        one_day = ByDay("visit_day", ["2026-11-15"], since="gold/visits v1")
        replaced = publish(lakehouse, connection, "mart_daily_visits", "gold/visits v2", one_day)

    (commit,) = replaced.history(1)
    assert len(copied.file_uris()) > 4
    assert commit["operationMetrics"]["num_removed_files"] <= 2
    rows = pl.read_delta(lakehouse.table_uri("marts", "mart_daily_visits"))
    assert rows.height == 600_000
    assert rows.filter(pl.col("visit_day") == date(2026, 11, 15)).get_column("visit_id").max() <= 0
