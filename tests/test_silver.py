"""Silver: validated, deduplicated current state that never regresses and never loses a row."""

import json
import re
import sqlite3
from collections import Counter
from datetime import timedelta
from pathlib import Path

import duckdb
import polars as pl
import pytest
from conftest import TEST_SALT, THROUGH_SILVER, DemoLake, Lake

from lakehouse.bronze import tombstones
from lakehouse.bronze.columns import DELETE, OP
from lakehouse.demo import store
from lakehouse.demo.events import EVENT_TYPES
from lakehouse.resources import PiiHasher
from lakehouse.silver import changes as bronze_changes
from lakehouse.silver import load as silver_load
from lakehouse.silver import orphans as silver_orphans
from lakehouse.silver.history import DELETED, VALID_TO
from lakehouse.sources.contract import Contract
from lakehouse.storage import delta

KEYS = {
    "customers": "customer_id",
    "products": "product_id",
    "orders": "order_id",
    "order_items": "order_item_id",
}
STATUSES = ["pending", "confirmed", "shipped", "delivered", "cancelled"]
# The contract rules, restated independently of the code under test.
VALID = {
    "customers": pl.lit(True),
    "products": pl.lit(True),
    "orders": (pl.col("total_amount") >= 0) & pl.col("status").is_in(STATUSES),
    "order_items": pl.lit(True),
}
VOLATILE = ["_loaded_at", "_run_id", "_extracted_at", "_quarantined_at", "_ingest_date"]


def silver_metadata(result, name: str) -> dict:
    for materialization in result.asset_materializations_for_node(f"silver_{name}"):
        if materialization.asset_key.path == ["silver", name]:
            return {key: value.value for key, value in materialization.metadata.items()}
    raise AssertionError(f"silver/{name} was not materialised")


def stable(frame: pl.DataFrame, key: str | list[str]) -> pl.DataFrame:
    """Contents without the columns that record when or by which run a row was written (a
    version a delete closed ends when a run found the delete)."""
    if DELETED in frame.columns:
        frame = frame.with_columns(
            pl.when(pl.col(DELETED)).then(None).otherwise(pl.col(VALID_TO)).alias(VALID_TO)
        )
    return frame.drop(VOLATILE, strict=False).sort(key)


def demo_lakes(tmp_path: Path, demo_lake: DemoLake, *names: str) -> list[Lake]:
    """Lakes over demo sources built alike, one per name."""
    return [demo_lake(tmp_path / name) for name in names]


def assert_same_tables(
    lake: Lake, expected: Lake, tables: list[tuple[str, str, str | list[str]]], what: str
) -> None:
    """Each (layer, name, key) table of `lake` holds what `expected`'s does, run columns aside."""
    for layer, name, key in tables:
        assert stable(lake.table(layer, name), key).equals(stable(expected.table(layer, name), key)), (
            f"{layer}/{name} {what}"
        )


def test_silver_is_the_latest_valid_version_and_every_bronze_row_is_accounted_for(lake: Lake) -> None:
    runs = [lake.materialize(THROUGH_SILVER)]
    for _ in range(3):
        lake.advance()
        runs.append(lake.materialize(THROUGH_SILVER))
    hasher = PiiHasher(salt=TEST_SALT)

    for name in (*KEYS, "events"):
        metadata = [silver_metadata(run, name) for run in runs]
        read = sum(m["rows_read"] for m in metadata)
        accounted = sum(
            m["rows_inserted"]
            + m["rows_updated"]
            + m["rows_unchanged"]
            + m["duplicates_collapsed"]
            + m["rows_quarantined"]
            + m["tombstones"]
            + m["rows_before_a_delete"]
            for m in metadata
        )
        assert read == lake.table("bronze", name).height, f"silver/{name} did not consume all of bronze"
        assert accounted == read, (
            f"silver/{name}: rows read are not merged + collapsed + quarantined + deleted"
        )

    for name, key in KEYS.items():
        source = lake.source_rows(name).filter(VALID[name])
        silver = lake.table("silver", name)
        assert silver.get_column(key).is_unique().all()
        assert set(silver.get_column(key)) == set(source.get_column(key)), f"silver/{name} keys differ"
        joined = source.join(silver, on=key, suffix="_silver")
        assert (joined.get_column("updated_at") == joined.get_column("updated_at_silver")).all()
        if name == "orders":
            assert (joined.get_column("status") == joined.get_column("status_silver")).all()
            amounts = joined.get_column("total_amount_silver").cast(pl.Float64) - joined.get_column(
                "total_amount"
            )
            assert amounts.abs().max() < 0.005
        if name == "customers":
            expected = [hasher.hash_value(email) for email in joined.get_column("email")]
            assert joined.get_column("email_silver").to_list() == expected

    rejected = lake.source_rows("orders").filter(~VALID["orders"]).height
    assert lake.table("quarantine", "orders").get_column("order_id").n_unique() == rejected


def test_rerun_without_new_bronze_rows_changes_nothing(loaded_lake: Lake) -> None:
    loaded_lake.advance()
    loaded_lake.materialize(THROUGH_SILVER)
    tables = [("silver", n) for n in (*KEYS, "events", "customers_history")] + [("quarantine", "orders")]
    before = {t: (delta.open_table(loaded_lake.uri(*t)).version(), loaded_lake.table(*t)) for t in tables}

    result = loaded_lake.materialize(THROUGH_SILVER)

    for table, (version, contents) in before.items():
        assert delta.open_table(loaded_lake.uri(*table)).version() == version, f"{table} got a new commit"
        assert loaded_lake.table(*table).equals(contents)
    assert silver_metadata(result, "orders")["rows_read"] == 0


def test_an_older_version_arriving_late_does_not_regress_the_row(loaded_lake: Lake) -> None:
    current = loaded_lake.table("silver", "orders").filter(pl.col("status") == "delivered").row(0, named=True)
    stale = (
        loaded_lake.table("bronze", "orders")
        .filter(pl.col("order_id") == current["order_id"])
        .with_columns(
            status=pl.lit("pending"),
            updated_at=pl.lit((current["updated_at"] - timedelta(days=2)).isoformat(sep=" ")),
        )
    )
    delta.write(loaded_lake.uri("bronze", "orders"), stale, partition_by=["_ingest_date"])

    result = loaded_lake.materialize("group:silver")

    row = (
        loaded_lake.table("silver", "orders")
        .filter(pl.col("order_id") == current["order_id"])
        .row(0, named=True)
    )
    assert (row["status"], row["updated_at"]) == ("delivered", current["updated_at"])
    metadata = silver_metadata(result, "orders")
    assert (metadata["rows_read"], metadata["rows_unchanged"], metadata["rows_updated"]) == (1, 1, 0)


def test_a_duplicate_event_in_a_later_file_is_not_inserted_twice(loaded_lake: Lake) -> None:
    first_file = sorted((loaded_lake.landing / "events").glob("*.jsonl"))[0]
    line = first_file.read_text().splitlines()[0]
    event = json.loads(line)
    # The same event again, and another event under its id (the id reused by the producer).
    reused = {**event, "event_type": next(kind for kind in EVENT_TYPES if kind != event["event_type"])}
    later = loaded_lake.landing / "events" / "events_20991231T000000_99999_00.jsonl"
    later.write_text(f"{line}\n{json.dumps(reused)}\n")
    events_before = loaded_lake.table("silver", "events").height

    # Half of this two-line load goes to quarantine: above the contract's rate, so it fails.
    result = loaded_lake.materialize(THROUGH_SILVER, raise_on_error=False)
    (rate,) = (
        e
        for e in result.get_asset_check_evaluations()
        if e.check_name == "quarantine_rate" and e.asset_key.path == ["silver", "events"]
    )
    assert not rate.passed and "event_id repeats with different content" in rate.description

    silver = loaded_lake.table("silver", "events")
    assert silver.height == events_before
    assert silver.filter(pl.col("event_id") == event["event_id"]).get_column("event_type").to_list() == [
        event["event_type"]
    ]
    metadata = silver_metadata(result, "events")
    counts = (
        "rows_read",
        "duplicates_collapsed",
        "conflicting_duplicates",
        "rows_quarantined",
        "rows_inserted",
    )
    assert tuple(metadata[name] for name in counts) == (2, 1, 1, 1, 0)
    quarantined = loaded_lake.table("quarantine", "events").filter(pl.col("_source_file") == later.name)
    assert quarantined.select("_line_number", "_error").rows() == [
        (2, f"event_id repeats with different content (first in {first_file.name}:1)")
    ]


def change_customer(lake: Lake, customer_id: int, **values: str) -> None:
    lake.clock += timedelta(hours=1)
    store.update(
        lake.source,
        "customers",
        "customer_id",
        pl.DataFrame(
            {"customer_id": [customer_id], **{k: [v] for k, v in values.items()}, "updated_at": [lake.clock]}
        ),
    )


def test_a_customer_changed_twice_has_three_history_rows(loaded_lake: Lake) -> None:
    change_customer(loaded_lake, 1, email="first.change@example.com")
    loaded_lake.materialize(THROUGH_SILVER)
    change_customer(loaded_lake, 1, street_address="1 New Street", city="Vienna", country="AT")
    loaded_lake.materialize(THROUGH_SILVER)
    loaded_lake.materialize(THROUGH_SILVER)  # replaying nothing new must not touch history

    rows = (
        loaded_lake.table("silver", "customers_history").filter(pl.col("customer_id") == 1).sort("valid_from")
    )
    assert rows.height == 3
    assert rows.get_column("is_current").to_list() == [False, False, True]
    assert rows.get_column("valid_to").to_list()[:2] == rows.get_column("valid_from").to_list()[1:]
    assert rows.get_column("valid_to")[2] is None
    assert rows.get_column("city")[2] == "Vienna"
    assert rows.get_column("email")[1] == PiiHasher(salt=TEST_SALT).hash_value("first.change@example.com")
    current = loaded_lake.table("silver", "customers_history").filter(pl.col("is_current"))
    assert current.get_column("customer_id").is_unique().all()
    assert current.height == loaded_lake.table("silver", "customers").height


def test_no_raw_pii_leaves_bronze(lake: Lake) -> None:
    lake.advance()
    with sqlite3.connect(lake.source.sqlite_path) as connection:  # an invalid customer goes to quarantine
        connection.execute("UPDATE customers SET created_at = 'sometime in 2025' WHERE customer_id = 2")
    lake.materialize("*")
    assert lake.table("quarantine", "customers").get_column("customer_id").to_list() == [2]
    customers = lake.source.read("SELECT email, phone, street_address FROM customers")
    raw = set()
    for column in ("email", "phone", "street_address"):
        raw |= set(customers.get_column(column).drop_nulls())
    root = Path(lake.storage.root)
    for table_folder in sorted(
        p for layer in ("silver", "gold", "quarantine") for p in (root / layer).iterdir()
    ):
        frame = pl.read_delta(str(table_folder))
        for column in frame.select(pl.col(pl.String)).columns:
            leaked = raw & set(frame.get_column(column).drop_nulls())
            assert not leaked, f"{table_folder}.{column} holds raw PII: {sorted(leaked)[:3]}"
    with duckdb.connect(str(lake.warehouse), read_only=True) as warehouse:
        # Tables and views: the gold sources are views over the Delta files.
        tables = warehouse.sql("select table_schema, table_name from information_schema.tables").fetchall()
        for schema, table in tables:
            frame = warehouse.sql(f'select * from "{schema}"."{table}"').pl()
            for column in frame.select(pl.col(pl.String)).columns:
                leaked = raw & set(frame.get_column(column).drop_nulls())
                assert not leaked, f"warehouse {schema}.{table}.{column} holds raw PII"
    assert ("gold", "dim_customers") in tables


@pytest.mark.parametrize("killed_at", ["before its MERGE", "between its MERGE and its append"])
def test_a_load_killed_at_a_silver_commit_then_run_again_equals_one_not_killed(
    tmp_path: Path, demo_lake: DemoLake, monkeypatch: pytest.MonkeyPatch, killed_at: str
) -> None:
    steady, killed = demo_lakes(tmp_path, demo_lake, "steady", "killed")
    for lake in (steady, killed):
        lake.materialize(THROUGH_SILVER)
        lake.advance(batches=2)
    steady.materialize(THROUGH_SILVER)

    original = silver_load.merge

    def die(uri: str, *args, **kwargs) -> silver_load.MergeCounts:
        # Before: quarantine and history are written. Between: the batch's changes to the keys
        # silver holds (updates, deletes) are committed, its new keys not yet appended.
        if not uri.endswith(("/silver/orders", "/silver/order_items", "/silver/customers")):
            return original(uri, *args, **kwargs)
        if killed_at.startswith("between"):
            original(uri, *args, **kwargs)
        raise OSError(f"killed {killed_at}")

    monkeypatch.setattr(silver_load, "merge", die)
    assert not killed.materialize(THROUGH_SILVER, raise_on_error=False).success
    monkeypatch.undo()
    assert killed.table("silver", "order_items").height < steady.table("silver", "order_items").height
    killed.materialize(THROUGH_SILVER)

    tables = [
        ("silver", "orders", "order_id"),
        ("silver", "customers", "customer_id"),
        ("silver", "customers_history", ["customer_id", "valid_from"]),
        ("quarantine", "orders", ["order_id", "updated_at"]),
        ("silver", "order_items", "order_item_id"),
    ]
    assert_same_tables(killed, steady, tables, f"differs after a load killed {killed_at} and run again")


def test_a_load_in_slices_crashed_between_two_equals_one_in_one_piece(
    tmp_path: Path, demo_lake: DemoLake, monkeypatch: pytest.MonkeyPatch
) -> None:
    whole, sliced = demo_lakes(tmp_path, demo_lake, "whole", "sliced")
    original, slices = silver_load._newest_per_key, Counter()

    def crash_at_second_slice(frame: pl.DataFrame, contract: Contract) -> pl.DataFrame:
        # Merged (order_items) and append-only (events) tables alike.
        if contract.name in ("order_items", "events"):
            slices[contract.name] += 1
            if slices[contract.name] == 2:
                raise OSError("killed after the first slice was committed")
        return original(frame, contract)

    tables = [
        ("silver", "orders", "order_id"),
        ("silver", "order_items", "order_item_id"),
        ("silver", "customers", "customer_id"),
        ("silver", "customers_history", ["customer_id", "valid_from"]),
        ("silver", "events", "event_id"),
        ("quarantine", "orders", ["order_id", "updated_at"]),
    ]
    # A first load, then one of three batches, each in several slices of the larger tables.
    names = ("order_items", "events")
    for number, (load, slice_rows) in enumerate((("first load", 900), ("load of three batches", 100))):
        whole.materialize(THROUGH_SILVER)
        before = {name: sliced.table("silver", name).height if number else 0 for name in names}
        slices.clear()
        with monkeypatch.context() as patched:
            patched.setattr(bronze_changes, "SLICE_ROWS", slice_rows)
            patched.setattr(silver_load, "_newest_per_key", crash_at_second_slice)
            assert not sliced.materialize(THROUGH_SILVER, raise_on_error=False).success
            for name in names:
                assert before[name] < sliced.table("silver", name).height < whole.table("silver", name).height
            patched.setattr(silver_load, "_newest_per_key", original)
            sliced.materialize(THROUGH_SILVER)
        assert_same_tables(sliced, whole, tables, f"after a {load} in slices differs from one in one piece")
        for lake in (whole, sliced):
            lake.advance(batches=3)


def test_orphan_items_are_kept_flagged_and_released_when_the_product_arrives(
    loaded_lake: Lake, monkeypatch: pytest.MonkeyPatch
) -> None:
    items = loaded_lake.table("silver", "order_items")
    orphans = items.filter(pl.col("_orphan") == "product_id not in products")
    assert orphans.height == loaded_lake.manifest.defects["orphan_order_item"] > 0
    missing_product = orphans.get_column("product_id")[0]

    # While the items and their parents are as the last look found them, its count stands.
    looked = silver_metadata(loaded_lake.materialize(THROUGH_SILVER), "order_items")
    with monkeypatch.context() as patched:
        patched.setattr(silver_orphans, "parent_keys", lambda *_: pytest.fail("looked for orphans again"))
        kept = silver_metadata(loaded_lake.materialize(THROUGH_SILVER), "order_items")
    assert kept["orphans"] == looked["orphans"] == items.get_column("_orphan").is_not_null().sum()

    loaded_lake.clock += timedelta(hours=1)
    store.insert(
        loaded_lake.source,
        "products",
        pl.DataFrame({
            "product_id": [missing_product], "sku": ["SKU-LATE"], "name": ["Late Catalogue Entry"],
            "category": ["books"], "price": [9.99],
            "created_at": [loaded_lake.clock], "updated_at": [loaded_lake.clock],
        }),
    )  # fmt: skip
    loaded_lake.materialize(THROUGH_SILVER)

    released = loaded_lake.table("silver", "order_items").filter(pl.col("product_id") == missing_product)
    assert released.height == orphans.filter(pl.col("product_id") == missing_product).height
    assert released.get_column("_orphan").null_count() == released.height
    assert loaded_lake.table("silver", "order_items").height == items.height


def test_an_uncastable_value_sends_its_row_to_quarantine_with_the_reason(loaded_lake: Lake) -> None:
    later = (loaded_lake.clock + timedelta(minutes=5)).isoformat(sep=" ", timespec="microseconds")
    with sqlite3.connect(loaded_lake.source.sqlite_path) as connection:
        connection.execute(
            "UPDATE orders SET created_at = '31/12/2026', updated_at = ? WHERE order_id = 1", (later,)
        )

    # The load's one row went to quarantine: above the contract's quarantine rate, so it fails.
    result = loaded_lake.materialize(THROUGH_SILVER, raise_on_error=False)
    (rate,) = (
        e
        for e in result.get_asset_check_evaluations()
        if e.check_name == "quarantine_rate" and e.asset_key.path == ["silver", "orders"]
    )
    assert not rate.passed and rate.description.endswith("commonest reasons: created_at unparseable (1)")

    quarantined = loaded_lake.table("quarantine", "orders").filter(pl.col("order_id") == 1)
    assert quarantined.get_column("_error").to_list() == ["created_at unparseable"]
    assert quarantined.get_column("created_at").to_list() == ["31/12/2026"]
    silver = loaded_lake.table("silver", "orders").filter(pl.col("order_id") == 1)
    assert silver.height == 1 and silver.get_column("updated_at")[0] < loaded_lake.clock + timedelta(
        minutes=5
    )


def test_a_new_source_column_appears_in_silver(loaded_lake: Lake) -> None:
    drift = loaded_lake.manifest.schema_drift
    loaded_lake.advance(batches=drift.from_batch)
    loaded_lake.materialize(THROUGH_SILVER)

    silver = loaded_lake.table("silver", drift.table)
    source = loaded_lake.source_rows(drift.table).filter(VALID[drift.table])
    joined = source.join(silver, on=KEYS[drift.table], suffix="_silver")
    assert joined.get_column(drift.column).drop_nulls().len() > 0
    assert joined.get_column(drift.column).equals(
        joined.get_column(f"{drift.column}_silver"), check_names=False
    )


def test_an_incremental_merge_touches_only_the_batch_partitions(loaded_lake: Lake) -> None:
    loaded_lake.advance()
    loaded_lake.materialize(THROUGH_SILVER)

    table = delta.open_table(loaded_lake.uri("silver", "orders"))
    merge = next(commit for commit in table.history() if commit["operation"] == "MERGE")
    bronze = loaded_lake.table("bronze", "orders")
    batch = bronze.filter(pl.col("_extracted_at") == pl.col("_extracted_at").max())
    # The MERGE takes the orders silver holds (the batch's new orders are appended) and those
    # the batch's tombstones delete, in the months they were made.
    deleted = batch.filter(pl.col(OP) == DELETE).get_column("order_id")
    doomed = tombstones.versions(bronze.filter(pl.col("order_id").is_in(deleted.implode())))
    months = re.findall(r"created_at_month = '(\d{4}-\d{2})'", merge["operationParameters"]["predicate"])
    batch_months = set(
        pl.concat([tombstones.versions(batch), doomed]).get_column("created_at").str.slice(0, 7)
    )
    assert not deleted.is_empty()
    assert set(doomed.get_column("created_at").str.slice(0, 7)) <= set(months) <= batch_months
    metrics = merge["operationMetrics"]
    assert metrics["num_target_files_skipped_during_scan"] > 0
    assert metrics["num_target_files_scanned"] < len(table.file_uris())
