"""The share of a load's bronze rows that silver sent to quarantine.

A fault that hits every row (a timestamp form the contract cannot read, a column whose type
changed at the source) sends most of a batch to quarantine, and every check on the rows left
in silver passes. This blocking check fails such a load, naming its commonest reasons.

The batch judged is silver's last load that consumed bronze rows: the bronze versions after
the one the load started from, up to silver's position, both read from silver's own commit.
A run that consumed nothing judges that same batch again (the tables are as they were, so the
result is too): a bad batch keeps failing until a load consumes newer rows. Silver left empty
by a bronze that holds rows fails as well.
"""

import dagster as dg
import polars as pl

from asset_checks.check import Check
from asset_checks.consumed_rows import NOTHING_CONSUMED
from asset_checks.row_checks import scan_columns
from asset_checks.sample import sample
from lakehouse.resources import LakehouseStorage
from lakehouse.silver.changes import bronze_identity, consumed_position, read_bronze_changes
from lakehouse.silver.load import BRONZE_VERSION, BRONZE_VERSION_BEFORE
from lakehouse.silver.validate import ERROR_COLUMN, ERROR_SEPARATOR
from lakehouse.sources.contract import Contract
from lakehouse.storage import delta

NAMED_REASONS = 5
# Silver's last load is among its newest commits: only orphan resolution and maintenance
# commit in between. The whole log is read only when it is not (a lake loaded before the
# commits named where their load started).
RECENT_COMMITS = 20


def load_started_from(silver: delta.DeltaTable, position: int) -> int | None:
    """The bronze version silver's load up to `position` started from; None: bronze's start."""
    for limit in (RECENT_COMMITS, None):
        for commit in silver.history(limit):
            version = commit.get(BRONZE_VERSION)
            if version is None:
                continue
            if int(version) < position:
                return int(version)
            before = commit.get(BRONZE_VERSION_BEFORE)
            if before is not None:
                return int(before) if before else None
    return None


def _batch(bronze_uri: str, since: int | None, position: int, identity: list[str]) -> pl.LazyFrame:
    """The identity of every bronze row committed after `since` up to `position`."""
    if since is None:
        return delta.scan(bronze_uri, version=position).select(identity)
    changes, _ = read_bronze_changes(bronze_uri, since, position)
    return changes.lazy().select(identity)


def _reasons(quarantined: pl.DataFrame) -> pl.DataFrame:
    """Rows per broken rule, commonest first (a row that broke two rules counts for both)."""
    return (
        quarantined.select(pl.col(ERROR_COLUMN).str.split(ERROR_SEPARATOR).alias("reason"))
        .explode("reason")
        .group_by("reason")
        .agg(rows=pl.len())
        .sort(["rows", "reason"], descending=[True, False])
    )


def _quarantine_rate_check(contract: Contract) -> Check:
    limit = contract.sla.max_quarantine_rate
    identity = bronze_identity(contract)

    def evaluate(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
        lakehouse: LakehouseStorage = context.resources.lakehouse
        loaded = consumed_position(lakehouse, contract.name)
        if loaded is None:
            return NOTHING_CONSUMED
        silver, position = loaded
        bronze_uri = lakehouse.table_uri("bronze", contract.name)
        since = load_started_from(silver, position)
        batch = _batch(bronze_uri, since, position, identity)
        quarantine = scan_columns(lakehouse.table_uri("quarantine", contract.name), [*identity, ERROR_COLUMN])
        consumed, quarantined = pl.collect_all(
            [
                batch.select(rows=pl.len()),
                quarantine.join(batch, on=identity, how="semi", nulls_equal=True)
                if quarantine.collect_schema().names()
                else batch.head(0).with_columns(pl.lit("", dtype=pl.String).alias(ERROR_COLUMN)),
            ],
            engine="streaming",
        )
        rows = consumed.item()
        rate = quarantined.height / rows if rows else 0.0
        silver_rows = delta.row_count(silver)
        bronze_rows = delta.row_count(delta.load_table(bronze_uri, position))
        reasons = _reasons(quarantined)
        empty = silver_rows == 0 and bronze_rows > 0
        passed = rate <= limit and not empty
        metadata = {
            "bronze_versions": f"{'start' if since is None else since + 1}..{position}",
            "rows_consumed": rows,
            "rows_quarantined": quarantined.height,
            "quarantine_rate": round(rate, 4),
            "max_quarantine_rate": limit,
            "silver_rows": silver_rows,
            "reasons": sample(reasons, NAMED_REASONS),
        }
        if passed:
            return dg.AssetCheckResult(passed=True, metadata=metadata)
        commonest = ", ".join(
            f"{reason} ({count})" for reason, count in reasons.head(NAMED_REASONS).iter_rows()
        )
        problem = (
            f"silver/{contract.name} is empty while bronze holds {bronze_rows} rows"
            if empty
            else f"{quarantined.height} of the {rows} bronze rows of the last load ({rate:.1%}) went to "
            f"quarantine, above the contract's sla.max_quarantine_rate {limit:g}"
        )
        return dg.AssetCheckResult(
            passed=False,
            description=f"{problem}; commonest reasons: {commonest or 'none'}",
            metadata={**metadata, "sample": sample(quarantined)},
        )

    return Check(
        dg.AssetKey(["silver", contract.name]),
        "quarantine_rate",
        f"At most {limit:g} of the bronze rows of silver's last load went to quarantine "
        "(sla.max_quarantine_rate), and silver is not empty while bronze holds rows.",
        evaluate,
        blocking=True,
        reads=tuple((layer, contract.name) for layer in ("bronze", "quarantine", "silver")),
    )


def quarantine_checks(contract: Contract) -> list[Check]:
    return [_quarantine_rate_check(contract)]
