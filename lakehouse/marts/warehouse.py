"""The DuckDB warehouse dbt builds the marts in, and the gold Delta tables as dbt reads them.

dbt's gold sources are the relations `gold.<table>` of the warehouse. For a local lakehouse
each is a view over the Parquet files of one Delta version: nothing is copied, so a dbt build
costs what its models read, not the size of gold, and the marts come from exactly the versions
the build recorded. DuckDB reads an object store only through an extension it would have to
download, so a table on one (s3://, gs://, az://) is copied into the warehouse instead.
"""

import time
from collections.abc import Mapping
from pathlib import Path

import duckdb
import polars as pl
import pyarrow as pa
from deltalake import DeltaTable

from lakehouse.marts.rebuilt_days import RELATION
from lakehouse.storage.sql import quoted

GOLD_SCHEMA = "gold"
# How long to wait for the file while other processes read it (dbt's own wait is about as long).
LOCK_WAIT_SECONDS = 30.0
# A DuckDB file starts with a checksum, then its magic bytes; a new database is its three header
# blocks of 4 KiB.
DUCKDB_MAGIC, DUCKDB_MAGIC_AT, NEW_DATABASE_BYTES = b"DUCK", 8, 3 * 4096


class WarehouseFileError(RuntimeError):
    """The warehouse path holds a file that is not a DuckDB database."""


def set_aside_torn_creation(location: Path) -> Path | None:
    """Move a warehouse file a killed process left empty aside (renamed, never deleted), so that
    dbt builds a new one; where it went, or None when there was none.

    DuckDB creates the file, then writes its three header blocks: a process killed in between
    leaves a file of no bytes, zero bytes, or fewer blocks, which DuckDB refuses to open ever
    after. A file with other content that is not a DuckDB database is refused, naming it: it
    may be someone's."""
    if not location.is_file():
        return None
    size = location.stat().st_size
    with location.open("rb") as file:
        head = file.read(NEW_DATABASE_BYTES)
    if head[DUCKDB_MAGIC_AT : DUCKDB_MAGIC_AT + len(DUCKDB_MAGIC)] == DUCKDB_MAGIC:
        if size >= NEW_DATABASE_BYTES:
            return None  # whole headers: a database, whatever state its data is in
    elif head.strip(b"\0") or size > NEW_DATABASE_BYTES:
        raise WarehouseFileError(
            f"LAKEHOUSE_WAREHOUSE: {location} is not a DuckDB database; move it away or set "
            "LAKEHOUSE_WAREHOUSE to another path"
        )
    aside = location.with_name(f"{location.name}.torn-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}")
    location.rename(aside)
    wal = location.with_name(f"{location.name}.wal")
    if wal.exists():
        wal.rename(aside.with_name(f"{aside.name}.wal"))
    return aside


def expose_gold(
    location: Path, tables: Mapping[str, DeltaTable], rebuilt: Mapping[str, tuple[str, list[str] | None]]
) -> None:
    """Make each table the warehouse relation `gold.<name>`, at the version it was opened at,
    and the days `rebuilt` in each table rebuilt by day (its name: its day column and the days,
    None for all of them) the relation `gold.rebuilt_days` (`rebuilt_days.py`).

    One transaction: a reader of the warehouse sees every relation of the old versions or every
    one of the new. The connection is closed on return, since dbt needs the file to itself."""
    with _connect_for_writing(location) as connection:
        connection.begin()
        connection.execute(f"create schema if not exists {GOLD_SCHEMA}")
        for name, table in tables.items():
            _replace(connection, name, table)
        _rebuilt_days(connection, {name: days for name, days in rebuilt.items() if name in tables})
        connection.commit()


def _rebuilt_days(
    connection: duckdb.DuckDBPyConnection, rebuilt: Mapping[str, tuple[str, list[str] | None]]
) -> None:
    relation = f"{GOLD_SCHEMA}.{RELATION}"
    connection.execute(f"create or replace table {relation} (table_name varchar, day date)")
    for name, (column, days) in rebuilt.items():
        if days is None:
            connection.execute(
                f"insert into {relation} select distinct ?, {quoted(column)} "
                f"from {GOLD_SCHEMA}.{quoted(name)} where {quoted(column)} is not null",
                [name],
            )
        elif days:
            connection.executemany(f"insert into {relation} values (?, ?)", [[name, day] for day in days])


def _connect_for_writing(location: Path) -> duckdb.DuckDBPyConnection:
    """A read-write connection, once no other process holds the file (readers hold it briefly)."""
    deadline, pause = time.monotonic() + LOCK_WAIT_SECONDS, 0.05
    while True:
        try:
            return duckdb.connect(str(location))
        except duckdb.IOException as error:
            if "lock" not in str(error) or time.monotonic() > deadline:
                raise
        time.sleep(pause)
        pause = min(2 * pause, 1.0)


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _replace(connection: duckdb.DuckDBPyConnection, name: str, table: DeltaTable) -> None:
    relation = f"{GOLD_SCHEMA}.{quoted(name)}"
    found = connection.execute(
        "select table_type from information_schema.tables where table_schema = ? and table_name = ?",
        [GOLD_SCHEMA, name],
    ).fetchall()
    if found:
        connection.execute(f"drop {'view' if found[0][0] == 'VIEW' else 'table'} {relation}")
    # Delta's own column order and types, which the Parquet files alone do not give: partition
    # values live in the folder names, and an old file may lack a column added since.
    empty = connection.from_arrow(pa.schema(table.schema().to_arrow()).empty_table())
    columns = ", ".join(quoted(column) for column in empty.columns)
    files = table.file_uris()
    # Reader version 1 is plain Parquet plus partition values; later versions (column mapping,
    # deletion vectors) need delta-rs to read them. An empty version has no file to view.
    if files and table.protocol().min_reader_version == 1 and not any("://" in file for file in files):
        types = dict(zip(empty.columns, map(str, empty.types), strict=True))
        partitions = table.metadata().partition_columns
        hive = ", ".join(f"{_literal(column)}: {_literal(types[column])}" for column in partitions)
        options = (
            f"hive_partitioning = true, hive_types = {{{hive}}}"
            if partitions
            else "hive_partitioning = false"
        )
        listed = ", ".join(map(_literal, files))
        connection.execute(
            f"create view {relation} as select {columns} "
            f"from read_parquet([{listed}], union_by_name = true, {options})"
        )
    else:
        # polars reads what delta-rs reads, handed over in the oldest Arrow layouts (no
        # string views), which every DuckDB takes.
        rows = pl.scan_delta(table).collect().to_arrow(compat_level=pl.CompatLevel.oldest())
        connection.register("delta_version", rows)
        connection.execute(f"create table {relation} as select {columns} from delta_version")
        connection.unregister("delta_version")
