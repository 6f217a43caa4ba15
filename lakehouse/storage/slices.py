"""Rows read a slice at a time, by ranges of a key column, so that memory follows the slice.

Each slice is a query of its own, filtered on a range of the key, which the Parquet scan prunes
by row-group statistics: over files written in key order each reads about its own rows. polars'
`collect_batches` and `sink_batches` do not bound memory: they run the query ahead of a consumer
slower than the scan and hold what it has not taken yet, so a slow consumer such as Pandera
makes them hold most of the batch.
"""

import itertools

import polars as pl


def key_ranges(rows: pl.LazyFrame, key: str, size: int) -> list[pl.LazyFrame]:
    """`rows` in parts of about `size` rows by ranges of `key`: every row of one key value in
    the same part, nulls in the first. `[rows]` when there are at most `size` rows (counted
    first: a scan counts from Parquet metadata, or reads only the columns it filters on) or no
    such column; otherwise reads the key column once to find the ranges."""
    if key not in rows.collect_schema() or rows.select(pl.len()).collect().item() <= size:
        return [rows]
    keys = rows.select(key).collect(engine="streaming").get_column(key).drop_nulls().sort()
    cuts = [pl.lit(cut) for cut in keys.gather(range(size, keys.len(), size)).unique(maintain_order=True)]
    if not cuts:
        return [rows]
    column = pl.col(key)
    bounds = [column.is_null() | (column < cuts[0])]
    bounds += [column.is_between(low, high, closed="left") for low, high in itertools.pairwise(cuts)]
    bounds.append(column >= cuts[-1])
    return [rows.filter(bound) for bound in bounds]
