"""Reconciliation of silver: every bronze row it consumed is accounted for, and it holds no key
the source has deleted."""

import dagster as dg
import polars as pl

from asset_checks import last_pass
from asset_checks.check import Check
from asset_checks.consumed_rows import consumed_rows_check
from asset_checks.row_checks import read_columns
from asset_checks.sample import sample
from lakehouse.bronze import deletes, tombstones
from lakehouse.bronze.assets import SOURCE_SEEN
from lakehouse.bronze.source_seen import SourceSeen
from lakehouse.resources import LakehouseStorage, SourceDatabase
from lakehouse.sources.contract import Contract
from lakehouse.storage import delta


def _digests(compared: pl.DataFrame) -> list[str]:
    """One digest per key range of its two summaries, the source's and silver's."""
    return [last_pass.digest(row) for row in compared.sort("range").drop("range").rows()]


def _bronze_summary(context: dg.AssetCheckExecutionContext, contract: Contract) -> deletes.SourceKeys | None:
    """The source's summary bronze's search for deletes took, while the source table's version
    is still the one it recorded."""
    source: SourceDatabase = context.resources.source
    event = context.instance.get_latest_materialization_event(dg.AssetKey(["bronze", contract.name]))
    recorded = event.asset_materialization.metadata if event and event.asset_materialization else {}
    seen = SourceSeen.from_json(recorded[SOURCE_SEEN].value) if SOURCE_SEEN in recorded else None
    if seen is None or seen.keys is None or seen.source != source.version(contract.source.table):
        return None
    return seen.keys


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
    taken = _bronze_summary(context, contract)
    if ranges is None:
        last = None
        # Cut as bronze cut its own, bronze's summary serves this pass and, recorded, the next.
        ranges = taken.ranges.extended_to(low, high) if taken else None
        ranges = ranges or deletes.KeyRanges.spanning(low, high)
    in_source = taken.over(ranges) if taken else None
    whose = "bronze's, of the same source version"
    if in_source is None:
        in_source, whose = deletes.source_summary(contract, source, name, ranges), "the source's"
    digests = _digests(deletes.side_by_side(in_source, deletes.summary(keys, name, ranges)))
    if last is not None:
        numbers = last_pass.changed(digests, last["digests"])
        how = "the key ranges whose summaries changed since the last pass"
    else:
        lakehouse: LakehouseStorage = context.resources.lakehouse
        bronze = delta.scan(lakehouse.table_uri("bronze", contract.name))
        live = tombstones.live_keys(bronze, contract).cast(dict(keys.schema))
        held = deletes.summary(tombstones.distinct_keys(pl.concat([live, keys])), name, ranges)
        numbers = deletes.differing(deletes.side_by_side(in_source, held))
        how = "the key ranges where the source differs from bronze's live keys and silver's"
    gone = deletes.gone_from(contract, source, keys, ranges, numbers)
    start = {"ranges": [ranges.low, ranges.width, ranges.count], "digests": digests}
    compared = {"compared": how, "source_summary": whose, "ranges": ranges.count, "ranges_read": len(numbers)}
    return gone, compared, start


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
        reads=(("silver", contract.name),),
        source=contract.source.table,
    )


def silver_reconciliation_checks(contract: Contract) -> list[Check]:
    """Bronze to silver, and silver back to the source (a database source only)."""
    if not contract.is_database:
        return [consumed_rows_check(contract)]
    return [consumed_rows_check(contract), _source_keys_check(contract)]
