"""SCD2 history: one row per change of a record's tracked attributes, with its validity range."""

from __future__ import annotations

from datetime import datetime

import polars as pl

from lakehouse.bronze.tombstones import DELETED_AT
from lakehouse.sources.contract import Contract
from lakehouse.storage import delta
from lakehouse.storage.keys import rows_of
from lakehouse.storage.ledger import LOADED_AT
from lakehouse.storage.merge import MergeCounts, merge
from lakehouse.storage.sql import quoted

VALID_FROM, VALID_TO, IS_CURRENT = "valid_from", "valid_to", "is_current"
DELETED = "_deleted"  # true on the version a delete in the source closed
_AT, _SINCE, _FINGERPRINT = "_at", "_since", "_fingerprint"


def tracked_columns(contract: Contract) -> list[str]:
    """Every contract column but the key and the version timestamp."""
    assert contract.watermark is not None
    return [
        name for name in contract.columns if name not in (*contract.primary_key, contract.watermark.column)
    ]


def record_changes(uri: str, versions: pl.DataFrame, contract: Contract) -> MergeCounts | None:
    """Add the versions that change a tracked attribute, closing the rows they supersede.

    Versions not newer than a key's current history row (replays, late older versions) do
    not rewrite history, so loading the same bronze rows twice changes nothing.
    """
    assert contract.watermark is not None
    keys, moment, tracked = contract.primary_key, contract.watermark.column, tracked_columns(contract)
    incoming = versions.select(*keys, *tracked, pl.col(moment).alias(VALID_FROM))
    table = delta.open_table(uri)
    # Only the incoming keys' rows are read past the key columns: a batch costs its keys.
    current = (
        rows_of(delta.scan(uri).filter(pl.col(IS_CURRENT)), incoming.select(keys).unique())
        .select(*keys, *tracked, VALID_FROM)
        .collect()
        if table
        else incoming.head(0)
    )
    # Stored rows first, so that a row's position below tells where it comes from.
    both = pl.concat([current, incoming], how="diagonal_relaxed")
    stored = current.height
    # Which versions start or change a key is decided on a narrow timeline (key, moment and a
    # fingerprint of the tracked columns); only the rows written are then taken whole. Sorting
    # every tracked column of a first load's million keys was the load's peak memory.
    timeline = (
        both.lazy()
        .select(*keys, VALID_FROM, pl.struct(tracked).hash().alias(_FINGERPRINT))
        .with_row_index(_AT)
        .join(current.lazy().select(*keys, pl.col(VALID_FROM).alias(_SINCE)), on=keys, how="left")
        .filter((pl.col(_AT) < stored) | pl.col(_SINCE).is_null() | (pl.col(VALID_FROM) > pl.col(_SINCE)))
        .unique([*keys, VALID_FROM])
        .sort(*keys, VALID_FROM)
    )
    # The timeline is in key order: a key's neighbours tell where its versions start and end,
    # with no grouping by key (which holds a table of every key).
    first, last = (
        pl.any_horizontal(pl.col(key).ne_missing(pl.col(key).shift(n)) for key in keys) for n in (1, -1)
    )
    changed = (pl.col(_FINGERPRINT) != pl.col(_FINGERPRINT).shift(1)).fill_null(True)
    # Stored rows are written again only when a newer version closes them.
    written = (
        timeline.filter(first | changed)
        .with_columns(pl.when(last).then(None).otherwise(pl.col(VALID_FROM).shift(-1)).alias(VALID_TO))
        .filter((pl.col(_AT) >= stored) | pl.col(VALID_TO).is_not_null())
        .select(_AT, VALID_TO)
        .collect()
    )
    if written.is_empty():
        return None
    rows = both[written.get_column(_AT)].with_columns(
        written.get_column(VALID_TO),
        written.get_column(VALID_TO).is_null().alias(IS_CURRENT),
        pl.lit(versions.get_column(LOADED_AT).max()).alias(LOADED_AT),
    )
    return merge(
        uri, rows, [*keys, VALID_FROM], update_when=f"t.{quoted(IS_CURRENT)} AND NOT s.{quoted(IS_CURRENT)}"
    )


def close_deleted(uri: str, gone: pl.DataFrame, contract: Contract, loaded_at: datetime) -> int:
    """Close the current version of each key the source deleted (`gone`: the keys and
    `_deleted_at`, when the delete was found): valid until then, not current, `_deleted`.
    Returns the versions closed; a key closed already is left as it is."""
    if gone.is_empty() or delta.open_table(uri) is None:
        return 0
    keys = contract.primary_key
    current = delta.scan(uri).filter(pl.col(IS_CURRENT))
    schema = current.collect_schema()
    found = gone.cast({key: schema[key] for key in keys})
    closed = (
        rows_of(current, found.select(keys).unique())
        .join(found.lazy(), on=keys, how="inner")
        .with_columns(
            # A source clock ahead of the lakehouse's must not end a version before it began.
            pl.max_horizontal(VALID_FROM, pl.col(DELETED_AT).cast(schema[VALID_FROM])).alias(VALID_TO),
            pl.lit(False).alias(IS_CURRENT),
            pl.lit(True).alias(DELETED),
            pl.lit(loaded_at, dtype=pl.Datetime("us", "UTC")).alias(LOADED_AT),
        )
        .drop(DELETED_AT)
        .collect()
    )
    if closed.is_empty():
        return 0
    return merge(uri, closed, [*keys, VALID_FROM], update_when=f"t.{quoted(IS_CURRENT)}").updated
