"""The physical floor: every source table and landing file copied into Delta, untransformed.

python -m bench.floor TARGET_ROOT   (source and landing from LAKEHOUSE_SOURCE_URL / LAKEHOUSE_LANDING)

What no pipeline can beat on this machine: one read of each table (the ADBC driver bronze
uses) and each file's lines, one Delta write each, no typing, validation or merging. Like the
pipeline it is compared with, it streams: a table is read `CHUNK_ROWS` rows at a time and the
landing a file at a time, so its memory follows those parts, not the largest table.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import polars as pl

from lakehouse.bronze.database import CHUNK_ROWS
from lakehouse.resources import SourceDatabase
from lakehouse.settings import setting
from lakehouse.sources.contract_files import load_contracts
from lakehouse.storage import delta
from lakehouse.storage.sql import qualified


def _table(source: SourceDatabase, table: str) -> Iterator[pl.DataFrame]:
    with source.connect() as connection, connection.cursor() as cursor:
        if source.dialect == "sqlite":
            cursor.adbc_statement.set_options(**{"adbc.sqlite.query.batch_rows": str(CHUNK_ROWS)})
        cursor.execute(f"SELECT * FROM {qualified(table)}")
        batches = cursor.fetch_record_batch()
        yield pl.from_arrow(batches.schema.empty_table())  # the schema, when there are no rows
        for batch in batches:
            yield pl.from_arrow(batch)


def _lines(files: list[Path]) -> Iterator[pl.DataFrame]:
    yield pl.DataFrame(schema={"line": pl.Binary})
    for path in files:
        # Bytes, not text: a line that is not UTF-8 is copied too.
        yield pl.DataFrame({"line": path.read_bytes().splitlines()}, schema={"line": pl.Binary})


def copy_in(target: Path) -> int:
    """Copy everything in; the number of rows written."""
    source = SourceDatabase(url=setting("LAKEHOUSE_SOURCE_URL"))
    landing = Path(setting("LAKEHOUSE_LANDING"))
    rows = 0
    for contract in load_contracts(Path(setting("LAKEHOUSE_CONTRACTS"))):
        if contract.is_database:
            assert contract.source.kind == "database"
            frames = _table(source, contract.source.table)
        else:
            frames = _lines(sorted(landing.glob(contract.source.glob)))
        rows += delta.row_count(delta.write(str(target / contract.name), frames, mode="overwrite"))
    return rows


if __name__ == "__main__":
    print(f"{copy_in(Path(sys.argv[1]))} rows copied")
