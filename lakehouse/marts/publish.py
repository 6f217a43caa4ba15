"""The marts as Delta tables under `<root>/marts/<model>`, what consumers on any machine read.

The DuckDB warehouse is a file on the disk of the machine that ran dbt; the lake is where
everything else lives (a shared folder or an object store). Each mart dbt built is copied there
after the build, overwritten whole, in one commit that carries what it was built from in its
ledger. A mart whose rows change only on the days gold rebuilt (`ByDay`) is kept in order of its
day, in files of about `DAY_FILE_BYTES`, and has just those days replaced when its copy is the
one of the build the days are counted from: only the files holding them are rewritten. The copy
streams
`BATCH_ROWS` rows at a time: a mart of one row per order holds as many rows as the orders.
The warehouse becomes a cache the next build can make anew.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date
from typing import Any

import duckdb
import polars as pl
from deltalake import DeltaTable

from lakehouse.gold.build import DAY_FILE_BYTES
from lakehouse.resources import LakehouseStorage
from lakehouse.storage import delta, ledger
from lakehouse.storage.sql import quoted

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


@dataclass(frozen=True)
class ByDay:
    """A mart whose rows change only on the days gold rebuilt, by its day `column`; `days` are
    those that may differ from the mart of build `since` (what that build was built from), None
    when that is not known."""

    column: str
    days: list[str] | None = None
    since: str | None = None

    def predicate(self) -> str:
        days = ", ".join(f"'{date.fromisoformat(day).isoformat()}'" for day in self.days or [])
        return f"{quoted(self.column)} IN ({days})"


class _Rows:
    """A model's rows in the warehouse, those matching `where` (SQL) in order of `by_day`'s
    column, a batch at a time, read again for each pass a write makes (it makes another after a
    commit conflict)."""

    def __init__(
        self, connection: duckdb.DuckDBPyConnection, model: str, by_day: ByDay | None, where: str = "true"
    ) -> None:
        self.connection, self.model, self.by_day, self.where = connection, model, by_day, where

    def __iter__(self) -> Iterator[pl.DataFrame]:
        query = f'select * from main."{self.model}" where {self.where}'
        if self.by_day is not None:
            query += f" order by {quoted(self.by_day.column)}"
        reader = self.connection.sql(query).to_arrow_reader(BATCH_ROWS)
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
    lakehouse: LakehouseStorage,
    connection: duckdb.DuckDBPyConnection,
    model: str,
    built_from: str,
    by_day: ByDay | None = None,
) -> DeltaTable:
    """The model's table in the warehouse as the Delta table `marts/<model>`, unless that table
    was already written from the same `built_from` (a step run again after a crash); for a mart
    `by_day`, only its days that may differ when the Delta table was written from the build they
    are counted from."""
    uri, entry, stamp = lakehouse.table_uri(LAYER, model), ledger.mart_built_from(model), _stamp(built_from)
    published = delta.open_table(uri)
    held = None if published is None else ledger.read(published, entry)
    commit: dict[str, Any] = {
        "metadata": {"lakehouse.built_from": built_from},
        "transactions": {entry: stamp},
        "target_file_size": None if by_day is None else DAY_FILE_BYTES,
    }
    if published is not None and held == stamp:
        return published
    if by_day is None or by_day.days is None or by_day.since is None or held != _stamp(by_day.since):
        return delta.write(uri, _Rows(connection, model, by_day), mode="overwrite", **commit)
    if not by_day.days:
        # Nothing of it changed: the commit only records the build it now stands for.
        return delta.write(uri, _Rows(connection, model, by_day, "false"), **commit)
    where = by_day.predicate()
    rows = _Rows(connection, model, by_day, where)
    return delta.write(uri, rows, mode="overwrite", predicate=where, **commit)
