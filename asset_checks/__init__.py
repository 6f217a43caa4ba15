"""Data-quality checks on the lakehouse's assets, registered in the one `Definitions`.

Row rules (Pandera, from the contracts and the gold keys), data freshness, volume anomalies,
reconciliation (nothing lost from the source to bronze to silver, gold money = silver's), and
the share of each load sent to quarantine, and the WAL a change-captured table's slot keeps.
"""

import dagster as dg

from asset_checks.bronze_reconciliation import bronze_reconciliation_checks
from asset_checks.check import per_asset
from asset_checks.freshness import freshness_checks
from asset_checks.quarantine import quarantine_checks
from asset_checks.revenue import revenue_checks
from asset_checks.row_checks import contract_checks, gold_checks
from asset_checks.silver_reconciliation import silver_reconciliation_checks
from asset_checks.slot_lag import slot_lag_checks
from asset_checks.volume import volume_checks
from lakehouse.gold.assets import attached_tables
from lakehouse.resources import Clock
from lakehouse.sources.contract import Contract

__all__ = ["Clock", "all_checks"]


def all_checks(contracts: list[Contract]) -> list[dg.AssetChecksDefinition]:
    """Every check: those each contract implies on its bronze and silver assets, and those of
    the gold tables the contracts feed, run in one step per asset."""
    gold = attached_tables(contracts)
    per_contract = [
        check
        for contract in contracts
        for checks in (
            contract_checks(contract),
            freshness_checks(contract),
            volume_checks(contract),
            bronze_reconciliation_checks(contract),
            silver_reconciliation_checks(contract),
            quarantine_checks(contract),
            slot_lag_checks(contract),
        )
        for check in checks
    ]
    return per_asset([*per_contract, *gold_checks(gold), *revenue_checks(gold)])
