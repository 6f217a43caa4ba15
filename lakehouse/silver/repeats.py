"""Keys that arrive again in an append-only dataset: silver keeps each key's first arrival.

A later row with the same key and the same content is a plain duplicate (counted). One with
different content is a conflict: silver still keeps the first, and the later row goes to
quarantine with the reason and where the first came from, never dropped silently. The first
arrival of a key silver already holds is silver's row, in whichever partition it lies.
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

from lakehouse.bronze.columns import AUDIT_COLUMNS, LINE_NUMBER, SOURCE_FILE
from lakehouse.silver.validate import ERROR_COLUMN
from lakehouse.storage import delta
from lakehouse.storage.keys import held, rows_of

FIRST = "_first"
# Append-only datasets come from landing files: a row is its file and line.
IDENTITY = [SOURCE_FILE, LINE_NUMBER]


@dataclass(frozen=True)
class Repeats:
    kept: pl.DataFrame  # the valid rows silver loads: each key's first arrival, once
    identical: int  # repeats of a first arrival's content
    conflicting: pl.DataFrame  # the file and line of each repeat with other content, and why
    held: pl.DataFrame  # the keys silver already holds; of `kept`, only rows read again after a crash


def _stored(silver_uri: str | None, keys: pl.DataFrame, columns: list[str], like: pl.Schema) -> pl.DataFrame:
    """Silver's rows of `keys`, in `columns` (null where silver has no such column yet)."""
    table = delta.open_table(silver_uri) if silver_uri else None
    none = pl.DataFrame(schema={name: like[name] for name in columns})
    if table is None:
        return none
    names = set(delta.arrow_schema(table).names)
    rows = pl.scan_delta(table)
    found = held(rows, keys)
    if found.is_empty():
        return none
    # Each key's earliest row, should silver hold a key twice.
    stored = (
        rows_of(rows, found)
        .select(name for name in columns if name in names)
        .sort(IDENTITY)
        .unique(keys.columns, keep="first", maintain_order=True)
        .collect(engine="streaming")
    )
    return stored.with_columns(
        pl.lit(None, dtype=like[name]).alias(name) for name in columns if name not in names
    ).select(columns)


def split_repeats(
    valid: pl.DataFrame, first: pl.DataFrame, key: list[str], silver_uri: str | None
) -> Repeats:
    """Tell apart, among `valid` rows, each key's first arrival (silver's row if it has one,
    else the batch's `first`), identical repeats, and conflicting ones.

    `silver_uri`: None when silver cannot hold these keys yet (a slice of a first load)."""
    content = [name for name in valid.columns if name not in (*key, *IDENTITY, *AUDIT_COLUMNS)]
    columns = [*key, *IDENTITY, *content]
    stored = _stored(silver_uri, first.select(key), columns, valid.schema)
    if stored.is_empty() and first.height == valid.height:
        # Every key arrives once and silver holds none of them: nothing repeats, and no join
        # need hold the rows' files and lines.
        none = valid.select(*IDENTITY, pl.lit(None, dtype=pl.String).alias(ERROR_COLUMN)).head(0)
        return Repeats(first, 0, none, stored.select(key))
    new = first if stored.is_empty() else first.join(stored.select(key), on=key, how="anti")
    arrivals = pl.concat([stored.select(IDENTITY), new.select(IDENTITY)], how="vertical_relaxed")
    # A row with the file and line of its key's first arrival is that arrival (a re-read of a row
    # silver took in a load that crashed before moving its position counts as it too). With no
    # such re-reads the first arrivals are the batch's own: taken as they are, not copied again.
    kept = new if stored.is_empty() else valid.join(arrivals, on=IDENTITY, how="semi")
    repeated = valid.join(arrivals, on=IDENTITY, how="anti").select(columns)
    # The first arrivals of the repeated keys only, to compare the repeats' content with.
    repeated_keys = repeated.select(key).unique()
    reference = pl.concat(
        [part.select(columns).join(repeated_keys, on=key, how="semi") for part in (stored, new)],
        how="vertical_relaxed",
    )
    compared = repeated.join(reference, on=key, suffix=FIRST)
    differs = pl.any_horizontal(
        pl.lit(False), *(~pl.col(name).eq_missing(pl.col(f"{name}{FIRST}")) for name in content)
    )
    file, line = (pl.col(f"{name}{FIRST}").cast(pl.String) for name in IDENTITY)
    conflicting = compared.filter(differs).select(
        *IDENTITY,
        pl.format(f"{', '.join(key)} repeats with different content (first in {{}}:{{}})", file, line).alias(
            ERROR_COLUMN
        ),
    )
    return Repeats(kept, compared.height - conflicting.height, conflicting, stored.select(key).unique())
