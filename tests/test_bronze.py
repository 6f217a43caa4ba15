"""Bronze extraction: complete, incremental, idempotent and crash-safe."""

import logging
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import dagster as dg
import polars as pl
import pytest
from conftest import DemoLake, Lake
from polars.testing import assert_frame_equal

from lakehouse.bronze import database, tombstones
from lakehouse.resources import SourceDatabase
from lakehouse.sources.errors import SourceUnavailableError
from lakehouse.storage import delta, ledger

DATABASE_TABLES = {"customers": "customer_id", "products": "product_id", "orders": "order_id",
                   "order_items": "order_item_id"}  # fmt: skip
BRONZE = dg.AssetSelection.groups("bronze")  # with its checks: what these tests are about


def versions(frame: pl.DataFrame, key: str) -> set[tuple]:
    """(primary key, updated_at) pairs: one per row version, whatever type updated_at has."""
    moments = frame.get_column("updated_at")
    if moments.dtype == pl.String:
        moments = moments.str.to_datetime(time_unit="us", time_zone="UTC")
    return set(zip(frame.get_column(key).to_list(), moments.to_list(), strict=True))


def snapshot(lake: Lake) -> dict[str, set[tuple]]:
    return {table: versions(lake.source_rows(table), key) for table, key in DATABASE_TABLES.items()}


def assert_bronze_holds(lake: Lake, expected: dict[str, set[tuple]]) -> None:
    for table, key in DATABASE_TABLES.items():
        bronze = tombstones.versions(lake.table("bronze", table))
        assert bronze.height == len(expected[table]), f"bronze/{table} has duplicates or gaps"
        assert versions(bronze, key) == expected[table], f"bronze/{table} differs from the source"


def test_incremental_extraction_keeps_every_row_version(
    any_lake: Lake, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Full load, then two rounds of source changes: bronze holds every version exactly once,
    read in several chunks."""
    monkeypatch.setattr(database, "CHUNK_ROWS", 2_000)  # every table but products in several
    seen = snapshot(any_lake)
    any_lake.materialize(BRONZE)
    assert_bronze_holds(any_lake, seen)

    for _ in range(2):
        any_lake.advance()
        for table, rows in snapshot(any_lake).items():
            seen[table] |= rows
        result = any_lake.materialize(BRONZE)
        assert result.success
    assert_bronze_holds(any_lake, seen)

    log = any_lake.manifest.log
    updated_orders = sum(batch["rows"]["orders"].get("updated", 0) for batch in log)
    inserted_orders = sum(batch["rows"]["orders"]["inserted"] for batch in log)
    assert len(seen["orders"]) == inserted_orders + updated_orders


def test_rerun_without_source_change_appends_nothing(loaded_lake: Lake) -> None:
    before = {
        table: delta.open_table(loaded_lake.uri("bronze", table)).version() for table in DATABASE_TABLES
    }
    events_before = delta.open_table(loaded_lake.uri("bronze", "events")).version()

    result = loaded_lake.materialize()

    for table in DATABASE_TABLES:
        table_now = delta.open_table(loaded_lake.uri("bronze", table))
        assert table_now.version() == before[table], f"bronze/{table} got a commit with nothing new"
        metadata = result.asset_materializations_for_node(f"bronze__{table}")[0].metadata
        assert metadata["rows_appended"].value == 0
        assert metadata["watermark_before"].value == metadata["watermark_after"].value
    assert delta.open_table(loaded_lake.uri("bronze", "events")).version() == events_before


def test_a_row_without_a_watermark_is_counted_and_named_until_it_gets_one(lake: Lake) -> None:
    """In a source that allows a NULL watermark (the demo's does not), such a row cannot be
    extracted incrementally: the run succeeds, reports and warns how many rows wait, and the row
    arrives once it has a watermark."""
    orders = dg.AssetSelection.assets(["bronze", "orders"])
    waiting = lake.source_rows("orders").get_column("order_id")[3]
    with sqlite3.connect(lake.source.sqlite_path) as connection:
        # A copy of the table without its constraints (CREATE TABLE ... AS keeps none).
        connection.execute("ALTER TABLE orders RENAME TO constrained_orders")
        connection.execute("CREATE TABLE orders AS SELECT * FROM constrained_orders")
        connection.execute("DROP TABLE constrained_orders")
        connection.execute("UPDATE orders SET updated_at = NULL WHERE order_id = ?", (waiting,))

    result = lake.materialize(orders)

    metadata = result.asset_materializations_for_node("bronze__orders")[0].metadata
    assert metadata["rows_without_watermark"].value == 1
    assert metadata["rows_appended"].value == lake.source_rows("orders").height - 1
    assert waiting not in lake.table("bronze", "orders").get_column("order_id")
    warnings = [r.user_message for r in lake.instance.all_logs(result.run_id) if r.level == logging.WARNING]
    assert any("1 rows of orders have no updated_at" in message for message in warnings)

    later = (lake.clock + timedelta(minutes=1)).isoformat(sep=" ", timespec="microseconds")
    with sqlite3.connect(lake.source.sqlite_path) as connection:
        connection.execute("UPDATE orders SET updated_at = ? WHERE order_id = ?", (later, waiting))
    result = lake.materialize(orders)

    metadata = result.asset_materializations_for_node("bronze__orders")[0].metadata
    assert (metadata["rows_without_watermark"].value, metadata["rows_appended"].value) == (0, 1)
    assert lake.table("bronze", "orders").get_column("order_id").to_list().count(waiting) == 1


def test_crash_before_commit_loses_and_duplicates_nothing(loaded_lake: Lake, monkeypatch) -> None:
    loaded_lake.advance()
    expected = snapshot(loaded_lake)
    for table, key in DATABASE_TABLES.items():
        expected[table] |= versions(loaded_lake.table("bronze", table), key)

    def crash(*args, **kwargs):
        raise OSError("disk went away after the source was read")

    monkeypatch.setattr(delta, "write_deltalake", crash)
    failed = loaded_lake.materialize(BRONZE, raise_on_error=False)
    assert not failed.success
    monkeypatch.undo()

    assert loaded_lake.materialize(BRONZE).success
    assert_bronze_holds(loaded_lake, expected)


def test_materialization_reports_rows_watermark_version_and_schema(lake: Lake) -> None:
    result = lake.materialize()
    metadata = result.asset_materializations_for_node("bronze__orders")[0].metadata
    bronze = lake.table("bronze", "orders")
    table = delta.open_table(lake.uri("bronze", "orders"))

    assert metadata["dagster/row_count"].value == bronze.height
    assert metadata["rows_appended"].value == bronze.height
    assert metadata["watermark_before"].value == "None"
    assert metadata["watermark_after"].value.startswith(lake.clock.date().isoformat())
    assert metadata["delta_version"].value == table.version()
    columns = [column.name for column in metadata["dagster/column_schema"].value.columns]
    assert columns == bronze.columns
    assert {"_extracted_at", "_source", "_run_id", "_ingest_date"} <= set(columns)
    assert table.transaction_version(ledger.bronze_watermark("orders")) is not None
    history = table.history(1)[0]
    assert history["lakehouse.watermark"] and history["lakehouse.run_id"]


def test_new_source_column_is_added_to_bronze_and_named(loaded_lake: Lake) -> None:
    drift = loaded_lake.manifest.schema_drift
    loaded_lake.advance(batches=drift.from_batch)

    result = loaded_lake.materialize()

    metadata = result.asset_materializations_for_node(f"bronze__{drift.table}")[0].metadata
    assert metadata["added_columns"].value == drift.column
    bronze = loaded_lake.table("bronze", drift.table)
    assert bronze.schema[drift.column] == pl.String
    source_codes = loaded_lake.source_rows(drift.table).get_column(drift.column).drop_nulls()
    assert source_codes.len() > 0
    assert set(source_codes) == set(bronze.get_column(drift.column).drop_nulls())


def test_a_first_load_in_chunks_equals_one_in_one_piece(
    tmp_path: Path, demo_lake: DemoLake, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each chunk is typed by the driver on its own; bronze still gets the same rows and types,
    also for a column the source added later, empty in the first chunks."""
    whole, chunked = (demo_lake(tmp_path / name) for name in ("whole", "chunked"))
    for lake in (whole, chunked):
        lake.advance(batches=lake.manifest.schema_drift.from_batch)
    whole.materialize(BRONZE)
    monkeypatch.setattr(database, "CHUNK_ROWS", 700)
    chunked.materialize(BRONZE)

    drift = whole.manifest.schema_drift
    first_chunk = chunked.table("bronze", drift.table).sort("updated_at").head(700)
    assert first_chunk.get_column(drift.column).null_count() == 700
    for table, key in DATABASE_TABLES.items():
        run_columns = ["_extracted_at", "_run_id"]
        expected = whole.table("bronze", table).drop(run_columns).sort(key, "updated_at")
        assert_frame_equal(chunked.table("bronze", table).drop(run_columns).sort(key, "updated_at"), expected)


def test_a_source_lost_between_chunks_commits_nothing_and_the_next_run_loads_all_once(
    lake: Lake, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A first load streams its chunks into one commit. The source failing after the first chunk
    (through every retry of the query) fails the step at once, without a commit and without a
    step retry on top; the next run loads it all."""
    monkeypatch.setattr(database, "CHUNK_ROWS", 2_000)
    expected = snapshot(lake)["orders"]
    original, chunks_read = SourceDatabase.read, []

    def lost_at_second_chunk(self: SourceDatabase, query: str, *args, **kwargs) -> pl.DataFrame:
        if 'FROM "orders" WHERE' in query and "LIMIT" in query:
            chunks_read.append(query)
            if len(chunks_read) == 2:
                raise SourceUnavailableError("extracting orders failed after 6 attempts: database is locked")
        return original(self, query, *args, **kwargs)

    monkeypatch.setattr(SourceDatabase, "read", lost_at_second_chunk)
    failed = lake.materialize(dg.AssetSelection.assets(["bronze", "orders"]), raise_on_error=False)

    assert not failed.success
    assert not any(event.event_type == dg.DagsterEventType.STEP_UP_FOR_RETRY for event in failed.all_events)
    assert delta.open_table(lake.uri("bronze", "orders")) is None, "the failed run committed something"
    lake.materialize(dg.AssetSelection.assets(["bronze", "orders"]))
    assert versions(lake.table("bronze", "orders"), "order_id") == expected
    assert lake.table("bronze", "orders").height == len(expected)


# SQLite's file locks are per process, so the lock is held by another process, as a busy
# writer application would hold it.
HOLD_LOCK = """
import sqlite3, sys, time
connection = sqlite3.connect(sys.argv[1], isolation_level=None)
connection.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
connection.execute("ROLLBACK")
"""


@contextmanager
def locked(path: Path, seconds: float) -> Iterator[subprocess.Popen]:
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(path), str(seconds)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        yield holder
    finally:
        holder.kill()
        holder.wait()


def test_locked_source_is_retried_until_it_frees_up(lake: Lake) -> None:
    source = lake.source.model_copy(update={"max_attempts": 10, "backoff_seconds": 0.25})
    with locked(source.sqlite_path, seconds=1.0) as holder:
        frame = source.read("SELECT COUNT(*) AS n FROM products", what="counting products")
        assert holder.wait() == 0, "the lock was released by its holder, not broken"
    assert frame["n"][0] == lake.manifest.log[0]["rows"]["products"]["inserted"]


def test_source_that_stays_locked_fails_with_a_clear_message(lake: Lake) -> None:
    source = lake.source.model_copy(update={"max_attempts": 3})
    with (
        locked(source.sqlite_path, seconds=60),
        pytest.raises(
            SourceUnavailableError, match=r"counting products failed after 3 attempts against sqlite:shop\.db"
        ),
    ):
        source.read("SELECT COUNT(*) FROM products", what="counting products")
