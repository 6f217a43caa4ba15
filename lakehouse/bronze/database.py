"""Incremental extraction of a source table into its append-only bronze Delta table.

Each run reads the rows whose watermark column is at or after the last watermark minus the
contract's lookback, up to the source's newest watermark when the run starts, drops the row
versions bronze already holds, and appends the rest in one commit that also records the new
watermark (as a Delta app transaction, which survives log checkpoints). A crash before that
commit changes nothing; the next run reads again.

The rows are read in chunks of CHUNK_ROWS and streamed into that one commit: memory follows
the chunk, not the table, however large the first load.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import polars as pl
import pyarrow as pa

from lakehouse import delta, ledger
from lakehouse.bronze.columns import PARTITION_COLUMN, pin_types, with_audit_columns
from lakehouse.contract import Contract
from lakehouse.source import SourceDatabase, timestamp_text
from lakehouse.sql import qualified, quoted

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
CHUNK_ROWS = 1_000_000  # source rows an extraction holds at a time


class MissingColumnsError(ValueError):
    """The source table lacks a column its contract lists."""


@dataclass(frozen=True)
class Extraction:
    rows_read: int
    rows_appended: int
    watermark_before: datetime | None
    watermark_after: datetime | None
    added_columns: list[str]
    table: delta.DeltaTable | None
    rows_without_watermark: int


def read_watermark(table: delta.DeltaTable | None, contract: Contract) -> datetime | None:
    """The highest watermark value bronze has committed, as stored in its ledger."""
    micros = ledger.read(table, ledger.bronze_watermark(contract.name))
    return None if micros is None else EPOCH + timedelta(microseconds=micros)


def _as_datetime(value: object) -> datetime:
    moment = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _micros(moment: datetime) -> int:
    return (moment - EPOCH) // timedelta(microseconds=1)


def source_chunks(
    contract: Contract,
    source: SourceDatabase,
    lower: datetime | None,
    upper: Any,
    columns: list[str] | None = None,
    what: str = "extracting",
) -> Iterator[pl.DataFrame]:
    """The `columns` (all by default) of the source rows with a watermark in [lower, upper] (no
    lower bound on a first load), CHUNK_ROWS at a time, as the driver types them.

    A first load pages through the primary key, the table's own order; later runs through
    (watermark, primary key), which the watermark's index serves. Reading a whole table in
    watermark order would jump around it: three times slower on orders that changed since.
    """
    column = quoted(contract.watermark.column)
    order = contract.primary_key if lower is None else [contract.watermark.column, *contract.primary_key]
    ordered = ", ".join(map(quoted, order))
    selected = ", ".join(map(quoted, columns)) if columns else "*"
    after: tuple = ()
    while True:
        conditions, parameters = [f"{column} <= {source.placeholder(1)}"], [upper]
        if after:
            places = ", ".join(source.placeholder(position) for position in range(2, len(order) + 2))
            conditions.append(f"({ordered}) > ({places})")
            parameters.extend(after)
        elif lower is not None:
            conditions.append(f"{column} >= {source.placeholder(2)}")
            parameters.append(source.timestamp_parameter(lower))
        chunk = source.read(
            f"SELECT {selected} FROM {qualified(contract.source.table)} WHERE {' AND '.join(conditions)} "
            f"ORDER BY {ordered} LIMIT {CHUNK_ROWS}",
            parameters,
            what=reading(contract, what),
        )
        yield chunk
        if chunk.height < CHUNK_ROWS:
            return
        after = chunk.select(order).row(-1)


def reading(contract: Contract, what: str = "extracting") -> str:
    """What a source query of the contract does, for its errors: the contract and the table."""
    return f"bronze/{contract.name}: {what} source table {contract.source.table}"


def check_source_columns(contract: Contract, source: SourceDatabase) -> None:
    """Fail when the source table lacks a column the contract lists: silver would hold it as
    nulls that pass every check. Columns only the source has are extracted as they are."""
    present = source.read(
        f"SELECT * FROM {qualified(contract.source.table)} LIMIT 0", what=reading(contract)
    ).columns
    missing = [name for name in contract.columns if name not in present]
    if missing:
        raise MissingColumnsError(
            f"bronze/{contract.name}: source table {contract.source.table} on {source.label} lacks "
            f"column {', '.join(map(repr, missing))} of contract {contract.name}"
        )


def extract_table(
    contract: Contract, source: SourceDatabase, uri: str, run_id: str, now: datetime | None = None
) -> Extraction:
    """Append the source rows changed since bronze's watermark (see the module's docstring)."""
    return ledger.redo_when_moved(
        lambda: _extract_once(contract, source, uri, run_id, now), f"bronze/{contract.name}"
    )


def _extract_once(
    contract: Contract, source: SourceDatabase, uri: str, run_id: str, now: datetime | None
) -> Extraction:
    assert contract.watermark is not None and contract.is_database
    check_source_columns(contract, source)
    table_name, column = contract.source.table, contract.watermark.column
    table = delta.open_table(uri)
    claim = ledger.Claim(uri, table)
    before = read_watermark(table, contract)
    lower = None if before is None else before - contract.watermark.lookback
    # The newest watermark as the run starts; rows changed while it reads wait for the next.
    # Rows without one cannot be extracted incrementally: they are counted, not read.
    newest, unwatermarked = source.read(
        f"SELECT (SELECT max({quoted(column)}) FROM {qualified(table_name)}) AS newest, "
        f"(SELECT count(*) FROM {qualified(table_name)} WHERE {quoted(column)} IS NULL) AS unwatermarked",
        what=reading(contract),
    ).row(0)
    if newest is None:
        return Extraction(0, 0, before, before, [], table, unwatermarked)

    stored = delta.arrow_schema(table) if table else None
    identity = [*contract.primary_key, column]
    seen = None
    if table is not None and lower is not None:
        # The lookback re-reads recent rows on purpose (to catch late commits in the source);
        # the versions bronze already has (in the version whose watermark this run starts
        # from) are dropped by (primary key, watermark value). Bronze stores the watermark as
        # the driver returns it: text from SQLite.
        bound = timestamp_text(lower) if isinstance(newest, str) else lower
        seen = pl.scan_delta(table).filter(pl.col(column) >= pl.lit(bound)).select(identity).collect()

    extracted_at = now or datetime.now(UTC)
    counts = {"read": 0, "appended": 0}
    pinned: pa.Schema | None = None

    def new_rows() -> Iterator[pl.DataFrame]:
        nonlocal pinned
        for chunk in source_chunks(contract, source, lower, newest):
            counts["read"] += chunk.height
            if chunk.is_empty():
                continue
            # The first rows fix the types; later chunks, typed by the driver on their own,
            # are held to them.
            frame = pin_types(chunk, contract, pinned or stored, f"bronze/{contract.name}")
            pinned = pinned or delta.to_arrow(frame.head(0)).schema
            if seen is not None:
                frame = frame.join(seen, on=identity, how="anti", nulls_equal=True)
            counts["appended"] += frame.height
            if not frame.is_empty():
                yield with_audit_columns(frame, f"{source.label}/{table_name}", run_id, extracted_at)

    rows = new_rows()
    first = next(rows, None)
    if first is None:
        return Extraction(counts["read"], 0, before, before, [], table, unwatermarked)
    after = max(before, _as_datetime(newest)) if before else _as_datetime(newest)
    added = [name for name in first.columns if stored is not None and name not in stored.names]
    written = delta.write(
        uri,
        itertools.chain([first], rows),
        partition_by=[PARTITION_COLUMN],
        configuration=delta.CHANGE_DATA_FEED,
        metadata={"lakehouse.run_id": run_id, "lakehouse.watermark": after.isoformat()},
        transactions={ledger.bronze_watermark(contract.name): _micros(after)},
        claim=claim,
    )
    return Extraction(counts["read"], counts["appended"], before, after, added, written, unwatermarked)
