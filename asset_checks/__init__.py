"""Data-quality checks on the lakehouse's assets, registered in the one `Definitions`."""

from asset_checks.contract_rules import silver_checks
from asset_checks.reconciliation import bronze_checks

__all__ = ["bronze_checks", "silver_checks"]
