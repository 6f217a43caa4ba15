"""Data freshness: how old the newest value of the contract's freshness column is.

Dagster's freshness policies are evaluated by the daemon only, never in a run, so the age of
the data itself is an asset check: WARN past the contract's `warn_after`, ERROR past
`error_after`, with the age in hours in the metadata.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import dagster as dg
import polars as pl

from asset_checks import last_pass
from asset_checks.check import Check
from lakehouse.bronze.database import read_watermark
from lakehouse.resources import LakehouseStorage
from lakehouse.silver.validate import typed
from lakehouse.sources.contract import Contract, Freshness
from lakehouse.storage import delta, ledger

HOUR = timedelta(hours=1)


def newest(
    context: dg.AssetCheckExecutionContext, lakehouse: LakehouseStorage, contract: Contract, layer: str
) -> tuple[datetime | None, dict]:
    """The newest value of the freshness column (typed per contract: bronze may hold text), and
    what the next evaluation starts from.

    Bronze extracted by a watermark on that column has it committed with the rows: no row is
    read. Otherwise, while the table has only gained rows since the last evaluation, the newest
    value is the one it recorded or one of the files added since; else every row is read.
    """
    assert contract.freshness is not None
    column = contract.freshness.column
    uri = lakehouse.table_uri(layer, contract.name)
    table = delta.open_table(uri)
    if layer == "bronze" and contract.watermark and contract.watermark.column == column:
        return read_watermark(table, contract), {}
    if table is None or column not in delta.arrow_schema(table).names:
        return None, {}
    key = dg.AssetCheckKey(dg.AssetKey([layer, contract.name]), "freshness")
    last = last_pass.recorded(context, key, table, passed=False)
    read = None if last is None else delta.rows_since(table, uri, last["version"], [column])
    if read is not None:
        values = typed(read[0], contract).get_column(column)
        before = None if last["newest"] is None else ledger.moment(last["newest"])
        latest = max((value for value in (before, values.max()) if value is not None), default=None)
    else:
        values = pl.scan_delta(table).select(column).collect()
        latest = typed(values, contract).get_column(column).max()
    return latest, last_pass.record(table, newest=None if latest is None else ledger.micros(latest))  # type: ignore[arg-type]


def age_status(age: timedelta | None, freshness: Freshness) -> str:
    """'pass' within warn_after, 'warn' within error_after, else (or with no data) 'fail'."""
    if age is None or age > freshness.error_after:
        return "fail"
    return "pass" if age <= freshness.warn_after else "warn"


def _freshness_check(contract: Contract, layer: str) -> Check:
    freshness = contract.freshness
    assert freshness is not None

    def evaluate(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
        lakehouse: LakehouseStorage = context.resources.lakehouse
        now = context.resources.clock.current()
        latest, kept = newest(context, lakehouse, contract, layer)
        age = now - latest if latest else None
        status = age_status(age, freshness)
        return dg.AssetCheckResult(
            passed=status == "pass",
            severity=dg.AssetCheckSeverity.WARN if status == "warn" else dg.AssetCheckSeverity.ERROR,
            metadata={
                "newest": latest.isoformat() if latest else "no rows",
                "now": now.isoformat(),
                **({"age_hours": round(age / HOUR, 3)} if age is not None else {}),
                "warn_after_hours": freshness.warn_after / HOUR,
                "error_after_hours": freshness.error_after / HOUR,
                **kept,
            },
        )

    return Check(
        dg.AssetKey([layer, contract.name]),
        "freshness",
        f"The newest {freshness.column} is at most {freshness.warn_after / HOUR:g} h old (WARN after that, "
        f"ERROR after {freshness.error_after / HOUR:g} h).",
        evaluate,
        resources=frozenset({"lakehouse", "clock"}),
    )


def freshness_checks(contract: Contract) -> list[Check]:
    """Freshness of the contract's bronze and silver assets, when it names a freshness SLA."""
    return [_freshness_check(contract, layer) for layer in ("bronze", "silver") if contract.freshness]
