"""Bronze assets, one per dataset contract: raw, append-only Delta copies of the sources."""

import time

import dagster as dg

from lakehouse.bronze.cdc import capture
from lakehouse.bronze.cdc_slot import lsn_text
from lakehouse.bronze.database import extract_table, unchanged
from lakehouse.bronze.landing import ingest_files
from lakehouse.bronze.live_keys import LiveKeys
from lakehouse.bronze.source_seen import SourceSeen, contract_digest
from lakehouse.orchestration import metadata
from lakehouse.resources import LakehouseStorage, LandingZone, SourceDatabase
from lakehouse.settings import seconds
from lakehouse.sources.contract import Contract
from lakehouse.storage import delta

LISTED_FILES = 20
# The materialization metadata a run leaves for the next one.
LIVE_KEYS = "live_keys"
SOURCE_SEEN = "source_seen"


def landing_retries() -> dg.RetryPolicy:
    """Landing files meet flaky mounts: the step is retried, backing off with jitter. Database
    steps have no step retries: the source retries each query that failed for a passing reason
    (see lakehouse/sources/errors.py), and a second layer would multiply those retries and
    repeat failures that can never succeed."""
    return dg.RetryPolicy(
        max_retries=3,
        delay=seconds("LAKEHOUSE_LANDING_RETRY_SECONDS"),
        backoff=dg.Backoff.EXPONENTIAL,
        jitter=dg.Jitter.PLUS_MINUS,
    )


def _database_asset(contract: Contract) -> dg.AssetsDefinition:
    @dg.asset(
        key=["bronze", contract.name],
        group_name="bronze",
        kinds={"deltalake", "polars"},
        description=(
            "Every change of the source rows (insert, update, delete, with its LSN), read from "
            "PostgreSQL's change stream, append-only. "
            if contract.is_cdc
            else "Every extracted version of source rows, append-only. "
        )
        + contract.description,
        tags={"lakehouse/source": "database"},
    )
    def bronze_table(
        context: dg.AssetExecutionContext, source: SourceDatabase, lakehouse: LakehouseStorage
    ) -> dg.MaterializeResult:
        started = time.monotonic()
        if contract.is_cdc:
            return _capture_result(context, contract, source, lakehouse, started)
        previous = context.instance.get_latest_materialization_event(context.asset_key)
        recorded = previous.asset_materialization.metadata if previous else {}
        carried = LiveKeys.from_json(recorded[LIVE_KEYS].value) if LIVE_KEYS in recorded else None
        seen = SourceSeen.from_json(recorded[SOURCE_SEEN].value) if SOURCE_SEEN in recorded else None
        uri = lakehouse.table_uri("bronze", contract.name)
        # Read before anything else is: a change from here on makes the next run read.
        version = source.version(contract.source.table)
        table = delta.open_table(uri)
        if seen is not None and table is not None and seen.holds(version, table, contract):
            result = unchanged(contract, table, seen, carried)
        else:
            result = extract_table(contract, source, uri, context.run.run_id, carried=carried)
            seen = None
            if version is not None and result.whole_source and result.table is not None:
                bronze = delta.last_row_change(result.table)
                digest, unwatermarked = contract_digest(contract), result.rows_without_watermark
                seen = SourceSeen(version, bronze, digest, unwatermarked, result.source_keys)
        context.log.info(
            f"bronze/{contract.name}: read {result.rows_read} rows, appended {result.rows_appended}, "
            f"watermark {result.watermark_before} -> {result.watermark_after}, "
            f"deletes: {result.deletes_checked}"
        )
        if result.rows_without_watermark:
            context.log.warning(
                f"bronze/{contract.name}: {result.rows_without_watermark} rows of {contract.source.table} "
                f"have no {contract.watermark.column} and cannot be extracted until they get one"
            )
        return dg.MaterializeResult(
            metadata={
                **metadata.table_metadata(result.table),
                **metadata.elapsed(started),
                "rows_read": result.rows_read,
                "rows_appended": result.rows_appended,
                "rows_deleted": result.rows_deleted,
                "deletes_checked": result.deletes_checked,
                "watermark_before": str(result.watermark_before),
                "watermark_after": str(result.watermark_after),
                "added_columns": ", ".join(result.added_columns) or "none",
                "rows_without_watermark": result.rows_without_watermark,
                # Where the next run's search for deletes starts (lakehouse/bronze/live_keys.py).
                **(
                    {LIVE_KEYS: dg.MetadataValue.json(result.live_keys.as_json())} if result.live_keys else {}
                ),
                # What lets the next run skip a source that has not changed (source_seen.py).
                **({SOURCE_SEEN: dg.MetadataValue.json(seen.as_json())} if seen else {}),
            }
        )

    return bronze_table


def _capture_result(
    context: dg.AssetExecutionContext,
    contract: Contract,
    source: SourceDatabase,
    lakehouse: LakehouseStorage,
    started: float,
) -> dg.MaterializeResult:
    """Read the table's change stream into bronze (lakehouse/bronze/cdc.py) and report it."""
    result = capture(contract, source, lakehouse.table_uri("bronze", contract.name), context.run.run_id)
    for warning in result.warnings:
        context.log.warning(warning)
    context.log.info(
        f"bronze/{contract.name}: appended {result.rows_appended} rows ({result.snapshot_rows} from a "
        f"snapshot, {result.inserted} inserts, {result.updated} updates, {result.deleted} deletes), "
        f"LSN {lsn_text(result.lsn_before)} -> {lsn_text(result.lsn_after)}, slot lag "
        f"{result.slot_lag_bytes} bytes"
    )
    return dg.MaterializeResult(
        metadata={
            **metadata.table_metadata(result.table),
            **metadata.elapsed(started),
            "rows_read": result.snapshot_rows + result.inserted + result.updated + result.deleted,
            "rows_appended": result.rows_appended,
            "snapshot_rows": result.snapshot_rows,
            # Changes, as silver names its own counts; a truncate's tombstones count as deletes.
            "rows_inserted": result.inserted,
            "rows_updated": result.updated,
            "rows_deleted": result.deleted,
            "lsn_before": lsn_text(result.lsn_before),
            "lsn_after": lsn_text(result.lsn_after),
            "slot_lag_bytes": dg.MetadataValue.int(result.slot_lag_bytes or 0),
            "warnings": "; ".join(result.warnings) or "none",
        }
    )


def _landing_asset(contract: Contract) -> dg.AssetsDefinition:
    quarantine_name = f"{contract.name}_malformed"

    # One ingestion writes both tables (a file is done once all its lines are in one or the other),
    # so selecting either runs the whole ingestion and reports the selected ones.
    @dg.multi_asset(
        name=f"bronze_{contract.name}",
        group_name="bronze",
        retry_policy=landing_retries(),
        can_subset=True,
        specs=[
            dg.AssetSpec(
                ["bronze", contract.name],
                kinds={"deltalake", "polars"},
                description=f"Every line of the landing files that is a JSON object, fields as text "
                f"(keys the contract does not name per its extra_keys rule). {contract.description}",
                tags={"lakehouse/source": "landing"},
            ),
            dg.AssetSpec(
                ["quarantine", quarantine_name],
                kinds={"deltalake", "polars"},
                description=f"Lines of {contract.name} landing files that bronze cannot store (not JSON "
                "objects, keys naming bronze's own columns or differing only in case), with file, line "
                "number, raw text and reason.",
            ),
        ],
    )
    def bronze_files(context: dg.AssetExecutionContext, landing: LandingZone, lakehouse: LakehouseStorage):
        started = time.monotonic()
        result = ingest_files(
            contract,
            landing.location,
            lakehouse.table_uri("bronze", contract.name),
            lakehouse.table_uri("quarantine", quarantine_name),
            f"landing:{contract.source.glob}",
            context.run.run_id,
        )
        context.log.info(
            f"bronze/{contract.name}: {len(result.files)} files, {result.rows_appended} rows, "
            f"{result.lines_quarantined} lines quarantined, {result.files_waiting} files wait for the next"
            f" run, {len(result.files_settling)} are still being written"
        )
        if dg.AssetKey(["bronze", contract.name]) in context.selected_asset_keys:
            yield dg.MaterializeResult(
                asset_key=["bronze", contract.name],
                metadata={
                    **metadata.table_metadata(result.table),
                    **metadata.elapsed(started),
                    "files_ingested": len(result.files),
                    "files_waiting": result.files_waiting,
                    "files_settling": len(result.files_settling),
                    "lines_read": result.lines_read,
                    "rows_appended": result.rows_appended,
                    "rows_quarantined": result.lines_quarantined,
                    "files": dg.MetadataValue.md(
                        "\n".join(f"- {name}" for name in result.files[:LISTED_FILES])
                        + (
                            f"\n- ... and {len(result.files) - LISTED_FILES} more"
                            if len(result.files) > LISTED_FILES
                            else ""
                        )
                        or "none"
                    ),
                    "added_columns": ", ".join(result.added_columns) or "none",
                },
            )
        if dg.AssetKey(["quarantine", quarantine_name]) in context.selected_asset_keys:
            yield dg.MaterializeResult(
                asset_key=["quarantine", quarantine_name],
                metadata={
                    **metadata.table_metadata(result.quarantine),
                    **metadata.elapsed(started),
                    "rows_quarantined": result.lines_quarantined,
                },
            )

    return bronze_files


def bronze_assets(contracts: list[Contract]) -> list[dg.AssetsDefinition]:
    return [_database_asset(c) if c.is_database else _landing_asset(c) for c in contracts]
