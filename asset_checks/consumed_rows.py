"""Reconciliation of silver with the bronze rows it consumed: every one is in silver (that version
or a newer one), in quarantine or deleted by a later tombstone, and silver holds no row bronze
does not explain.

The first evaluation compares every row. Later ones compare only the keys whose rows changed
since their last pass, since every finding is about one key's rows: the keys of the rows bronze
appended since (its change data feed), and those of the rows silver and quarantine gained or
lost since. Neither has a change data feed, and a MERGE rewrites whole files, so the files their
commits added are compared with those they removed, row by row. The record holds while the
code is the same, bronze has only gained rows and the removed files are still there to read
(vacuum keeps them a week by default); otherwise, or when most keys changed, every row is
compared again.
"""

from collections.abc import Callable
from dataclasses import dataclass

import dagster as dg
import polars as pl
from deltalake.exceptions import DeltaError

from asset_checks import last_pass
from asset_checks.check import Check
from asset_checks.sample import sample
from lakehouse.bronze import tombstones
from lakehouse.bronze.columns import EXTRACTED_AT, LSN, OP
from lakehouse.resources import LakehouseStorage
from lakehouse.silver.changes import bronze_identity, consumed_position, read_bronze_changes
from lakehouse.silver.validate import typed, typed_column
from lakehouse.sources.contract import Contract
from lakehouse.storage import delta, slices

NAME = "bronze_rows_accounted"
NOTHING_CONSUMED = dg.AssetCheckResult(passed=True, metadata={"rows_consumed": 0, "note": "silver is empty"})
# Silver rows compared at a time in a whole pass. Each slice scans bronze and silver again,
# pruned by the key's statistics, and holds its rows of both: 2M keeps 35M order lines under
# 1 GiB in 18 slices, and 8M events (longer bronze rows) at 1.2 GiB.
SLICE_ROWS = 2_000_000


@dataclass(frozen=True)
class _Tables:
    """What one evaluation reads: silver and quarantine as opened, and the bronze version silver
    has consumed."""

    silver: delta.DeltaTable
    quarantine: delta.DeltaTable | None
    bronze: delta.DeltaTable
    position: int


def _order(contract: Contract) -> list[str]:
    """What orders a key's versions: the change stream's position, else the watermark."""
    return [LSN] if contract.is_cdc else [contract.watermark.column] if contract.watermark else []


def _typed_keys(rows: pl.DataFrame, contract: Contract) -> pl.DataFrame:
    """Bronze's keys as silver holds them, in the contract's types."""
    return typed(rows.select(contract.primary_key), contract)


def _changed_keys(
    contract: Contract, lakehouse: LakehouseStorage, tables: _Tables, last: dict
) -> pl.DataFrame | None:
    """The keys, in the contract's types, whose rows bronze, silver or quarantine changed since
    the `last` pass; None when its record no longer holds."""
    key, order = contract.primary_key, _order(contract)
    quarantined = last["quarantine"]
    if (
        last["bronze"] != tables.bronze.metadata().id
        or last["position"] > tables.position
        or not last_pass.only_added(tables.bronze, last["position"])
        or not last_pass.still_held(tables.quarantine, quarantined)
    ):
        return None
    try:
        appended, _ = read_bronze_changes(
            lakehouse.table_uri("bronze", contract.name), last["position"], tables.position, columns=key
        )
    except (OSError, DeltaError):
        return None  # vacuum has deleted files of those commits, after a compaction
    silver = delta.rows_changed(
        lakehouse.table_uri("silver", contract.name), tables.silver, last["version"], [*key, *order]
    )
    if silver is None:
        return None
    changed = [_typed_keys(appended, contract), silver.select(key)]
    if tables.quarantine is not None:
        since = None if quarantined is None else quarantined[1]
        columns = list(dict.fromkeys([*bronze_identity(contract), *key]))
        rows = delta.rows_changed(
            lakehouse.table_uri("quarantine", contract.name), tables.quarantine, since, columns
        )
        if rows is None:
            return None
        changed.append(_typed_keys(rows, contract))
    return pl.concat(changed, how="vertical_relaxed").unique()


def _of_keys(rows: pl.LazyFrame, keys: pl.DataFrame, contract: Contract) -> pl.LazyFrame:
    """The rows whose key, in the contract's types, is one of `keys`.

    A range on the first key column comes first: Parquet's statistics skip the files and row
    groups outside it when the rows store the key as silver does."""
    key, schema = contract.primary_key, rows.collect_schema()
    first = keys.get_column(key[0])
    if schema[key[0]] == first.dtype and first.null_count() == 0:
        rows = rows.filter(pl.col(key[0]).is_between(pl.lit(first.min()), pl.lit(first.max())))
    aliases = {name: f"_typed_{name}" for name in key}
    return (
        rows.with_columns(
            typed_column(name, schema[name], contract).alias(alias) for name, alias in aliases.items()
        )
        .join(keys.rename(aliases).lazy(), on=list(aliases.values()), how="semi", nulls_equal=True)
        .drop(aliases.values())
    )


@dataclass(frozen=True)
class _Accounts:
    counts: dict[str, int]
    missing: pl.DataFrame
    unexplained: pl.DataFrame
    undeleted: pl.DataFrame

    @property
    def passed(self) -> bool:
        return self.missing.is_empty() and self.unexplained.is_empty() and self.undeleted.is_empty()

    @classmethod
    def added(cls, parts: list["_Accounts"]) -> "_Accounts":
        """The accounts of disjoint sets of keys, together."""
        return cls(
            {name: sum(part.counts[name] for part in parts) for name in parts[0].counts},
            pl.concat([part.missing for part in parts]),
            pl.concat([part.unexplained for part in parts]),
            pl.concat([part.undeleted for part in parts]),
        )


def _in_slice(
    cuts: list, number: int, contract: Contract, key_type: pl.DataType
) -> Callable[[pl.LazyFrame], pl.LazyFrame]:
    """Rows whose first key column, in the contract's type `key_type`, is in slice `number` of
    those `cuts` make: on the column as stored when that is the type (pruned by its statistics)."""

    def restrict(rows: pl.LazyFrame) -> pl.LazyFrame:
        name = contract.primary_key[0]
        stored = rows.collect_schema()[name]
        column = pl.col(name) if stored == key_type else typed_column(name, stored, contract)
        return rows.filter(slices.bounds(column, cuts)[number])

    return restrict


def _account(
    contract: Contract, lakehouse: LakehouseStorage, tables: _Tables, keys: pl.DataFrame | None
) -> _Accounts:
    """Bronze's rows up to silver's position against quarantine and silver: those of `keys`, or
    all of them, a slice of silver's key ranges at a time, so that memory follows the slice."""
    if keys is not None:
        return _account_of(contract, lakehouse, tables, lambda rows: _of_keys(rows, keys, contract))
    name = contract.primary_key[0]
    silver = pl.scan_delta(tables.silver)
    cuts = slices.key_cuts(silver, name, SLICE_ROWS)
    key_type = silver.collect_schema()[name]
    return _Accounts.added(
        [
            _account_of(contract, lakehouse, tables, _in_slice(cuts, number, contract, key_type))
            for number in range(len(cuts) + 1)
        ]
    )


def _account_of(
    contract: Contract,
    lakehouse: LakehouseStorage,
    tables: _Tables,
    restrict: Callable[[pl.LazyFrame], pl.LazyFrame],
) -> _Accounts:
    """`_account` of the rows of bronze, silver and quarantine that `restrict` keeps, which must
    keep all of a key's rows or none."""
    key, order, identity = contract.primary_key, _order(contract), bronze_identity(contract)
    bronze = delta.scan(lakehouse.table_uri("bronze", contract.name), version=tables.position)
    events = [name for name in (OP, EXTRACTED_AT, LSN) if name in bronze.collect_schema()]
    consumed = bronze.select(list(dict.fromkeys([*identity, *key, *order, *events])))
    current = pl.scan_delta(tables.silver).select(*key, *order)
    held = list(dict.fromkeys([*identity, *key]))
    quarantine = (
        consumed.select(held).head(0)
        if tables.quarantine is None
        else pl.scan_delta(tables.quarantine).select(held)
    )
    # Read once: each of the queries below would otherwise scan and restrict them again, each
    # scan holding its own copy of the restriction's keys.
    consumed, current, quarantine = (
        rows.lazy()
        for rows in pl.collect_all(
            [restrict(consumed), restrict(current), restrict(quarantine).select(identity)], engine="streaming"
        )
    )
    # A key whose last change is a tombstone must not be in silver; the versions before
    # the tombstone are accounted for by it.
    gone = tombstones.deleted_keys(consumed, contract).select(key)
    versions = tombstones.versions(consumed)
    unquarantined = versions.join(quarantine, on=identity, how="anti", nulls_equal=True)
    kept = tombstones.standing(unquarantined, contract, consumed)
    valid = typed(kept, contract).select(*key, *order)
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
                [rows.select(rows=pl.len()) for rows in (consumed, versions, unquarantined, kept, current)]
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
    return _Accounts(
        {
            "rows_consumed": consumed_rows,
            "rows_merged": merged,
            "rows_collapsed": valid_rows - missing.height - merged,
            "rows_quarantined": version_rows - unquarantined_rows,
            "tombstones": consumed_rows - version_rows,
            "rows_before_a_delete": unquarantined_rows - valid_rows,
            "rows_missing": missing.height,
            "silver_rows_without_bronze": unexplained.height,
            "silver_rows_deleted_in_bronze": undeleted.height,
        },
        missing,
        unexplained,
        undeleted,
    )


def consumed_rows_check(contract: Contract) -> Check:
    """`bronze_rows_accounted` on a contract's silver table."""
    asset = dg.AssetKey(["silver", contract.name])

    def evaluate(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
        lakehouse: LakehouseStorage = context.resources.lakehouse
        loaded = consumed_position(lakehouse, contract.name)
        if loaded is None:
            return NOTHING_CONSUMED
        silver, position = loaded
        tables = _Tables(
            silver,
            delta.open_table(lakehouse.table_uri("quarantine", contract.name)),
            delta.load_table(lakehouse.table_uri("bronze", contract.name)),
            position,
        )
        last = last_pass.recorded(context, dg.AssetCheckKey(asset, NAME), silver, additive=False)
        keys = _changed_keys(contract, lakehouse, tables, last) if last else None
        if keys is not None and keys.height > delta.row_count(silver) / 2:
            keys = None
        accounts = _account(contract, lakehouse, tables, keys)
        how = (
            {"compared": "every bronze row silver has consumed"}
            if keys is None
            else {"compared": "the keys whose rows changed since the last pass", "keys_compared": keys.height}
        )
        return dg.AssetCheckResult(
            passed=accounts.passed,
            metadata={
                "bronze_version": position,
                **accounts.counts,
                "sample": sample(
                    next(
                        (rows for rows in (accounts.missing, accounts.unexplained) if not rows.is_empty()),
                        accounts.undeleted,
                    )
                ),
                **how,
                **(
                    last_pass.record(
                        silver,
                        position=position,
                        bronze=tables.bronze.metadata().id,
                        quarantine=last_pass.held(tables.quarantine),
                    )
                    if accounts.passed
                    else {}
                ),
            },
        )

    return Check(
        asset,
        NAME,
        "Every bronze row silver has consumed is in silver (that version or a newer one), in quarantine "
        "or deleted by a later tombstone: consumed = merged + collapsed + quarantined + tombstones + rows "
        "before a delete; silver holds no row bronze lacks and no key bronze holds as deleted.",
        evaluate,
        blocking=True,
        reads=tuple((layer, contract.name) for layer in ("bronze", "quarantine", "silver")),
    )
