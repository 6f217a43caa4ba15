"""Silver assets, one per dataset contract, with the dataset's quarantine (and history)."""

import time
from typing import Any

import dagster as dg

from lakehouse.orchestration import metadata
from lakehouse.resources import LakehouseStorage, PiiHasher
from lakehouse.silver.load import load_silver
from lakehouse.silver.orphans import Orphans
from lakehouse.sources.contract import Contract
from lakehouse.storage import delta
from lakehouse.storage.merge import MergeCounts

KINDS = {"deltalake", "polars"}
ORPHANS_CHECKED_AGAINST = "orphans_checked_against"


def _table_metadata(lakehouse: LakehouseStorage, layer: str, name: str) -> dict[str, Any]:
    return metadata.table_metadata(delta.open_table(lakehouse.table_uri(layer, name)))


def _merge_metadata(counts: MergeCounts | None) -> dict[str, int]:
    if counts is None:
        return {"rows_inserted": 0, "rows_updated": 0, "rows_unchanged": 0, "rows_deleted": 0}
    return {
        "rows_inserted": counts.inserted,
        "rows_updated": counts.updated,
        "rows_unchanged": counts.unchanged,
        "rows_deleted": counts.deleted,
    }


def _freshness_policy(contract: Contract) -> dg.FreshnessPolicy | None:
    """The UI's freshness status (evaluated by the daemon): the table must have been updated
    within the contract's ages; the `freshness` check judges the data itself."""
    if contract.freshness is None:
        return None
    return dg.FreshnessPolicy.time_window(
        fail_window=contract.freshness.error_after, warn_window=contract.freshness.warn_after
    )


def _silver_asset(contract: Contract) -> dg.AssetsDefinition:
    name = contract.name
    parents = sorted({spec.references.split(".")[0] for spec in contract.columns.values() if spec.references})
    specs = [
        dg.AssetSpec(
            ["silver", name],
            deps=[["bronze", name], *(["silver", parent] for parent in parents)],
            kinds=KINDS,
            description=f"Validated, typed, deduplicated current state. {contract.description}",
            freshness_policy=_freshness_policy(contract),
        ),
        dg.AssetSpec(
            ["quarantine", name],
            deps=[["bronze", name]],
            kinds=KINDS,
            description=f"Bronze {name} rows that broke a contract rule, or (append-only) repeat a key "
            "with other content: the row as it came, with `_error` naming every rule broken.",
        ),
    ]
    if contract.history == "scd2":
        specs.append(
            dg.AssetSpec(
                ["silver", f"{name}_history"],
                deps=[["bronze", name]],
                kinds=KINDS,
                description=f"Every change of a {name} record's attributes (SCD2) with valid_from, "
                "valid_to and is_current.",
            )
        )

    # One load writes all three tables (the rows it rejects belong to the same Delta version of
    # bronze), so selecting any of them runs the whole load and reports the selected ones.
    @dg.multi_asset(name=f"silver_{name}", group_name="silver", specs=specs, can_subset=True)
    def silver_table(context: dg.AssetExecutionContext, lakehouse: LakehouseStorage, pii: PiiHasher):
        started = time.monotonic()
        if pii.uses_development_salt:
            context.log.warning(
                "PII is hashed with the development salt: set LAKEHOUSE_PII_SALT in production"
            )
        previous = context.instance.get_latest_materialization_event(dg.AssetKey(["silver", name]))
        recorded = previous.asset_materialization.metadata if previous else {}
        seen = (
            Orphans(int(recorded["orphans"].value), str(recorded[ORPHANS_CHECKED_AGAINST].value))
            if ORPHANS_CHECKED_AGAINST in recorded and "orphans" in recorded
            else None
        )
        load = load_silver(contract, lakehouse, pii, context.run.run_id, orphans=seen)
        context.log.info(
            f"silver/{name}: {load.rows_read} bronze rows (version {load.bronze_version_before} -> "
            f"{load.bronze_version}), {load.rows_quarantined} quarantined, "
            f"{load.duplicates_collapsed} duplicates collapsed, {load.conflicting_duplicates} duplicate keys "
            f"with other content quarantined, {_merge_metadata(load.silver)}"
        )
        selected = context.selected_asset_keys
        if dg.AssetKey(["silver", name]) in selected:
            yield dg.MaterializeResult(
                asset_key=["silver", name],
                metadata={
                    **_table_metadata(lakehouse, "silver", name),
                    **metadata.elapsed(started),
                    "rows_read": load.rows_read,
                    **_merge_metadata(load.silver),
                    "duplicates_collapsed": load.duplicates_collapsed,
                    "tombstones": load.tombstones,
                    "rows_before_a_delete": load.rows_before_a_delete,
                    "rows_quarantined": load.rows_quarantined,
                    "conflicting_duplicates": load.conflicting_duplicates,
                    "orphans": load.orphans.count,
                    # What lets the next load take that count while nothing changed (orphans.py).
                    ORPHANS_CHECKED_AGAINST: load.orphans.checked_against,
                    "bronze_version_before": str(load.bronze_version_before),
                    "bronze_version_after": str(load.bronze_version),
                    "pii_salt": "development default" if pii.uses_development_salt else "LAKEHOUSE_PII_SALT",
                },
            )
        if dg.AssetKey(["quarantine", name]) in selected:
            yield dg.MaterializeResult(
                asset_key=["quarantine", name],
                metadata={
                    **_table_metadata(lakehouse, "quarantine", name),
                    **metadata.elapsed(started),
                    "rows_quarantined": load.rows_quarantined,
                },
            )
        if dg.AssetKey(["silver", f"{name}_history"]) in selected:
            yield dg.MaterializeResult(
                asset_key=["silver", f"{name}_history"],
                metadata={
                    **_table_metadata(lakehouse, "silver", f"{name}_history"),
                    **metadata.elapsed(started),
                    **_merge_metadata(load.history),
                    "versions_closed_by_deletes": load.history_closed,
                },
            )

    return silver_table


def silver_assets(contracts: list[Contract]) -> list[dg.AssetsDefinition]:
    return [_silver_asset(contract) for contract in contracts]
