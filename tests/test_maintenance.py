"""Delta maintenance: fewer files and the same rows, z-order where contracts ask, checkpoints,
vacuum within the retention, and silver and gold reading on correctly after compaction."""

from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import polars as pl
import pytest
from conftest import DemoLake, Lake
from deltalake import DeltaTable

from lakehouse.orchestration.maintenance import (
    MEGABYTE,
    Z_ORDER_KEY,
    maintain_table,
    maintenance_job,
    versions_silver_needs,
)

# Its tests share a module's built lake: under pytest-xdist one worker runs them all.
pytestmark = pytest.mark.xdist_group("test_maintenance")

Z_ORDERED = {
    ("bronze", "orders"): "customer_id",
    ("silver", "orders"): "customer_id",
    ("bronze", "order_items"): "product_id",
    ("silver", "order_items"): "product_id",
    ("bronze", "events"): "user_id",
    ("silver", "events"): "user_id",
}
INGEST = dg.AssetSelection.groups("bronze", "silver")
KEYS = {
    "customers": "customer_id",
    "products": "product_id",
    "orders": "order_id",
    "order_items": "order_item_id",
}


@dataclass(frozen=True)
class Measured:
    files: int
    bytes: int
    rows: int
    version: int


def measure(uri: str) -> Measured:
    """What a user sees of a table, counted independently of the code under test."""
    table = DeltaTable(uri)
    paths = table.file_uris()
    rows = pl.scan_delta(uri).select(pl.len()).collect().item()
    return Measured(len(paths), sum(Path(path).stat().st_size for path in paths), rows, table.version())


def measure_all(lake: Lake) -> dict[tuple[str, str], Measured]:
    return {table: measure(lake.uri(*table)) for table in lake.storage.tables()}


def run_maintenance(lake: Lake, **config: int) -> dg.ExecuteInProcessResult:
    return maintenance_job(lake.contracts).execute_in_process(
        run_config={"ops": {"maintain_tables": {"config": config}}},
        resources={"lakehouse": lake.storage},
        instance=lake.instance,
    )


def observations(result: dg.ExecuteInProcessResult) -> dict[tuple[str, str], dict]:
    return {
        tuple(event.asset_key.path): {key: value.value for key, value in event.metadata.items()}
        for event in result.asset_observations_for_node("maintain_tables")
    }


def materialized(result: dg.ExecuteInProcessResult, layer: str, name: str) -> dict:
    [event] = [e for e in result.get_asset_materialization_events() if e.asset_key.path == [layer, name]]
    return {key: value.value for key, value in event.materialization.metadata.items()}


def latest_optimize(uri: str) -> dict | None:
    return next((c for c in DeltaTable(uri).history() if c["operation"] == "OPTIMIZE"), None)


@dataclass(frozen=True)
class Maintained:
    lake: Lake
    before: dict[tuple[str, str], Measured]
    after: dict[tuple[str, str], Measured]
    maintenance: dg.ExecuteInProcessResult
    rerun: dg.ExecuteInProcessResult  # bronze and silver right after maintenance, nothing new
    silver_versions_after_rerun: dict[str, int]
    next_run: dg.ExecuteInProcessResult  # after the source moved on


@pytest.fixture(scope="module")
def maintained(tmp_path_factory: pytest.TempPathFactory, demo_lake: DemoLake) -> Maintained:
    """A lakehouse after three incremental runs (small files), the default maintenance, then two
    more runs. Every test only reads it."""
    lake = demo_lake(tmp_path_factory.mktemp("maintained"))
    for _ in range(2):
        lake.materialize(INGEST)
        lake.advance()
    lake.materialize()
    before = measure_all(lake)
    maintenance = run_maintenance(lake)
    after = measure_all(lake)
    rerun = lake.materialize(INGEST)
    silver_versions = {name: DeltaTable(lake.uri("silver", name)).version() for name in KEYS}
    lake.advance()
    return Maintained(lake, before, after, maintenance, rerun, silver_versions, lake.materialize())


def test_maintenance_leaves_fewer_files_and_the_same_rows(maintained: Maintained) -> None:
    before, after, observed = maintained.before, maintained.after, observations(maintained.maintenance)
    assert {layer for layer, _ in before} == {"bronze", "silver", "gold", "quarantine"}
    assert set(observed) == set(before) == set(after), "every table is maintained and reported"
    assert before["bronze", "orders"].files >= 3 > after["bronze", "orders"].files
    assert sum(m.files for m in after.values()) < sum(m.files for m in before.values())
    for table, metadata in observed.items():
        assert after[table].rows == before[table].rows, f"{table} changed its rows"
        assert (metadata["files_before"], metadata["bytes_before"]) == (
            before[table].files,
            before[table].bytes,
        )
        assert (metadata["files_after"], metadata["bytes_after"]) == (after[table].files, after[table].bytes)
        assert metadata["delta_version"] == after[table].version
        assert metadata["duration_seconds"] >= 0


def test_z_order_runs_on_the_contract_columns_of_bronze_and_silver_only(maintained: Maintained) -> None:
    for table in maintained.after:
        commit = latest_optimize(maintained.lake.uri(*table))
        if table in Z_ORDERED:
            assert commit is not None and commit["operationMetrics"]["plannerStrategy"] == "zOrder"
            assert commit[Z_ORDER_KEY] == Z_ORDERED[table]
        elif commit is not None:
            assert commit["operationMetrics"]["plannerStrategy"] != "zOrder", f"{table} was z-ordered"
            assert Z_ORDER_KEY not in commit
    assert observations(maintained.maintenance)["quarantine", "orders"]["z_order"] == "none"


def test_every_table_has_a_checkpoint(maintained: Maintained) -> None:
    for table in maintained.after:
        log = Path(maintained.lake.uri(*table)) / "_delta_log"
        assert list(log.glob("*.checkpoint.parquet")), f"{table} has no checkpoint"


def test_the_default_retention_keeps_the_files_compaction_just_removed(maintained: Maintained) -> None:
    lake, before = maintained.lake, maintained.before
    for table, metadata in observations(maintained.maintenance).items():
        assert metadata["files_removed_by_vacuum"] == 0
        old = pl.read_delta(lake.uri(*table), version=before[table].version)
        assert old.height == before[table].rows, f"{table} cannot travel back to before maintenance"
    # Files the compaction removed are there to delete; the 7-day retention kept them.
    bronze = DeltaTable(lake.uri("bronze", "orders"))
    assert bronze.vacuum(retention_hours=0, dry_run=True, enforce_retention_duration=False)


def test_a_retention_under_a_day_is_refused_before_any_table_changes(maintained: Maintained) -> None:
    lake = maintained.lake
    versions = {table: DeltaTable(lake.uri(*table)).version() for table in maintained.after}
    with pytest.raises(dg.Failure, match=r"retention_hours=12 is under the floor of 24 h"):
        run_maintenance(lake, retention_hours=12)
    assert {table: DeltaTable(lake.uri(*table)).version() for table in versions} == versions


def test_silver_reads_no_compacted_row_again(maintained: Maintained) -> None:
    lake = maintained.lake
    # Compaction commits change no data: the change feed gives silver nothing to read again.
    for contract in lake.contracts:
        assert materialized(maintained.rerun, "silver", contract.name)["rows_read"] == 0, contract.name
    after = {name: maintained.after["silver", name].version for name in KEYS}
    assert maintained.silver_versions_after_rerun == after, "silver got a commit with nothing new"

    for contract in lake.contracts:
        bronze = materialized(maintained.next_run, "bronze", contract.name)
        appended = bronze["rows_appended"] + bronze.get("rows_deleted", 0)  # row versions and tombstones
        assert materialized(maintained.next_run, "silver", contract.name)["rows_read"] == appended > 0
    tables = set(lake.storage.tables())
    for name, key in KEYS.items():
        silver, source = lake.table("silver", name).get_column(key), lake.source_rows(name).get_column(key)
        quarantined = lake.table("quarantine", name).get_column(key) if ("quarantine", name) in tables else []
        assert silver.is_unique().all(), f"silver/{name} holds a key twice"
        assert set(silver) | set(quarantined) == set(source), f"silver/{name} lost or invented keys"


def test_silver_and_gold_reconcile_after_compaction(maintained: Maintained) -> None:
    """Silver's bronze reconciliation, and gold against silver (compacted too), pass."""
    lake, names = maintained.lake, {"bronze_rows_accounted", "orders_match_silver", "revenue_matches_silver"}
    for run, expected in (
        (maintained.rerun, len(lake.contracts)),
        (maintained.next_run, len(lake.contracts) + 2),
    ):
        evaluations = [e for e in run.get_asset_check_evaluations() if e.check_name in names]
        assert len(evaluations) == expected and all(e.passed for e in evaluations)
    assert lake.table("gold", "fct_orders").height == lake.table("silver", "orders").height


def test_vacuum_keeps_the_bronze_files_silver_has_yet_to_read(lake: Lake) -> None:
    """Vacuum at retention 0 (only the job's config refuses it) deletes every file compaction
    removed, except those of the bronze versions silver still reads: the one it consumed last
    (its reconciliation check reads it) and each later data commit (its change feed)."""
    uri, contract = lake.uri("bronze", "orders"), lake.contract("orders")
    bronze = dg.AssetSelection.assets(["bronze", "orders"])
    orders = bronze | dg.AssetSelection.assets(["silver", "orders"], ["quarantine", "orders"])

    def maintain_now() -> int:
        table = DeltaTable(uri)
        keep = versions_silver_needs(table, lake.storage, contract)
        return maintain_table(table, [], 128 * MEGABYTE, 0, keep).files_vacuumed

    lake.materialize(orders)
    lake.advance()
    lake.materialize(orders)
    assert maintain_now() == 0  # silver's last version holds every file compaction removed
    lake.advance()
    lake.materialize(orders)
    lake.advance()
    extracted = materialized(lake.materialize(bronze), "bronze", "orders")
    appended = extracted["rows_appended"] + extracted["rows_deleted"]  # row versions and tombstones

    assert maintain_now() == 2  # the first two runs' files: no version silver reads holds them
    start = next(c for c in DeltaTable(uri).history() if c["operation"] == "VACUUM START")
    assert start["operationParameters"]["specifiedRetentionMillis"] == "0"
    # Without the kept versions, vacuum would delete the files silver is about to read.
    assert DeltaTable(uri).vacuum(retention_hours=0, dry_run=True, enforce_retention_duration=False)

    result = lake.materialize(orders)
    assert materialized(result, "silver", "orders")["rows_read"] == appended > 0
    [accounted] = [e for e in result.get_asset_check_evaluations() if e.check_name == "bronze_rows_accounted"]
    assert accounted.passed
