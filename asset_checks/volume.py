"""Volume anomalies: a row count that moved outside the contract's band since the asset's
previous materialisation (a source that emptied, a load that doubled a table)."""

import dagster as dg

from asset_checks.check import Check
from lakehouse.sources.contract import Contract, Volume

ROW_COUNT = "dagster/row_count"


def _row_counts(instance: dg.DagsterInstance, key: dg.AssetKey) -> list[int]:
    """The row counts the asset's two latest materialisations reported, newest first."""
    records = instance.fetch_materializations(key, limit=2).records
    counts = []
    for record in records:
        materialization = record.asset_materialization
        if materialization and ROW_COUNT in materialization.metadata:
            counts.append(int(materialization.metadata[ROW_COUNT].value))  # type: ignore[arg-type]
    return counts


def _volume_check(contract: Contract, layer: str, band: Volume) -> Check:
    key = dg.AssetKey([layer, contract.name])

    def evaluate(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
        counts = _row_counts(context.instance, key)
        if len(counts) < 2 or counts[1] == 0:
            return dg.AssetCheckResult(
                passed=True,
                metadata={"rows": counts[0] if counts else 0, "note": "no earlier row count to compare"},
            )
        current, previous = counts
        change = (current - previous) / previous
        return dg.AssetCheckResult(
            passed=band.min_change <= change <= band.max_change,
            severity=dg.AssetCheckSeverity.WARN,
            metadata={
                "rows": current,
                "previous_rows": previous,
                "change": round(change, 6),
                "min_change": band.min_change,
                "max_change": band.max_change,
            },
        )

    description = (
        f"The row count moves by {band.min_change:+.0%} to {band.max_change:+.0%} per materialisation "
        "(WARN outside that band)."
    )
    return Check(key, "volume", description, evaluate, resources=frozenset())


def volume_checks(contract: Contract) -> list[Check]:
    """Volume checks on the contract's bronze and silver assets, when it sets a band."""
    band = contract.volume
    return [_volume_check(contract, layer, band) for layer in ("bronze", "silver")] if band else []
