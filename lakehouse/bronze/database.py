"""Incremental extraction of a source table into its append-only bronze Delta table.

Each run reads the rows whose watermark column is at or after the last watermark minus the
contract's lookback, drops the row versions bronze already holds, and appends the rest in
one commit that also records the new watermark (as a Delta app transaction, which survives
log checkpoints). A crash before that commit changes nothing; the next run reads again.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import polars as pl

from lakehouse import delta
from lakehouse.bronze.columns import PARTITION_COLUMN, pin_types, with_audit_columns
from lakehouse.contract import Contract
from lakehouse.source import SourceDatabase, timestamp_text

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class Extraction:
    rows_read: int
    rows_appended: int
    watermark_before: datetime | None
    watermark_after: datetime | None
    added_columns: list[str]
    table: delta.DeltaTable | None


def watermark_key(contract: Contract) -> str:
    return f"lakehouse.bronze.{contract.name}.watermark"


def read_watermark(table: delta.DeltaTable | None, contract: Contract) -> datetime | None:
    """The highest watermark value bronze has committed, as stored in its app transaction."""
    micros = delta.marker(table, watermark_key(contract))
    return None if micros is None else EPOCH + timedelta(microseconds=micros)


def _as_datetime(value: object) -> datetime:
    moment = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _micros(moment: datetime) -> int:
    return (moment - EPOCH) // timedelta(microseconds=1)


def extract_table(
    contract: Contract, source: SourceDatabase, uri: str, run_id: str, now: datetime | None = None
) -> Extraction:
    assert contract.watermark is not None and contract.is_database
    table_name, column = contract.source.table, contract.watermark.column
    table = delta.open_table(uri)
    before = read_watermark(table, contract)

    if before is None:
        frame = source.read(f"SELECT * FROM {table_name}", what=f"extracting {table_name}")
        lower = None
    else:
        lower = before - contract.watermark.lookback
        frame = source.read(
            f"SELECT * FROM {table_name} WHERE {column} >= {source.placeholder(1)}",
            [source.timestamp_parameter(lower)],
            what=f"extracting {table_name}",
        )
    rows_read = frame.height
    stored = delta.arrow_schema(table) if table else None
    frame = pin_types(frame, contract, stored, f"bronze/{contract.name}")

    if table is not None and lower is not None and not frame.is_empty():
        # The lookback re-reads recent rows on purpose (to catch late commits in the source);
        # the versions bronze already has are dropped by (primary key, watermark value).
        identity = [*contract.primary_key, column]
        bound = timestamp_text(lower) if frame.schema[column] == pl.String else lower
        seen = pl.scan_delta(uri).filter(pl.col(column) >= pl.lit(bound)).select(identity).collect()
        frame = frame.join(seen, on=identity, how="anti", nulls_equal=True)

    if frame.is_empty():
        return Extraction(rows_read, 0, before, before, [], table)

    newest = _as_datetime(frame.get_column(column).max())
    after = max(before, newest) if before else newest
    added = [name for name in frame.columns if stored is not None and name not in stored.names]
    frame = with_audit_columns(frame, f"{source.label}/{table_name}", run_id, now or datetime.now(UTC))
    written = delta.write(
        uri,
        frame,
        partition_by=[PARTITION_COLUMN],
        configuration=delta.CHANGE_DATA_FEED,
        metadata={
            "lakehouse.run_id": run_id,
            "lakehouse.watermark": after.isoformat(),
            "lakehouse.rows": str(frame.height),
        },
        transactions={watermark_key(contract): _micros(after)},
    )
    return Extraction(rows_read, frame.height, before, after, added, written)
