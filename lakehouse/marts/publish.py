"""The marts as Delta tables under `<root>/marts/<model>`, what consumers on any machine read.

The DuckDB warehouse is a file on the disk of the machine that ran dbt; the lake is where
everything else lives (a shared folder or an object store). Each mart dbt built is copied there
after the build, overwritten whole, in one commit that carries what it was built from in its
ledger. The copy streams `BATCH_ROWS` rows at a time: a mart of one row per order holds as
many rows as the orders. The warehouse becomes a cache the next build can make anew.
"""

from __future__ import annotations

from collections.abc import Iterator

import duckdb
import polars as pl
from deltalake import DeltaTable

from lakehouse.resources import LakehouseStorage
from lakehouse.storage import delta, ledger

LAYER = "marts"
BATCH_ROWS = 1_000_000


def _in_utc(rows: pl.DataFrame) -> pl.DataFrame:
    """Timestamps as Delta's UTC timestamps: a naive one would make a `timestamp_ntz` column,
    which raises the table's protocol for every reader."""
    converted = []
    for name, dtype in rows.schema.items():
        if isinstance(dtype, pl.Datetime):
            moment = pl.col(name).dt
            in_utc = moment.convert_time_zone("UTC") if dtype.time_zone else moment.replace_time_zone("UTC")
            converted.append(in_utc)
    return rows.with_columns(converted)


class _Rows:
    """A model's rows in the warehouse, a batch at a time, read again for each pass a write
    makes (it makes another after a commit conflict)."""

    def __init__(self, connection: duckdb.DuckDBPyConnection, model: str) -> None:
        self.connection, self.model = connection, model

    def __iter__(self) -> Iterator[pl.DataFrame]:
        reader = self.connection.sql(f'select * from main."{self.model}"').to_arrow_reader(BATCH_ROWS)
        yield _in_utc(pl.DataFrame(reader.schema.empty_table()))  # the schema, when there are no rows
        for batch in reader:
            yield _in_utc(pl.DataFrame(batch))


def _stamp(built_from: str) -> int:
    return ledger.checksum(built_from.encode())


def is_published(lakehouse: LakehouseStorage, model: str, built_from: str) -> bool:
    """Whether `marts/<model>` was last written from `built_from`."""
    table = delta.open_table(lakehouse.table_uri(LAYER, model))
    return ledger.read(table, ledger.mart_built_from(model)) == _stamp(built_from)


def publish(
    lakehouse: LakehouseStorage, connection: duckdb.DuckDBPyConnection, model: str, built_from: str
) -> DeltaTable:
    """The model's table in the warehouse as the Delta table `marts/<model>`, unless that table
    was already written from the same `built_from` (a step run again after a crash)."""
    uri, entry, stamp = lakehouse.table_uri(LAYER, model), ledger.mart_built_from(model), _stamp(built_from)
    published = delta.open_table(uri)
    if published is not None and ledger.read(published, entry) == stamp:
        return published
    return delta.write(
        uri,
        _Rows(connection, model),
        mode="overwrite",
        metadata={"lakehouse.built_from": built_from},
        transactions={entry: stamp},
    )
