"""A table's rows of a few keys, found through its key columns.

A join of the whole rows with the keys would read every column of every row into memory. The
keys the table holds are read through the key columns alone, within the range of the first
key column the keys span (which the Parquet scan prunes by statistics: rows of recent keys lie
in few files); then those keys' rows through a filter the scan applies before reading the
other columns.
"""

from __future__ import annotations

import polars as pl


def _within_range(rows: pl.LazyFrame, keys: pl.DataFrame) -> pl.LazyFrame:
    first = keys.get_column(keys.columns[0])
    if first.null_count() or first.is_empty():
        return rows
    low, high = (pl.lit(bound, dtype=first.dtype) for bound in (first.min(), first.max()))
    return rows.filter(pl.col(first.name).is_between(low, high))


def held(rows: pl.LazyFrame, keys: pl.DataFrame) -> pl.DataFrame:
    """The `keys` (distinct, in the table's types) that `rows` hold."""
    keys = keys.cast(dict(rows.select(keys.columns).collect_schema())).unique()
    if keys.is_empty():
        return keys
    found = _within_range(rows, keys).select(keys.columns).join(keys.lazy(), on=keys.columns, how="semi")
    return found.collect(engine="streaming").unique()


def rows_of(rows: pl.LazyFrame, keys: pl.DataFrame) -> pl.LazyFrame:
    """The rows of `keys` (which `rows` must hold: see `held`)."""
    first = keys.columns[0]
    return rows.filter(pl.col(first).is_in(keys.get_column(first).implode())).join(
        keys.lazy(), on=keys.columns, how="semi"
    )
