"""Slot lag: the WAL a change-captured table's replication slot keeps on the source server.

A slot holds every WAL segment from its position on until it is advanced, so a lakehouse that
stops reading (runs failing, a schedule turned off, a contract removed without `lakehouse
source release`) fills the source's disk. Above `LAKEHOUSE_CDC_MAX_SLOT_LAG_BYTES` the check
fails and an alert goes to the alerts log and webhook.
"""

from datetime import UTC, datetime

import dagster as dg

from asset_checks.check import Check
from lakehouse.bronze.cdc_slot import capture_name, slot_lag
from lakehouse.resources import AlertSink, LakehouseStorage, SourceDatabase
from lakehouse.settings import SettingsError, setting
from lakehouse.sources.contract import Contract


def max_slot_lag_bytes() -> int:
    value = setting("LAKEHOUSE_CDC_MAX_SLOT_LAG_BYTES")
    if not value.isdigit():
        raise SettingsError(f"LAKEHOUSE_CDC_MAX_SLOT_LAG_BYTES must be a number of bytes, not '{value}'")
    return int(value)


def _slot_lag_check(contract: Contract) -> Check:
    key = dg.AssetKey(["bronze", contract.name])

    def evaluate(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
        source: SourceDatabase = context.resources.source
        lakehouse: LakehouseStorage = context.resources.lakehouse
        uri = lakehouse.table_uri("bronze", contract.name)
        limit = max_slot_lag_bytes()
        lag = slot_lag(contract, source, uri)
        slot = capture_name(contract, uri)
        if lag is None:
            return dg.AssetCheckResult(
                passed=True, metadata={"slot": slot, "note": "no slot yet: bronze has not read the stream"}
            )
        passed = lag <= limit
        if not passed:
            alerts: AlertSink = context.resources.alerts
            alerts.send(
                {
                    "at": datetime.now(UTC).isoformat(),
                    "kind": "slot_lag",
                    "asset": key.to_user_string(),
                    "slot": slot,
                    "slot_lag_bytes": lag,
                    "max_slot_lag_bytes": limit,
                    "message": f"replication slot {slot} on {source.label} keeps {lag} bytes of WAL, "
                    f"more than LAKEHOUSE_CDC_MAX_SLOT_LAG_BYTES={limit}: read the stream (materialise "
                    f"{key.to_user_string()}) or `lakehouse source release {contract.name}`",
                }
            )
        return dg.AssetCheckResult(
            passed=passed,
            severity=dg.AssetCheckSeverity.ERROR,
            metadata={
                "slot": slot,
                "slot_lag_bytes": dg.MetadataValue.int(lag),
                "max_slot_lag_bytes": dg.MetadataValue.int(limit),
            },
        )

    return Check(
        key,
        "slot_lag",
        "The WAL the table's replication slot keeps on the source server stays under "
        "LAKEHOUSE_CDC_MAX_SLOT_LAG_BYTES; above it the check fails and alerts.",
        evaluate,
        resources=frozenset({"source", "lakehouse", "alerts"}),
    )


def slot_lag_checks(contract: Contract) -> list[Check]:
    return [_slot_lag_check(contract)] if contract.is_cdc else []
