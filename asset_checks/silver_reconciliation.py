"""Reconciliation of silver: every bronze row it consumed is accounted for, and it holds no key
the source has deleted."""

import dagster as dg
import polars as pl

from asset_checks import last_pass
from asset_checks.check import Check
from asset_checks.row_checks import read_columns, scan_columns
from asset_checks.sample import sample
from lakehouse.bronze import deletes, tombstones
from lakehouse.bronze.columns import EXTRACTED_AT, LSN, OP
from lakehouse.resources import LakehouseStorage, SourceDatabase
from lakehouse.silver.changes import bronze_identity
from lakehouse.silver.validate import typed
from lakehouse.sources.contract import Contract
from lakehouse.storage import delta, ledger


def _silver_accounts_check(contract: Contract) -> Check:
    key = contract.primary_key
    # What orders a key's versions: the change stream's position, else the watermark.
    order = [LSN] if contract.is_cdc else [contract.watermark.column] if contract.watermark else []

    def evaluate(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
        lakehouse: LakehouseStorage = context.resources.lakehouse
        silver = delta.open_table(lakehouse.table_uri("silver", contract.name))
        position = ledger.read(silver, ledger.silver_position(contract.name))
        if position is None:
            return dg.AssetCheckResult(passed=True, metadata={"rows_consumed": 0, "note": "silver is empty"})
        identity = bronze_identity(contract)
        bronze = pl.scan_delta(lakehouse.table_uri("bronze", contract.name), version=position)
        events = [name for name in (OP, EXTRACTED_AT, LSN) if name in bronze.collect_schema()]
        consumed = bronze.select(list(dict.fromkeys([*identity, *key, *order, *events])))
        quarantine = read_columns(lakehouse.table_uri("quarantine", contract.name), identity)
        if quarantine.is_empty():
            quarantine = consumed.select(identity).head(0).collect()
        # A key whose last change is a tombstone must not be in silver; the versions before
        # the tombstone are accounted for by it.
        gone = tombstones.deleted_keys(consumed, contract).select(key)
        versions = tombstones.versions(consumed)
        unquarantined = versions.join(quarantine.lazy(), on=identity, how="anti", nulls_equal=True)
        kept = tombstones.standing(unquarantined, contract, consumed)
        valid = typed(kept, contract).select(*key, *order)
        current = scan_columns(lakehouse.table_uri("silver", contract.name), [*key, *order])
        # One streamed join of bronze's valid rows with silver's keys yields both kinds of
        # problem; only they and the counts are held, not the tables, so memory does not
        # grow with them.
        in_bronze, in_silver = pl.col("_in_bronze").is_not_null(), pl.col("_in_silver").is_not_null()
        lost = ~in_silver
        for column in order:
            lost = lost | (pl.col(f"{column}_silver") < pl.col(column))
        joined = valid.with_columns(_in_bronze=pl.lit(True)).join(
            current.with_columns(_in_silver=pl.lit(True)), on=key, how="full", coalesce=True, suffix="_silver"
        )
        counts, problems, undeleted = pl.collect_all(
            [
                pl.concat(
                    [
                        rows.select(rows=pl.len())
                        for rows in (consumed, versions, unquarantined, kept, current)
                    ]
                ),
                joined.filter(~in_bronze | lost),
                current.join(
                    gone.cast({name: current.collect_schema()[name] for name in key}), on=key, how="semi"
                ),
            ],
            engine="streaming",
        )
        consumed_rows, version_rows, unquarantined_rows, valid_rows, current_rows = counts.get_column(
            "rows"
        ).to_list()
        missing = problems.filter(in_bronze).select(*key, *order)
        unexplained = problems.filter(~in_bronze).select(
            *key, *(pl.col(f"{column}_silver").alias(column) for column in order)
        )
        merged = current_rows - unexplained.height
        return dg.AssetCheckResult(
            passed=missing.is_empty() and unexplained.is_empty() and undeleted.is_empty(),
            metadata={
                "bronze_version": position,
                "rows_consumed": consumed_rows,
                "rows_merged": merged,
                "rows_collapsed": valid_rows - missing.height - merged,
                "rows_quarantined": version_rows - unquarantined_rows,
                "tombstones": consumed_rows - version_rows,
                "rows_before_a_delete": unquarantined_rows - valid_rows,
                "rows_missing": missing.height,
                "silver_rows_without_bronze": unexplained.height,
                "silver_rows_deleted_in_bronze": undeleted.height,
                "sample": sample(
                    next((rows for rows in (missing, unexplained) if not rows.is_empty()), undeleted)
                ),
            },
        )

    return Check(
        dg.AssetKey(["silver", contract.name]),
        "bronze_rows_accounted",
        "Every bronze row silver has consumed is in silver (that version or a newer one), in quarantine "
        "or deleted by a later tombstone: consumed = merged + collapsed + quarantined + tombstones + rows "
        "before a delete; silver holds no row bronze lacks and no key bronze holds as deleted.",
        evaluate,
        blocking=True,
        reads=tuple((layer, contract.name) for layer in ("bronze", "quarantine", "silver")),
    )


def _digests(compared: pl.DataFrame) -> list[str]:
    """One digest per key range of its two summaries, the source's and silver's."""
    return [last_pass.digest(row) for row in compared.sort("range").drop("range").rows()]


def _gone_by_ranges(
    context: dg.AssetCheckExecutionContext, contract: Contract, silver: delta.DeltaTable, keys: pl.DataFrame
) -> tuple[pl.DataFrame, dict, dict]:
    """Silver's `keys` the source lacks, what was read to find them, and what the next pass
    starts from.

    Both sides are summarised per key range as bronze does to find deletes. Keys are read in
    the ranges whose two summaries differ from the last pass's; on a first pass, in those whose
    source summary differs from that of the keys bronze holds live and silver's together
    (silver alone lacks the quarantined keys, which would make every range differ)."""
    source: SourceDatabase = context.resources.source
    name = contract.primary_key[0]
    keys = keys.filter(pl.col(name).is_not_null())
    low, high = deletes.source_extent(contract, source, name)
    if low is None or high is None:
        return keys, {"compared": "every key: the source table is empty"}, {}
    low, high = min(low, keys[name].min()), max(high, keys[name].max())
    check = dg.AssetCheckKey(dg.AssetKey(["silver", contract.name]), "keys_in_source")
    last = last_pass.recorded(context, check, silver, additive=False)
    ranges = deletes.KeyRanges(*last["ranges"]).extended_to(low, high) if last else None
    if ranges is None:
        last, ranges = None, deletes.KeyRanges.spanning(low, high)
    in_source = deletes.source_summary(contract, source, name, ranges)
    digests = _digests(deletes.side_by_side(in_source, deletes.summary(keys, name, ranges)))
    if last is not None:
        numbers = [
            number
            for number, digest in enumerate(digests)
            if last["digests"][number : number + 1] != [digest]
        ]
        how = "the key ranges whose summaries changed since the last pass"
    else:
        lakehouse: LakehouseStorage = context.resources.lakehouse
        bronze = pl.scan_delta(lakehouse.table_uri("bronze", contract.name))
        live = tombstones.live_keys(bronze, contract).collect().cast(dict(keys.schema))
        held = deletes.summary(pl.concat([live, keys]).unique(), name, ranges)
        numbers = deletes.differing(deletes.side_by_side(in_source, held))
        how = "the key ranges where the source differs from bronze's live keys and silver's"
    gone = deletes.gone_from(contract, source, keys, ranges, numbers)
    start = {"ranges": [ranges.low, ranges.width, ranges.count], "digests": digests}
    return gone, {"compared": how, "ranges": ranges.count, "ranges_read": len(numbers)}, start


def _source_keys_check(contract: Contract) -> Check:
    """The other way: silver holds no key the source has deleted."""

    def evaluate(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
        source: SourceDatabase = context.resources.source
        lakehouse: LakehouseStorage = context.resources.lakehouse
        uri = lakehouse.table_uri("silver", contract.name)
        silver = delta.open_table(uri)
        keys = read_columns(uri, contract.primary_key)
        if silver is None or keys.is_empty():
            return dg.AssetCheckResult(passed=True, metadata={"keys_checked": 0, "note": "silver is empty"})
        start: dict = {}
        if deletes.ranged(contract, keys):
            gone, how, start = _gone_by_ranges(context, contract, silver, keys)
        else:
            gone, how = deletes.find_deletes(contract, source, keys).keys, {"compared": "every key"}
        found_deletes = contract.deletes != "never"
        description = None
        if not gone.is_empty():
            description = (
                f"silver/{contract.name} holds {gone.height:,} keys that source table "
                f"{contract.source.table} no longer has"
                + ("" if found_deletes else " (the contract says deletes: never)")
            )
        return dg.AssetCheckResult(
            passed=gone.is_empty(),
            severity=dg.AssetCheckSeverity.ERROR if found_deletes else dg.AssetCheckSeverity.WARN,
            description=description,
            metadata={
                "keys_checked": keys.height,
                "keys_not_in_source": gone.height,
                "deletes": str(contract.deletes),
                "sample": sample(gone),
                **how,
                **(last_pass.record(silver, **start) if start and gone.is_empty() else {}),
            },
        )

    return Check(
        dg.AssetKey(["silver", contract.name]),
        "keys_in_source",
        "Every key silver holds is still in the source (deletes reached silver); a warning only for "
        "a contract with `deletes: never`.",
        evaluate,
        resources=frozenset({"source", "lakehouse"}),
    )


def silver_reconciliation_checks(contract: Contract) -> list[Check]:
    """Bronze to silver, and silver back to the source (a database source only)."""
    if not contract.is_database:
        return [_silver_accounts_check(contract)]
    return [_silver_accounts_check(contract), _source_keys_check(contract)]
