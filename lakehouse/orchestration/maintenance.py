"""Delta maintenance: compaction (z-ordered where the contract asks), checkpoints and vacuum.

Every incremental run adds small files and log entries, and readers slow down as they pile up.
The weekly `maintenance` job rewrites each table's small files into files of about the target
size, checkpoints the log, and deletes the files that no version within the retention needs.

Compaction changes no data: its commit marks the files it writes and removes `dataChange=false`,
and bronze's change data feed, which silver reads from the bronze version it last consumed,
returns no rows for such commits, so silver never reads a compacted row twice. Vacuum keeps,
whatever the retention, the bronze files silver has yet to read (`versions_silver_needs`).
"""

import time
from dataclasses import dataclass

import dagster as dg
from deltalake import CommitProperties, DeltaTable
from deltalake.exceptions import CommitFailedError

from lakehouse.monitoring.logs import run_config
from lakehouse.orchestration import lanes
from lakehouse.resources import LakehouseStorage
from lakehouse.silver.changes import live_versions
from lakehouse.sources.contract import Contract
from lakehouse.storage import delta, ledger

JOB_NAME = "maintenance"
MIN_RETENTION_HOURS = 24
MEGABYTE = 1024 * 1024
Z_ORDER_KEY = "lakehouse.maintenance.z_order"


class MaintenanceConfig(dg.Config):
    target_size_mb: int = 128
    # A week of time travel. Below a day, a reader still on an older version (a long query, a
    # job that fell behind) could find its files deleted: the job refuses that.
    retention_hours: int = 168


@dataclass(frozen=True)
class Footprint:
    files: int
    bytes: int


@dataclass(frozen=True)
class TableMaintenance:
    before: Footprint
    after: Footprint
    files_vacuumed: int
    version: int
    seconds: float


def versions_silver_needs(bronze: DeltaTable, lakehouse: LakehouseStorage, contract: Contract) -> list[int]:
    """The bronze versions whose files silver will still read, whatever vacuum's retention.

    Silver's `bronze_rows_accounted` check reads bronze as of the version silver consumed last,
    and its next run reads, through the change feed, each later version no RESTORE has rolled
    back (`live_versions`). Those include compaction and vacuum commits, whose files silver does
    not need: keeping them costs little, and deciding here which commits silver skips would be a
    second copy of its rules.
    """
    silver = delta.open_table(lakehouse.table_uri("silver", contract.name))
    consumed = ledger.read(silver, ledger.silver_position(contract.name))
    if consumed is None:
        return []  # silver's first run reads the current version whole
    unread = live_versions(bronze, consumed, bronze.version())
    return [consumed, *(version for first, last in unread for version in range(first, last + 1))]


def maintain_table(
    table: DeltaTable, z_order: list[str], target_size: int, retention_hours: int, keep_versions: list[int]
) -> TableMaintenance:
    """Compact (z-ordered by `z_order` when given), checkpoint and vacuum one table."""
    started = time.monotonic()
    before = Footprint(*delta.footprint(table))
    if z_order:
        # delta-rs records only the strategy in the commit: the columns go into its metadata.
        properties = CommitProperties(custom_metadata={Z_ORDER_KEY: ",".join(z_order)})
        table.optimize.z_order(z_order, target_size=target_size, commit_properties=properties)
    else:
        table.optimize.compact(target_size=target_size)
    table.create_checkpoint()
    # delta-rs would refuse anything under the table's 7-day default; the job has its own floor.
    vacuumed = table.vacuum(
        retention_hours=retention_hours,
        dry_run=False,
        enforce_retention_duration=False,
        keep_versions=keep_versions or None,
    )
    seconds = time.monotonic() - started
    return TableMaintenance(
        before, Footprint(*delta.footprint(table)), len(vacuumed), table.version(), seconds
    )


def _observation(layer: str, name: str, done: TableMaintenance, z_order: list[str]) -> dg.AssetObservation:
    return dg.AssetObservation(
        asset_key=[layer, name],
        metadata={
            "files_before": dg.MetadataValue.int(done.before.files),
            "files_after": dg.MetadataValue.int(done.after.files),
            "bytes_before": dg.MetadataValue.int(done.before.bytes),
            "bytes_after": dg.MetadataValue.int(done.after.bytes),
            "files_removed_by_vacuum": dg.MetadataValue.int(done.files_vacuumed),
            "delta_version": dg.MetadataValue.int(done.version),
            "duration_seconds": dg.MetadataValue.float(round(done.seconds, 3)),
            "z_order": ", ".join(z_order) or "none",
        },
    )


def maintenance_job(contracts: list[Contract]) -> dg.JobDefinition:
    """Every Delta table under the lakehouse root, compacted, checkpointed and vacuumed."""
    by_name = {contract.name: contract for contract in contracts}

    @dg.op(description="Compact (z-order where the contract asks), checkpoint and vacuum every Delta table.")
    def maintain_tables(
        context: dg.OpExecutionContext, config: MaintenanceConfig, lakehouse: LakehouseStorage
    ) -> None:
        if config.retention_hours < MIN_RETENTION_HOURS:
            raise dg.Failure(
                f"retention_hours={config.retention_hours} is under the floor of {MIN_RETENTION_HOURS} h: "
                "vacuum could delete files that readers still on an older version need. No table was changed."
            )
        skipped = []
        for layer, name in lakehouse.tables():
            table = delta.open_table(lakehouse.table_uri(layer, name))
            if table is None:
                continue
            contract = by_name.get(name)
            layout = contract.maintenance if contract and layer in ("bronze", "silver") else None
            z_order = layout.z_order if layout else []
            keep = versions_silver_needs(table, lakehouse, contract) if contract and layer == "bronze" else []
            try:
                done = maintain_table(
                    table, z_order, config.target_size_mb * MEGABYTE, config.retention_hours, keep
                )
            except CommitFailedError as error:
                # A concurrent ingestion commit won: the table is left as that writer made it,
                # and next week's run compacts it.
                reason = f"a concurrent write committed first: {error}"
                skipped.append(f"{layer}/{name}")
                context.log.warning(f"{layer}/{name}: skipped, {reason}")
                context.log_event(dg.AssetObservation(asset_key=[layer, name], metadata={"skipped": reason}))
                continue
            context.log.info(
                f"{layer}/{name}: {done.before.files} -> {done.after.files} files, "
                f"{done.before.bytes} -> {done.after.bytes} bytes, z-order: {', '.join(z_order) or 'none'}, "
                f"{done.files_vacuumed} files vacuumed, version {done.version}, {done.seconds:.2f} s"
            )
            context.log_event(_observation(layer, name, done, z_order))
        if skipped:
            context.log.warning(f"{len(skipped)} tables skipped, to retry next run: {', '.join(skipped)}")

    @dg.job(
        name=JOB_NAME,
        description="Compact small files (z-ordered where the contract asks), checkpoint the logs and "
        "vacuum files older than the retention, in every Delta table of the lakehouse.",
        config=run_config(),
        tags=lanes.LAKE,
    )
    def maintenance() -> None:
        maintain_tables()

    return maintenance
