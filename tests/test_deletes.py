"""Rows the source deletes leave the lakehouse: tombstones in bronze, rows gone from silver,
history closed, gold rebuilt where they were, and the reconciliation both ways.

Two domains: a library's members and loans (tests/library.py, SQLite), and the demo shop in
SQLite and PostgreSQL, whose `demo advance` deletes abandoned orders and idle customers.
"""

import shutil
import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import polars as pl
import pytest
from conftest import (
    Lake,
    assert_gold_equals_a_rebuild_in_one_piece,
    postgres_source,
    sqlite_source,
    written_a_while_ago,
)
from library import Library

from asset_checks.quality_report import quality_report
from asset_checks.row_checks import read_columns
from lakehouse.bronze import deletes, tombstones
from lakehouse.bronze.columns import DELETE, EXTRACTED_AT, OP
from lakehouse.orchestration.maintenance import maintain_table
from lakehouse.resources import SourceDatabase
from lakehouse.sources.contract import Contract
from lakehouse.storage import delta, ledger

# A library lake written before tombstones existed (members with SCD2 history, loans; member 4
# changed once): bronze has no `_op`, history no `_deleted`, and no ledger names deletes.
BEFORE_TOMBSTONES = Path(__file__).resolve().parent / "fixtures" / "library_lake_before_tombstones"
MEMBERS = [(member, f"member {member}") for member in range(1, 7)]
# Loans 1-4 of member 2 (deleted with the member), 5-6 of member 3 (kept when the member goes).
LOANS = [(1, 2, "open"), (2, 2, "open"), (3, 2, "returned"), (4, 2, "open"), (5, 3, "open"), (6, 3, "open")]


def _checks(result: dg.ExecuteInProcessResult) -> dict[tuple[str, str], dg.AssetCheckEvaluation]:
    return {
        (check.asset_key.to_user_string(), check.check_name): check
        for check in result.get_asset_check_evaluations()
    }


def _metadata(result: dg.ExecuteInProcessResult, asset: str) -> dict:
    (event,) = [
        event
        for event in result.get_asset_materialization_events()
        if event.asset_key.to_user_string() == asset
    ]
    return {name: value.value for name, value in event.materialization.metadata.items()}


def _tombstones(library: Library, name: str) -> pl.DataFrame:
    return library.table("bronze", name).filter(pl.col(OP) == DELETE)


def _first_load(tmp_path: Path) -> tuple[Library, dg.ExecuteInProcessResult]:
    built = Library(tmp_path, dg.DagsterInstance.ephemeral())
    built.create()
    built.add("members", MEMBERS)
    built.add("loans", LOANS)
    loaded = built.materialize()
    assert loaded.success
    return built, loaded


@pytest.fixture
def library(tmp_path: Path) -> Library:
    return _first_load(tmp_path)[0]


def test_deleted_rows_leave_silver_once_and_both_reconciliations_hold(library: Library) -> None:
    library.delete("loans", "loan_id", [1, 2, 3, 4])
    library.delete("members", "member_id", [2, 3])

    result = library.materialize()

    assert sorted(_tombstones(library, "members").get_column("member_id")) == [2, 3]
    assert sorted(_tombstones(library, "loans").get_column("loan_id")) == [1, 2, 3, 4]
    assert sorted(library.table("silver", "members").get_column("member_id")) == [1, 4, 5, 6]
    assert sorted(library.table("silver", "loans").get_column("loan_id")) == [5, 6]
    assert _metadata(result, "bronze/members")["rows_deleted"] == 2
    assert _metadata(result, "silver/loans")["rows_deleted"] == 4
    checks = _checks(result)
    for asset in ("silver/members", "silver/loans"):
        assert checks[(asset, "bronze_rows_accounted")].passed
        assert checks[(asset, "keys_in_source")].passed
    # Loans 5 and 6 outlived their member: the references check names them, as for any orphan.
    orphans = checks[("silver/loans", "references")]
    assert not orphans.passed and orphans.metadata["failing_rows"].value == 2

    bronze = delta.load_table(library.storage.table_uri("bronze", "members")).version()
    again = library.materialize()
    assert again.success
    assert _tombstones(library, "members").height == 2, "a second run adds no second tombstone"
    assert delta.load_table(library.storage.table_uri("bronze", "members")).version() == bronze


def test_a_run_on_an_unchanged_source_reads_nothing_and_the_next_change_is_read(library: Library) -> None:
    written_a_while_ago(library.database)
    seen = library.materialize()
    bronze = delta.load_table(library.storage.table_uri("bronze", "members")).version()

    unchanged = library.materialize()

    members = _metadata(unchanged, "bronze/members")
    assert (members["rows_read"], members["rows_deleted"]) == (0, 0)
    assert members["deletes_checked"].startswith("not looked for: the source table is unchanged")
    assert delta.load_table(library.storage.table_uri("bronze", "members")).version() == bronze
    checks = _checks(unchanged)
    assert checks[("silver/members", "keys_in_source")].metadata["reused_from_run"].value == seen.run_id

    library.delete("members", "member_id", [6])
    library.update("members", "member_id", 5, name="member 5, moved")
    written_a_while_ago(library.database)
    changed = library.materialize()

    members = _metadata(changed, "bronze/members")
    assert (members["rows_appended"], members["rows_deleted"]) == (1, 1)
    silver = library.table("silver", "members").sort("member_id")
    assert silver.get_column("member_id").to_list() == [1, 2, 3, 4, 5]
    assert silver.filter(pl.col("member_id") == 5).get_column("name").to_list() == ["member 5, moved"]
    assert "reused_from_run" not in _checks(changed)[("silver/members", "keys_in_source")].metadata


def test_keys_in_source_takes_bronze_s_summary_of_an_unchanged_source_and_still_finds_a_key_gone(
    library: Library,
) -> None:
    checks_only = dg.AssetSelection.checks_for_assets(dg.AssetKey(["silver", "members"]))
    library.delete("members", "member_id", [6])
    written_a_while_ago(library.database)
    looked = _checks(library.materialize())[("silver/members", "keys_in_source")]
    # Bronze summarised the source's key ranges to find the delete; the check, in the same run,
    # compares silver with that summary rather than asking the source again.
    assert looked.passed
    assert looked.metadata["source_summary"].value == "bronze's, of the same source version"

    # A key the source never had, written into silver by hand past the source's last range.
    uri = library.storage.table_uri("silver", "members")
    planted = pl.read_delta(uri).filter(pl.col("member_id") == 5).with_columns(member_id=pl.lit(5_000_000))
    delta.write(uri, planted)
    found = _checks(library.materialize(checks_only))
    check = found[("silver/members", "keys_in_source")]
    assert not check.passed and check.metadata["keys_not_in_source"].value == 1
    assert check.metadata["source_summary"].value == "bronze's, of the same source version"

    # Once the source changes, the summary bronze took no longer holds: the source is asked.
    library.delete("members", "member_id", [4])
    asked = _checks(library.materialize(checks_only))
    check = asked[("silver/members", "keys_in_source")]
    assert check.metadata["source_summary"].value == "the source's"
    assert not check.passed and check.metadata["keys_not_in_source"].value == 2


def test_keys_in_source_with_no_pass_to_start_from_cuts_its_ranges_as_bronze_did(library: Library) -> None:
    checks_only = dg.AssetSelection.checks_for_assets(dg.AssetKey(["silver", "members"]))
    # The source's lowest key goes: bronze's key ranges still start where they started.
    library.delete("members", "member_id", [1])
    written_a_while_ago(library.database)
    assert library.materialize().success
    # A failed evaluation leaves the next one no pass to start from.
    uri = library.storage.table_uri("silver", "members")
    planted = pl.read_delta(uri).filter(pl.col("member_id") == 5).with_columns(member_id=pl.lit(5_000_000))
    delta.write(uri, planted)
    assert not _checks(library.materialize(checks_only))[("silver/members", "keys_in_source")].passed
    delta.load_table(uri).delete("member_id = 5000000")

    check = _checks(library.materialize(checks_only))[("silver/members", "keys_in_source")]

    # Its ranges, cut from the source's lowest key now, would not be bronze's.
    assert check.passed
    assert check.metadata["source_summary"].value == "bronze's, of the same source version"


def test_a_key_deleted_inserted_again_and_deleted_again_follows_the_source(library: Library) -> None:
    library.delete("members", "member_id", [4])
    assert library.materialize().success
    library.add("members", [(4, "member 4, back")])

    assert library.materialize().success

    silver = library.table("silver", "members")
    assert silver.filter(pl.col("member_id") == 4).get_column("name").to_list() == ["member 4, back"]
    assert silver.height == 6

    library.delete("members", "member_id", [4])
    result = library.materialize()
    assert result.success, "two tombstones of one key are no duplicate row versions"
    assert _tombstones(library, "members").get_column("member_id").to_list() == [4, 4]
    assert 4 not in library.table("silver", "members").get_column("member_id")


def test_a_lake_written_before_tombstones_is_read_and_advanced(tmp_path: Path) -> None:
    shutil.copytree(BEFORE_TOMBSTONES, tmp_path / "lake")
    library = Library(tmp_path / "lake", dg.DagsterInstance.ephemeral())
    library.delete("loans", "loan_id", [1, 2])
    library.delete("members", "member_id", [2, 4])

    result = library.materialize()

    assert result.success
    assert sorted(library.table("silver", "members").get_column("member_id")) == [1, 3, 5, 6]
    assert sorted(library.table("silver", "loans").get_column("loan_id")) == [3, 4]
    history = library.table("silver", "members_history").filter(pl.col("member_id") == 4).sort("valid_from")
    assert history.get_column("is_current").to_list() == [False, False]
    assert history.get_column("_deleted").to_list() == [None, True]
    checks = _checks(result)
    for asset in ("silver/members", "silver/loans"):
        assert checks[(asset, "bronze_rows_accounted")].passed
        assert checks[(asset, "keys_in_source")].passed


def test_with_deletes_never_the_rows_stay_and_the_check_warns(tmp_path: Path) -> None:
    library = Library(tmp_path, dg.DagsterInstance.ephemeral())
    library.create(members_deletes="deletes: never\n")
    library.add("members", MEMBERS)
    library.add("loans", LOANS)
    assert library.materialize().success
    library.delete("members", "member_id", [5])

    result = library.materialize()

    assert _tombstones(library, "members").is_empty()
    assert library.table("silver", "members").height == 6
    assert _metadata(result, "bronze/members")["deletes_checked"] == "off (deletes: never)"
    check = _checks(result)[("silver/members", "keys_in_source")]
    assert not check.passed and check.severity == dg.AssetCheckSeverity.WARN
    assert check.metadata["keys_not_in_source"].value == 1


def test_a_cadence_looks_for_deletes_once_per_period(tmp_path: Path) -> None:
    library = Library(tmp_path, dg.DagsterInstance.ephemeral())
    library.create(members_deletes="deletes: {every: 1d}\n")
    library.add("members", MEMBERS)
    library.add("loans", LOANS)
    assert library.materialize().success  # a first load: nothing to delete
    library.delete("members", "member_id", [1])
    first = library.materialize()
    library.delete("members", "member_id", [6])

    second = library.materialize()

    assert _metadata(first, "bronze/members")["rows_deleted"] == 1
    assert _metadata(second, "bronze/members")["deletes_checked"] == "not due (every 1 day, 0:00:00)"
    assert sorted(_tombstones(library, "members").get_column("member_id")) == [1]
    bronze = delta.load_table(library.storage.table_uri("bronze", "members"))
    assert ledger.read(bronze, ledger.bronze_deletes_checked("members")) is not None


def _contract(key: list[str], columns: dict[str, str]) -> Contract:
    return Contract.model_validate(
        {
            "name": "readings",
            "description": "Sensor readings.",
            "source": {"kind": "database", "table": "readings"},
            "primary_key": key,
            "watermark": {"column": "taken_at"},
            "columns": {name: {"type": kind} for name, kind in columns.items()},
        }
    )


def _readings_table(source: SourceDatabase, columns: str, rows: list[str]) -> None:
    """A `readings` table of `columns` in `source`, holding `rows` (SQL value lists)."""
    if source.dialect == "sqlite":
        source.sqlite_path.parent.mkdir(parents=True)
        source.sqlite_path.touch()
    with source.connect() as connection:
        cursor = connection.cursor()
        cursor.execute("DROP TABLE IF EXISTS readings")
        cursor.execute(f"CREATE TABLE readings ({columns})")
        for row in rows:
            cursor.execute(f"INSERT INTO readings VALUES ({row})")
        connection.commit()


@pytest.mark.parametrize("dialect", ["sqlite", "postgresql"])
def test_key_ranges_find_exactly_the_keys_gone(dialect: str, tmp_path: Path) -> None:
    """Deletes at range edges and among negative keys, and an insert that keeps a range's
    count while another key goes, are found; ranges that agree are not read."""
    source = sqlite_source(tmp_path) if dialect == "sqlite" else postgres_source()
    width = deletes.RANGE_WIDTH
    held = [-2 * width, -width, -width + 1, -1, 0, 1, width - 1, width, 5 * width + 3, 9 * width]
    gone = [-width, 0, width - 1, 5 * width + 3]
    kept = [key for key in held if key not in gone]
    # A key the lakehouse does not hold yet, in the range of a deleted one.
    rows = [f"{key}, '2026-01-01'" for key in [*kept, 5 * width + 4]]
    _readings_table(source, "sensor_id BIGINT PRIMARY KEY, taken_at TEXT", rows)
    contract = _contract(["sensor_id"], {"sensor_id": "int", "taken_at": "timestamp"})

    found = deletes.find_deletes(contract, source, pl.DataFrame({"sensor_id": held}))

    assert sorted(found.keys.get_column("sensor_id")) == sorted(gone)
    assert found.ranges_read == 3  # only the ranges with a delete
    with source.connect() as connection:
        connection.cursor().execute("DROP TABLE readings")
        connection.commit()


def test_a_key_of_several_columns_is_compared_whole(tmp_path: Path) -> None:
    source = sqlite_source(tmp_path)
    _readings_table(source, "site TEXT, sensor_id INTEGER, taken_at TEXT", ["'a', 1, 'x'", "'b', 1, 'x'"])
    contract = _contract(
        ["site", "sensor_id"], {"site": "string", "sensor_id": "int", "taken_at": "timestamp"}
    )
    live = pl.DataFrame({"site": ["a", "a", "b"], "sensor_id": [1, 2, 1]})

    found = deletes.find_deletes(contract, source, live)

    assert found.keys.rows() == [("a", 2)]
    assert found.ranges_compared == 0


def _deleted_keys(lake: Lake, name: str, key: str) -> set[int]:
    tombstones = lake.table("bronze", name).filter(pl.col(OP) == DELETE)
    return set(tombstones.get_column(key).to_list())


def test_demo_deletes_reach_gold_by_period_and_gold_equals_a_rebuild(any_lake: Lake) -> None:
    assert any_lake.materialize().success
    any_lake.advance()

    result = any_lake.materialize()

    orders = _deleted_keys(any_lake, "orders", "order_id")
    customers = _deleted_keys(any_lake, "customers", "customer_id")
    assert orders and customers, "demo advance deletes abandoned orders and idle customers"
    assert any_lake.table("silver", "orders").filter(pl.col("order_id").is_in(orders)).is_empty()
    assert any_lake.table("silver", "order_items").filter(pl.col("order_id").is_in(orders)).is_empty()
    assert any_lake.table("silver", "customers").filter(pl.col("customer_id").is_in(customers)).is_empty()
    closed = any_lake.table("silver", "customers_history").filter(pl.col("customer_id").is_in(customers))
    assert closed.filter(pl.col("is_current")).is_empty()
    assert closed.filter(pl.col("_deleted")).get_column("customer_id").n_unique() == len(customers)
    # The fact tables were rebuilt for the months of the deleted orders, not whole.
    assert _metadata(result, "gold/fct_orders")["periods_rewritten"] != "all"
    assert_gold_equals_a_rebuild_in_one_piece(any_lake)
    failed = [key for key, check in _checks(result).items() if not check.passed]
    assert not [key for key in failed if key[1] in ("bronze_rows_accounted", "keys_in_source")]
    # Exactly the source's keys, less those whose every version was quarantined or never
    # extracted (no watermark).
    for name, key in (("orders", "order_id"), ("order_items", "order_item_id"), ("customers", "customer_id")):
        held = set(any_lake.table("silver", name).get_column(key))
        rows = any_lake.source_rows(name)
        source = set(rows.get_column(key))
        unextracted = (
            set(rows.filter(pl.col("updated_at").is_null()).get_column(key))
            if "updated_at" in rows.columns
            else set()
        )
        quarantined = set(read_columns(any_lake.uri("quarantine", name), [key]).get_column(key, default=[]))
        assert held <= source and source - held <= quarantined | unextracted, name
    report = quality_report(any_lake.storage, any_lake.contracts, any_lake.clock, "orders")
    assert report["tables"][0]["deleted_keys"] == len(orders)


def test_an_erased_customer_is_in_no_data_file_of_current_tables_after_vacuum(lake: Lake) -> None:
    assert lake.materialize().success
    lake.advance()
    assert lake.materialize().success
    (customer, *_) = sorted(_deleted_keys(lake, "customers", "customer_id"))

    for layer, name in lake.storage.tables():
        if layer in ("silver", "gold"):
            maintain_table(delta.load_table(lake.uri(layer, name)), [], 1 << 27, 0, [])

    # History keeps the closed versions on purpose (SCD2); every current table lost the row.
    kept_on_purpose = {("silver", "customers_history"), ("gold", "dim_customers")}
    for layer in ("silver", "gold"):
        for path in (lake.folder / "lakehouse" / layer).rglob("*.parquet"):
            table = (layer, path.relative_to(lake.folder / "lakehouse" / layer).parts[0])
            data = pl.read_parquet(path)
            if table in kept_on_purpose or "customer_id" not in data.columns:
                continue
            assert data.filter(pl.col("customer_id") == customer).is_empty(), f"{path} holds {customer}"


def test_the_live_keys_summary_carried_from_the_last_run_finds_what_reading_every_key_finds(
    tmp_path: Path,
) -> None:
    # The first load leaves the summary of the keys it loaded: the run after it reads no key of
    # bronze (at scale 10, reading them all took 4 GiB).
    library, loaded = _first_load(tmp_path)
    members = library.storage.table_uri("bronze", "members")
    first = _metadata(loaded, "bronze/members")
    assert first["deletes_checked"] == "not on a first load"
    assert first["live_keys"]["rows"] == [6]

    quiet = _metadata(library.materialize(), "bronze/members")
    assert quiet["deletes_checked"] == (
        "compared key ranges: 1 (bronze's from the last run's summary), read the keys of 0: 0 deleted"
    )

    # One member arrives, another leaves, a third changes: in one run.
    library.add("members", [(7, "member 7")])
    with sqlite3.connect(library.database) as connection:
        connection.execute(
            "update members set name = 'member 3, moved', "
            "updated_at = (select max(updated_at) from members) where member_id = 3"
        )
    library.delete("members", "member_id", [2])
    changed = library.materialize()
    assert changed.success
    found = _metadata(changed, "bronze/members")
    assert found["deletes_checked"] == (
        "compared key ranges: 1 (bronze's from the last run's summary), read the keys of 1: 1 deleted"
    )
    assert found["live_keys"]["rows"] == [6]
    assert sorted(library.table("silver", "members").get_column("member_id")) == [1, 3, 4, 5, 6, 7]

    # A summary bronze no longer matches (a row deleted from it by hand) is not used: every live
    # key is read, and the range that lacks the member is compared key by key.
    delta.load_table(members).delete("member_id = 4")
    again = _metadata(library.materialize(), "bronze/members")
    assert again["deletes_checked"] == "compared key ranges: 1, read the keys of 1: 0 deleted"
    assert again["live_keys"]["rows"] == [5]


def test_a_key_s_held_version_is_its_last_event_unless_that_deleted_it() -> None:
    """Sensor 1 changed and was deleted in the run that found its change; sensor 2 was deleted
    and inserted again; sensor 3 only changed. Bronze from before tombstones has no `_op`."""
    contract = _contract(["sensor_id"], {"sensor_id": "int", "taken_at": "timestamp"})
    runs = [datetime(2026, 1, day, tzinfo=UTC) for day in (1, 2, 3)]
    events = pl.DataFrame(
        {
            "sensor_id": [1, 1, 1, 2, 2, 2, 3, 3],
            "taken_at": ["a", "b", None, "a", None, "c", "a", "b"],
            OP: [None, None, DELETE, None, DELETE, None, None, None],
            EXTRACTED_AT: [runs[0], runs[1], runs[1], runs[0], runs[1], runs[2], runs[0], runs[2]],
        }
    )

    held = tombstones.held_versions(events, contract).sort("sensor_id")
    assert held.select("sensor_id", "taken_at").rows() == [(2, "c"), (3, "b")]
    before_tombstones = tombstones.held_versions(events.filter(pl.col(OP).is_null()).drop(OP), contract)
    assert before_tombstones.sort("sensor_id").select("taken_at").to_series().to_list() == ["b", "c", "b"]
