"""`lakehouse table history` and `restore`: a bad load rolled back, then loaded again exactly once."""

import dagster as dg
import polars as pl
from conftest import TEST_SALT, Lake, run_command

from lakehouse.orchestration.jobs import INGEST
from lakehouse.storage import delta, ledger
from lakehouse.storage.ledger import LOADED_AT


def table_command(lake: Lake, *args: str):
    return run_command(["lakehouse", "table", *args], lake.folder, LAKEHOUSE_PII_SALT=TEST_SALT)


def versions(lake: Lake, *tables: str) -> dict[str, int]:
    return {table: delta.open_table(lake.uri(*table.split("/"))).version() for table in tables}


# When and by which run a row was loaded: a reload changes these and nothing else.
LOAD_AUDIT = (LOADED_AT, "_extracted_at", "_run_id")


def content(lake: Lake, layer: str, name: str, key: list[str]) -> pl.DataFrame:
    return lake.table(layer, name).drop(LOAD_AUDIT, strict=False).sort(key)


EVENTS = dg.AssetSelection.assets(
    ["bronze", "events"], ["quarantine", "events_malformed"], ["silver", "events"], ["quarantine", "events"]
)


def test_a_rolled_back_load_of_orders_is_loaded_again_exactly_once(lake: Lake) -> None:
    lake.materialize(INGEST)
    good = versions(lake, "bronze/orders", "silver/orders")
    good_watermark = delta.open_table(lake.uri("bronze", "orders")).transaction_version(
        ledger.bronze_watermark("orders")
    )
    lake.advance()
    bad_run = lake.materialize(INGEST).run_id
    loaded = content(lake, "silver", "orders", ["order_id"])

    history = table_command(lake, "history", "silver/orders")
    assert history.returncode == 0
    commits = [line.split() for line in history.stdout.splitlines()[1:]]
    load = [commit for commit in commits if int(commit[0]) > good["silver/orders"]]
    # Newest first: the new orders appended after the MERGE of those silver held, both by the run.
    assert [(commit[2], commit[-1]) for commit in load] == [("WRITE", bad_run), ("MERGE", bad_run)]

    refused = table_command(lake, "restore", "bronze/orders", "--version", str(good["bronze/orders"]))
    assert refused.returncode == 2
    assert "silver/orders has consumed bronze/orders up to version" in refused.stderr
    assert versions(lake, "bronze/orders")["bronze/orders"] == good["bronze/orders"] + 1

    for table in ("silver/orders", "bronze/orders"):
        restored = table_command(lake, "restore", table, "--version", str(good[table]))
        assert restored.returncode == 0, restored.stderr
    silver = delta.open_table(lake.uri("silver", "orders"))
    bronze = delta.open_table(lake.uri("bronze", "orders"))
    assert ledger.read(silver, ledger.silver_position("orders")) == good["bronze/orders"]
    assert bronze.transaction_version(ledger.bronze_watermark("orders")) == good_watermark
    assert (
        pl.read_delta(lake.uri("bronze", "orders")).height
        == pl.read_delta(lake.uri("bronze", "orders"), version=good["bronze/orders"]).height
    )
    assert "RESTORE" in table_command(lake, "history", "bronze/orders", "--limit", "1").stdout

    lake.materialize(INGEST)

    assert content(lake, "silver", "orders", ["order_id"]).equals(loaded)


def test_rolled_back_event_files_are_waiting_again_and_ingested_once(lake: Lake) -> None:
    lake.materialize(EVENTS)
    good = versions(lake, "bronze/events", "silver/events")
    lake.advance()
    new_files = sorted(path.name for path in lake.landing.glob("*.jsonl"))[-1:]
    lake.materialize(EVENTS)
    bronze_loaded = lake.table("bronze", "events").height
    silver_loaded = content(lake, "silver", "events", ["event_id"])

    for table in ("silver/events", "bronze/events"):
        restored = table_command(lake, "restore", table, "--version", str(good[table]))
        assert restored.returncode == 0, restored.stderr
        assert "ledger lakehouse." in restored.stdout
    bronze = delta.open_table(lake.uri("bronze", "events"))
    assert all(ledger.read(bronze, ledger.landing_file("events", name)) is None for name in new_files)

    lake.materialize(EVENTS)

    assert lake.table("bronze", "events").height == bronze_loaded
    assert content(lake, "silver", "events", ["event_id"]).equals(silver_loaded)


def test_a_restore_outside_the_tables_versions_is_refused(lake: Lake) -> None:
    lake.materialize(EVENTS)
    current = versions(lake, "silver/events")["silver/events"]

    refused = table_command(lake, "restore", "silver/events", "--version", str(current))

    assert refused.returncode == 2
    assert (
        f"silver/events is at version {current}: restore to a version from 0 to {current - 1}"
        in refused.stderr
    )
    assert table_command(lake, "history", "silver/nothing").returncode == 2
    no_versions = table_command(lake, "history", "bronze/orders", "--limit", "0")
    assert no_versions.returncode == 2 and "must be at least 1" in no_versions.stderr
