"""A table's rows of a few keys, found through its key columns.

A join of the whole rows with the keys would read every column of every row into memory. The
keys the table holds are read through the key columns alone, within the range the keys span in
each (which the Parquet scan prunes by statistics: rows of recent keys lie in few files); then
those keys' rows through a filter the scan applies before reading the other columns.
"""

from __future__ import annotations

import polars as pl


def near(rows: pl.LazyFrame, values: pl.DataFrame) -> pl.LazyFrame:
    """The rows within the range of `values` in each of its columns (and those with nulls where
    `values` have some): a change's rows lie in few of a table's files (a first load's hold key
    ranges, each batch's its own), and the scan skips the others by their statistics."""
    within = []
    for column in values.iter_columns():
        kept = pl.col(column.name).is_null() if column.has_nulls() else pl.lit(False)
        if column.null_count() < column.len():
            low, high = (pl.lit(bound, dtype=column.dtype) for bound in (column.min(), column.max()))
            kept |= pl.col(column.name).is_between(low, high)
        within.append(kept)
    return rows.filter(pl.all_horizontal(within)) if within else rows


def held(rows: pl.LazyFrame, keys: pl.DataFrame) -> pl.DataFrame:
    """The `keys` (distinct, in the table's types) that `rows` hold."""
    keys = keys.cast(dict(rows.select(keys.columns).collect_schema())).unique()
    if keys.is_empty():
        return keys
    found = near(rows, keys).select(keys.columns).join(keys.lazy(), on=keys.columns, how="semi")
    return found.collect(engine="streaming").unique()


def rows_of(rows: pl.LazyFrame, keys: pl.DataFrame) -> pl.LazyFrame:
    """The rows of `keys` (which `rows` must hold: see `held`)."""
    first = keys.columns[0]
    return rows.filter(pl.col(first).is_in(keys.get_column(first).implode())).join(
        keys.lazy(), on=keys.columns, how="semi"
    )
