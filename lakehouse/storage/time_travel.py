"""Time travel on the lakehouse's tables: what each version did, and rolling back a bad load.

A Delta RESTORE brings back the files of an older version but not its app transactions, and
those are this lakehouse's ledgers: bronze's watermark and ingested files, silver's bronze
position, gold's positions. Left ahead, they would make the next run skip exactly what was
rolled back. `restore` therefore sets every marker written since that version back to its
value there, in the restore's own commit, so the table and its ledger move together.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from deltalake import CommitProperties, Transaction

from lakehouse.resources import LakehouseStorage
from lakehouse.storage import delta, ledger

# delta-rs names the row counts of each operation differently.
ROWS_ADDED = ("num_added_rows", "num_target_rows_inserted")
ROWS_UPDATED = ("num_target_rows_updated",)
ROWS_REMOVED = ("num_target_rows_deleted", "num_deleted_rows")


class RestoreError(ValueError):
    """A restore that would leave the lakehouse inconsistent, refused before any change."""


@dataclass(frozen=True)
class Restored:
    version: int  # the restore's own commit
    restored_to: int
    markers: dict[str, int | None]  # ledger markers reset, with their value at `restored_to`


def _metric(metrics: dict[str, Any], names: tuple[str, ...]) -> int | None:
    return next((int(metrics[name]) for name in names if name in metrics), None)


def history(uri: str, limit: int | None = None) -> list[dict[str, Any]]:
    """The table's versions, newest first: when, what operation, rows changed, by which run."""
    rows = []
    for commit in delta.load_table(uri).history(limit):
        metrics = commit.get("operationMetrics", {})
        rows.append(
            {
                "version": commit["version"],
                "time": datetime.fromtimestamp(commit["timestamp"] / 1000, UTC).isoformat(timespec="seconds"),
                "operation": commit["operation"],
                "rows_added": _metric(metrics, ROWS_ADDED),
                "rows_updated": _metric(metrics, ROWS_UPDATED),
                "rows_removed": _metric(metrics, ROWS_REMOVED),
                "restored_to": commit.get("operationParameters", {}).get("version")
                if commit["operation"] == "RESTORE"
                else None,
                "run_id": commit.get("lakehouse.run_id"),
            }
        )
    return rows


def consumer_position(lakehouse: LakehouseStorage, layer: str, name: str) -> tuple[str, int] | None:
    """Silver's position in this bronze table: how far a restore (or a repair) of bronze may go back."""
    if layer != "bronze":
        return None
    silver = delta.open_table(lakehouse.table_uri("silver", name))
    position = ledger.read(silver, ledger.silver_position(name))
    return None if position is None else (f"silver/{name}", position)


def restore(lakehouse: LakehouseStorage, layer: str, name: str, version: int) -> Restored:
    """Roll `layer/name` back to `version`, with its ledger markers as they were there."""
    uri = lakehouse.table_uri(layer, name)
    table = delta.open_table(uri)
    if table is None:
        raise RestoreError(f"{layer}/{name} does not exist at {uri}")
    current = table.version()
    if not 0 <= version < current:
        raise RestoreError(
            f"{layer}/{name} is at version {current}: restore to a version from 0 to {current - 1}"
        )
    consumer = consumer_position(lakehouse, layer, name)
    if consumer is not None and consumer[1] > version:
        raise RestoreError(
            f"{consumer[0]} has consumed {layer}/{name} up to version {consumer[1]}: restore "
            f"{consumer[0]} first to a version that consumed at most {version} "
            f"(see `lakehouse table history {consumer[0]}`)"
        )
    then = delta.load_table(uri, version)
    markers = {key: ledger.read(then, key) for key in sorted(ledger.keys_written(uri, version, current))}
    table.restore(
        version,
        commit_properties=CommitProperties(
            custom_metadata={"lakehouse.restored_to": str(version)},
            app_transactions=[
                Transaction(app_id=key, version=ledger.UNSET if value is None else value)
                for key, value in markers.items()
            ],
        ),
    )
    return Restored(delta.load_table(uri).version(), version, markers)
