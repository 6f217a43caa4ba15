"""Finding the rows a source database deleted: its keys against the keys bronze holds live.

Watermark extraction reads every row that changed and never one that is gone, so each run
(or each run on the contract's cadence) compares keys. Cost follows the change, not the
table: for a key of one integer column, both sides are summarised per range of
`RANGE_WIDTH` key values (rows, and two sums of the keys modulo a prime), the source's in
SQL, so that only the summaries cross the wire; keys are read only for the ranges whose
summaries differ. A key of another type, or of several columns, is compared whole.

A range also differs when the source holds keys bronze does not have yet (inserted since the
extraction, or without a watermark): its keys are read, and only those gone are deletes.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import polars as pl

from lakehouse import ledger
from lakehouse.contract import Contract, DeleteCadence
from lakehouse.source import SourceDatabase, reading
from lakehouse.sql import qualified, quoted

RANGE_WIDTH = 1 << 16
PRIME = 1_000_003
SUMMARY = ("rows", "sum", "squares")


@dataclass(frozen=True)
class Deletes:
    """The keys bronze holds live that the source no longer has, and what finding them took."""

    keys: pl.DataFrame
    ranges_compared: int  # 0: compared whole
    ranges_read: int


def due(contract: Contract, checked: int | None, now: datetime) -> bool:
    """Whether this run looks for deletes: `checked` is when bronze last did (microseconds
    since the epoch, from its ledger)."""
    if contract.deletes == "never":
        return False
    if not isinstance(contract.deletes, DeleteCadence) or checked is None:
        return True
    return now - ledger.moment(checked) >= contract.deletes.every


def describe(contract: Contract, found: Deletes | None, first_load: bool) -> str:
    """How a run looked for deletes, or why it did not, for its metadata."""
    if found is not None:
        how = (
            f"compared key ranges: {found.ranges_compared}, read the keys of {found.ranges_read}"
            if found.ranges_compared
            else "compared every key"
        )
        return f"{how}: {found.keys.height} deleted"
    if contract.deletes == "never":
        return "off (deletes: never)"
    if first_load:
        return "not on a first load"
    return f"not due ({contract.deletes})"


def _ranged(contract: Contract, live: pl.DataFrame) -> bool:
    return len(contract.primary_key) == 1 and live.schema[contract.primary_key[0]].is_integer()


def _bucket(key: pl.Expr) -> pl.Expr:
    # SQL's integer division truncates towards zero; polars' floors.
    return pl.when(key < 0).then(-((-key) // RANGE_WIDTH)).otherwise(key // RANGE_WIDTH)


def _summary(live: pl.DataFrame, key: str) -> pl.DataFrame:
    residue = pl.col(key).abs() % PRIME
    return (
        live.filter(pl.col(key).is_not_null())
        .group_by(_bucket(pl.col(key)).alias("bucket"))
        .agg(rows=pl.len().cast(pl.Int64), sum=residue.sum(), squares=(residue * residue % PRIME).sum())
    )


def _source_summary(contract: Contract, source: SourceDatabase, key: str) -> pl.DataFrame:
    value = f"CAST({quoted(key)} AS BIGINT)"
    residue = f"(abs({value}) % {PRIME})"
    summary = source.read(
        f"SELECT {value} / {RANGE_WIDTH} AS bucket, count(*) AS rows, CAST(sum({residue}) AS BIGINT) AS sum, "
        f"CAST(sum({residue} * {residue} % {PRIME}) AS BIGINT) AS squares "
        f"FROM {qualified(contract.source.table)} WHERE {quoted(key)} IS NOT NULL GROUP BY 1",
        what=reading(contract, "comparing keys of"),
    )
    return summary.cast({"bucket": pl.Int64, **dict.fromkeys(SUMMARY, pl.Int64)})


def _bounds(bucket: int) -> tuple[int, int]:
    """The key values a bucket holds (bucket 0 holds both signs, as truncation puts them there)."""
    if bucket > 0:
        return bucket * RANGE_WIDTH, (bucket + 1) * RANGE_WIDTH - 1
    if bucket < 0:
        return (bucket - 1) * RANGE_WIDTH + 1, bucket * RANGE_WIDTH
    return -(RANGE_WIDTH - 1), RANGE_WIDTH - 1


def _source_keys(
    contract: Contract, source: SourceDatabase, live: pl.DataFrame, bounds: tuple[int, int] | None = None
) -> pl.DataFrame:
    keys = ", ".join(map(quoted, contract.primary_key))
    condition, parameters = "", []
    if bounds is not None:
        column = quoted(contract.primary_key[0])
        condition = f" WHERE {column} BETWEEN {source.placeholder(1)} AND {source.placeholder(2)}"
        parameters = list(bounds)
    found = source.read(
        f"SELECT {keys} FROM {qualified(contract.source.table)}{condition}",
        parameters,
        what=reading(contract, "comparing keys of"),
    )
    return found.cast(dict(live.schema))


def find_deletes(contract: Contract, source: SourceDatabase, live: pl.DataFrame) -> Deletes:
    """The keys of `live` (the keys bronze holds live) the source no longer has."""
    if not _ranged(contract, live):
        gone = live.join(_source_keys(contract, source, live), on=contract.primary_key, how="anti")
        return Deletes(gone, 0, 0)
    key = contract.primary_key[0]
    compared = _summary(live, key).join(
        _source_summary(contract, source, key), on="bucket", how="full", coalesce=True, suffix="_source"
    )
    differs = pl.any_horizontal(pl.col(name).ne_missing(pl.col(f"{name}_source")) for name in SUMMARY)
    buckets = compared.filter(differs).get_column("bucket").sort().to_list()
    gone = [live.head(0)]
    for bucket in buckets:
        low, high = _bounds(bucket)
        held = live.filter(pl.col(key).is_between(low, high))
        if not held.is_empty():
            gone.append(held.join(_source_keys(contract, source, live, (low, high)), on=key, how="anti"))
    return Deletes(pl.concat(gone), compared.height, len(buckets))
