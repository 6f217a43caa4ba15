"""Change capture's bronze writer (each commit with its LSN ledger entry) and the table's snapshot.

The snapshot appends the table's rows each with `_op = insert` and `_lsn` just below the
slot's start (the stream's first change may sit at the start itself). It is read after the
slot exists, so a change committed meanwhile is in both; the stream's copy has the higher
`_lsn` and wins wherever rows are ordered by it, so the snapshot never misses one.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime

import polars as pl
import pyarrow as pa

from lakehouse.bronze import tombstones
from lakehouse.bronze.cdc_slot import bronze_name, lsn_text
from lakehouse.bronze.columns import DELETE, INSERT, LSN, OP, PARTITION_COLUMN, pin_types, with_audit_columns
from lakehouse.bronze.database import source_chunks
from lakehouse.bronze.watermark import WatermarkRange
from lakehouse.resources import SourceDatabase
from lakehouse.sources.contract import Contract
from lakehouse.storage import delta, ledger


@dataclass
class Capture:
    """What one run read from the change stream and appended to bronze."""

    rows_appended: int = 0
    snapshot_rows: int = 0
    inserted: int = 0
    updated: int = 0
    deleted: int = 0
    lsn_before: int | None = None
    lsn_after: int | None = None
    slot_lag_bytes: int | None = None
    warnings: list[str] = field(default_factory=list)
    table: delta.DeltaTable | None = None


def _conform(frame: pl.DataFrame, schema: pl.Schema) -> pl.DataFrame:
    """`frame` with exactly `schema`'s columns in its order, missing ones null."""
    return frame.select(
        pl.col(name).cast(dtype) if name in frame.columns else pl.lit(None, dtype).alias(name)
        for name, dtype in schema.items()
    )


@dataclass
class Writer:
    """Types, tags and writes one contract's rows to bronze, each commit with its ledger entry."""

    contract: Contract
    source: SourceDatabase
    uri: str
    run_id: str
    extracted_at: datetime
    claim: ledger.Claim
    table: delta.DeltaTable | None
    # The types bronze stores (its table's, or before it exists the first rows'): every batch
    # is held to them.
    stored: pa.Schema | None = None

    def __post_init__(self) -> None:
        if self.table is not None:
            self.stored = delta.arrow_schema(self.table)

    def shape(self, frame: pl.DataFrame, op: str | pl.Series, lsn: int | pl.Series) -> pl.DataFrame:
        """Source columns with the types bronze stores, then `_op` and `_lsn`."""
        frame = pin_types(frame, self.contract, self.stored, bronze_name(self.contract))
        frame = frame.with_columns(
            op.alias(OP) if isinstance(op, pl.Series) else pl.lit(op, pl.String).alias(OP),
            lsn.alias(LSN) if isinstance(lsn, pl.Series) else pl.lit(lsn, pl.Int64).alias(LSN),
        )
        if self.stored is None:
            self.stored = delta.to_arrow(frame.head(0)).schema
        return frame

    def tombstones(self, keys: pl.DataFrame, lsn: int) -> pl.DataFrame:
        """A delete of each key: the key, `_op = delete`, the LSN; other columns are null."""
        return keys.with_columns(pl.lit(DELETE, pl.String).alias(OP), pl.lit(lsn, pl.Int64).alias(LSN))

    def live(self, pending: list[pl.DataFrame]) -> pl.DataFrame:
        """The keys live in bronze once `pending`, rows not written yet, are."""
        key = self.contract.primary_key
        # Rows extracted by watermark, before the contract changed to cdc, have no `_op` or
        # `_lsn`: versions that come before every change.
        events = pl.LazyFrame(schema={OP: pl.String, LSN: pl.Int64})
        parts = [events, *(frame.lazy().select(*key, OP, LSN) for frame in pending)]
        if self.table is not None:
            held = [name for name in (*key, OP, LSN) if name in self.stored.names]
            parts.append(pl.scan_delta(self.table).select(held))
        return tombstones.live_keys(pl.concat(parts, how="diagonal_relaxed"), self.contract)

    def write(self, frames: Iterable[pl.DataFrame], lsn: int, metadata: dict[str, str]) -> bool:
        """Append the frames and the ledger entry `lsn` in one commit; False when there were no
        rows (nothing is committed). A commit's frames share one schema: bronze's and, for a
        list, every frame's (a column added at the source mid-batch), else the first frame's (a
        stream's frames are alike but for tombstones, which hold the key only)."""
        label = f"{self.source.label}/{self.contract.source.table}"
        columns = pl.Schema(pl.DataFrame(self.stored.empty_table()).schema if self.stored else {})
        for frame in frames if isinstance(frames, list) else []:
            columns = pl.Schema({**columns, **frame.schema})

        def audited() -> Iterator[pl.DataFrame]:
            nonlocal columns
            widened = isinstance(frames, list)
            for frame in frames:
                if frame.is_empty():
                    continue
                if not widened:
                    columns, widened = pl.Schema({**columns, **frame.schema}), True
                yield with_audit_columns(_conform(frame, columns), label, self.run_id, self.extracted_at)

        rows = audited()
        first = next(rows, None)
        if first is None:
            return False
        self.table = delta.write(
            self.uri,
            itertools.chain([first], rows),
            partition_by=[PARTITION_COLUMN],
            configuration=delta.CHANGE_DATA_FEED,
            metadata={"lakehouse.run_id": self.run_id, "lakehouse.lsn": lsn_text(lsn), **metadata},
            transactions={ledger.bronze_lsn(self.contract.name): lsn},
            claim=self.claim,
        )
        self.stored = delta.arrow_schema(self.table)
        return True


def snapshot(writer: Writer, start: int, tombstones: bool, result: Capture) -> int:
    """Append the table's rows as of now, just before LSN `start`; with `tombstones`, also a
    tombstone for every key bronze holds live that the table no longer has. The rows read."""
    contract, source = writer.contract, writer.source
    assert contract.watermark is not None
    everything = WatermarkRange(
        contract.watermark.column, pl.Null, contract.timestamp_form(contract.watermark.column)
    )
    key = contract.primary_key
    seen: list[pl.DataFrame] = []
    counts = {"rows": 0, "tombstones": 0}
    live_before = writer.live([]) if tombstones else None

    before_stream = start - 1

    def frames() -> Iterator[pl.DataFrame]:
        for chunk in source_chunks(contract, source, everything, what="snapshotting"):
            counts["rows"] += chunk.height
            if chunk.is_empty():
                continue
            shaped = writer.shape(chunk, INSERT, before_stream)
            seen.append(shaped.select(key))
            yield shaped
        if live_before is not None and not live_before.is_empty():
            gone = live_before.join(pl.concat(seen) if seen else live_before.head(0), on=key, how="anti")
            counts["tombstones"] = gone.height
            yield writer.tombstones(gone, before_stream)

    if writer.write(frames(), start, {"lakehouse.capture": "snapshot"}):
        result.rows_appended += counts["rows"] + counts["tombstones"]
        result.deleted += counts["tombstones"]
    return counts["rows"]
