"""Columns every bronze row carries, and the stable types bronze stores."""

from __future__ import annotations

from datetime import datetime

import polars as pl
import polars.selectors as cs
import pyarrow as pa

from lakehouse.sources.contract import Contract
from lakehouse.sources.timestamps import in_zone

PARTITION_COLUMN = "_ingest_date"
EXTRACTED_AT, SOURCE, RUN_ID = "_extracted_at", "_source", "_run_id"
AUDIT_COLUMNS = (EXTRACTED_AT, SOURCE, RUN_ID, PARTITION_COLUMN)
# What a database row records: `upsert` (a version read by its watermark), `insert`, `update`
# or `delete` (read from the change stream); a delete row, a tombstone, holds the key only.
# `_lsn` orders a change-stream row among all others (PostgreSQL's log sequence number).
OP, LSN = "_op", "_lsn"
UPSERT, INSERT, UPDATE, DELETE = "upsert", "insert", "update", "delete"
# Where a landing row came from: its file and line (from 1) tell it from every other row.
SOURCE_FILE, LINE_NUMBER = "_source_file", "_line_number"
# A landing line's keys the contract does not name, as one JSON object (contract rule
# `source.extra_keys: keep_json`): bronze's columns stay the contract's, whatever lines hold.
EXTRA_KEYS = "_extra_keys"
# Columns the lakehouse writes into bronze itself: a landing key of one of these names (in
# any case, as Delta compares column names) cannot be stored beside them.
OWN_COLUMNS = (*AUDIT_COLUMNS, SOURCE_FILE, LINE_NUMBER, EXTRA_KEYS)


class BronzeSchemaError(TypeError):
    """A batch whose column cannot be stored in the type bronze already has for it."""


def with_audit_columns(frame: pl.DataFrame, source: str, run_id: str, extracted_at: datetime) -> pl.DataFrame:
    """Add where, when and by which run each row was extracted, and the ingest-date partition."""
    return frame.with_columns(
        **{
            EXTRACTED_AT: pl.lit(extracted_at, dtype=pl.Datetime("us", "UTC")),
            SOURCE: pl.lit(source, dtype=pl.String),
            RUN_ID: pl.lit(run_id, dtype=pl.String),
            PARTITION_COLUMN: pl.lit(extracted_at.date(), dtype=pl.Date),
        }
    )


def pin_types(
    frame: pl.DataFrame,
    contract: Contract,
    stored: pa.Schema | None,
    table: str,
    guessed_nulls: bool = True,
) -> pl.DataFrame:
    """Give every column the type bronze stores for it, so batches never flip a column's type.

    With `guessed_nulls`, an all-NULL column is taken to have no real type (database drivers
    guess one) and gets the stored type, else the contract's, else text.

    Timestamps are kept in UTC; naive ones (`TIMESTAMP WITHOUT TIME ZONE`) are wall-clock
    times in the contract's time zone. A value that cannot be cast to the stored type, or a
    wall-clock time that does not exist in that zone, fails the batch with an error naming the
    table and column.
    """
    frame = frame.with_columns(cs.datetime(time_zone="*").dt.convert_time_zone("UTC"))
    for name in frame.select(cs.datetime(time_zone=None)).columns:
        local = frame.get_column(name)
        converted = frame.select(in_zone(pl.col(name), contract.time_zone)).to_series()
        if converted.null_count() > local.null_count():
            moment = local.filter(converted.is_null() & local.is_not_null())[0]
            raise BronzeSchemaError(
                f"{table}: column '{name}' holds {moment}, a time that does not exist in "
                f"the contract's time_zone {contract.time_zone}"
            )
        frame = frame.with_columns(converted)
    stored_types = (
        dict(zip(stored.names, pl.DataFrame(stored.empty_table()).dtypes, strict=True)) if stored else {}
    )
    casts = []
    for name, dtype in frame.schema.items():
        unknown = dtype == pl.Null or (guessed_nulls and frame.get_column(name).null_count() == frame.height)
        if name in stored_types and stored_types[name] != dtype:
            casts.append((name, stored_types[name]))
        elif unknown and name not in stored_types:
            # The driver could not type it: the contract's type, otherwise text, which fits anything.
            casts.append((name, contract.columns[name].dtype if name in contract.columns else pl.String))
    for name, target in casts:
        try:
            frame = frame.with_columns(pl.col(name).cast(target, strict=True))
        except pl.exceptions.InvalidOperationError as error:
            raise BronzeSchemaError(
                f"{table}: column '{name}' arrived as {frame.schema[name]} "
                f"but bronze stores it as {target}: {error}"
            ) from error
    return frame
