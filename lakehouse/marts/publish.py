"""The marts as Delta tables under `<root>/marts/<model>`, what consumers on any machine read.

The DuckDB warehouse is a file on the disk of the machine that ran dbt; the lake is where
everything else lives (a shared folder or an object store). Each mart dbt built is copied there
after the build, overwritten whole, in one commit that carries what it was built from in its
ledger. A mart whose rows change only on the days gold rebuilt (`Changed`) has just those days
replaced, when its copy is the one of the build the days are counted from. The copy streams
`BATCH_ROWS` rows at a time: a mart of one row per order holds as many rows as the orders. The
warehouse becomes a cache the next build can make anew.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date
from typing import Any

import duckdb
import polars as pl
from deltalake import DeltaTable

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
class Changed:
    """The `days` of a mart's day `column` that may differ from the mart of build `since` (what
    that build was built from): the only rows a build since changed."""

    column: str
    days: list[str]
    since: str

    def predicate(self) -> str:
        days = ", ".join(f"'{date.fromisoformat(day).isoformat()}'" for day in self.days)
        return f"{quoted(self.column)} IN ({days})"


class _Rows:
    """A model's rows in the warehouse, those matching `where` (SQL), a batch at a time, read
    again for each pass a write makes (it makes another after a commit conflict)."""

    def __init__(self, connection: duckdb.DuckDBPyConnection, model: str, where: str = "true") -> None:
        self.connection, self.model, self.where = connection, model, where

    def __iter__(self) -> Iterator[pl.DataFrame]:
        query = f'select * from main."{self.model}" where {self.where}'
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
    changed: Changed | None = None,
) -> DeltaTable:
    """The model's table in the warehouse as the Delta table `marts/<model>`, unless that table
    was already written from the same `built_from` (a step run again after a crash); only the
    `changed` days of it when the Delta table was written from the build they are counted from."""
    uri, entry, stamp = lakehouse.table_uri(LAYER, model), ledger.mart_built_from(model), _stamp(built_from)
    published = delta.open_table(uri)
    held = None if published is None else ledger.read(published, entry)
    commit: dict[str, Any] = {
        "metadata": {"lakehouse.built_from": built_from},
        "transactions": {entry: stamp},
    }
    if published is not None and held == stamp:
        return published
    if changed is None or held != _stamp(changed.since):
        return delta.write(uri, _Rows(connection, model), mode="overwrite", **commit)
    if not changed.days:
        # Nothing of it changed: the commit only records the build it now stands for.
        return delta.write(uri, _Rows(connection, model, "false"), **commit)
    where = changed.predicate()
    return delta.write(uri, _Rows(connection, model, where), mode="overwrite", predicate=where, **commit)
