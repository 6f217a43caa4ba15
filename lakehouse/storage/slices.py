"""Rows read a slice at a time, by ranges of a key column, so that memory follows the slice.

Each slice is a query of its own, filtered on a range of the key, which the Parquet scan prunes
by row-group statistics: over files written in key order each reads about its own rows. polars'
`collect_batches` and `sink_batches` do not bound memory: they run the query ahead of a consumer
slower than the scan and hold what it has not taken yet, so a slow consumer such as Pandera
makes them hold most of the batch.
"""

import itertools
from typing import Any

import polars as pl


def key_cuts(rows: pl.LazyFrame, key: str, size: int) -> list[Any]:
    """The values of `key` that cut `rows` into parts of about `size` rows, every row of one key
    value in the same part; none when there are at most `size` rows (counted first: a scan counts
    from Parquet metadata, or reads only the columns it filters on) or no such column; otherwise
    reads the key column once."""
    if key not in rows.collect_schema() or rows.select(pl.len()).collect().item() <= size:
        return []
    keys = rows.select(key).collect(engine="streaming").get_column(key).drop_nulls().sort()
    return keys.gather(range(size, keys.len(), size)).unique(maintain_order=True).to_list()


def bounds(column: pl.Expr, cuts: list[Any]) -> list[pl.Expr]:
    """One condition on `column` per part that `cuts` make, nulls in the first; every value
    meets exactly one."""
    if not cuts:
        return [pl.lit(True)]
    values = [pl.lit(cut) for cut in cuts]
    parts = [column.is_null() | (column < values[0])]
    parts += [column.is_between(low, high, closed="left") for low, high in itertools.pairwise(values)]
    parts.append(column >= values[-1])
    return parts


def key_ranges(rows: pl.LazyFrame, key: str, size: int) -> list[pl.LazyFrame]:
    """`rows` in parts of about `size` rows by ranges of `key` (`key_cuts`); `[rows]` when it
    needs no cutting."""
    cuts = key_cuts(rows, key, size)
    return [rows.filter(bound) for bound in bounds(pl.col(key), cuts)] if cuts else [rows]
