"""Change data capture: a PostgreSQL table's change stream, read into its append-only bronze table.

- First run: the publication, then the slot (`lakehouse.bronze.cdc_slot`), then the table's
  rows as a snapshot (`lakehouse.bronze.cdc_writer`). The ledger holds the slot's start.
- Every run: the slot's changes are peeked (never consumed) BATCH_CHANGES at a time, whole
  transactions, decoded (`lakehouse.bronze.pgoutput`), typed by PostgreSQL itself (the text
  values cast to the relation's column types in one query) and appended with `_op`
  (insert/update/delete) and `_lsn` in one Delta commit whose ledger entry `bronze_lsn` is
  the end of the batch's last transaction. Only after that commit is the slot advanced. A
  run killed in between peeks the same transactions again and skips those whose end is at or
  before the ledger's: none lost, none applied twice.
- A delete is a tombstone: the key, every other column null. A TRUNCATE is a tombstone for
  every key bronze holds live. A slot dropped outside the lakehouse means changes may be lost:
  the next run warns, creates the slot again and re-reads the table whole, with a tombstone for
  every live key the table no longer has.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime

import polars as pl

from lakehouse.bronze import cdc_slot, pgoutput
from lakehouse.bronze.cdc_slot import CaptureError, bronze_name, lsn_text
from lakehouse.bronze.cdc_writer import Capture, Writer, snapshot
from lakehouse.bronze.columns import DELETE, INSERT, LSN, OP, UPDATE
from lakehouse.bronze.database import check_source_columns
from lakehouse.resources import SourceDatabase
from lakehouse.sources.contract import Contract
from lakehouse.storage import delta, ledger
from lakehouse.storage.sql import quoted

# Changes a batch holds: it ends with the transaction that reaches this many, so memory follows
# the batch (and the largest transaction), not the backlog.
BATCH_CHANGES = 20_000


def capture(
    contract: Contract,
    source: SourceDatabase,
    uri: str,
    run_id: str,
    now: datetime | None = None,
    batch_changes: int = BATCH_CHANGES,
) -> Capture:
    """Append the source table's changes since bronze's LSN (see the module's docstring)."""
    return ledger.redo_when_moved(
        lambda: _capture_once(contract, source, uri, run_id, now or datetime.now(UTC), batch_changes),
        bronze_name(contract),
    )


def _capture_once(
    contract: Contract, source: SourceDatabase, uri: str, run_id: str, now: datetime, batch_changes: int
) -> Capture:
    cdc_slot.check_source(contract, source)
    check_source_columns(contract, source)
    table = delta.open_table(uri)
    writer = Writer(contract, source, uri, run_id, now, ledger.Claim(uri, table), table)
    result = Capture(lsn_before=ledger.read(table, ledger.bronze_lsn(contract.name)))
    name = cdc_slot.capture_name(contract, uri)
    confirmed = cdc_slot.find_slot(source, name, contract)
    position = result.lsn_before
    lost = None if confirmed is None else cdc_slot.publication_lost(contract, source, name)
    if lost:
        result.warnings.append(lost)
        confirmed = None
    if confirmed is None or position is None:
        if confirmed is None and position is not None and not lost:
            result.warnings.append(
                f"{bronze_name(contract)}: replication slot {name} is gone (dropped outside the lakehouse?), "
                f"so changes after LSN {lsn_text(position)} may be missing from the stream: created it again "
                "and re-read the table whole, with a tombstone for every key it no longer holds"
            )
        start = confirmed if confirmed is not None else cdc_slot.create_slot(contract, source, name)
        # Bronze may hold keys already (a stream lost, a contract that was watermark-extracted):
        # those the table no longer has get a tombstone.
        result.snapshot_rows = snapshot(writer, start, tombstones=table is not None, result=result)
        position = start
    # The server's position before reading: once the stream is read to its end, the slot may
    # move up to it, so a table that rarely changes does not keep the WAL of every other one.
    wal_at_start = source.read(
        "SELECT (pg_current_wal_lsn() - '0/0')::bigint AS lsn",
        what=f"{bronze_name(contract)}: reading the WAL position",
    ).item()
    while True:
        changes = cdc_slot.peek(contract, source, name, batch_changes)
        if changes.is_empty():
            break
        batch_end = _apply(writer, changes, position, result)
        if batch_end is None:
            break
        cdc_slot.advance(contract, source, name, batch_end)
        position = max(position, batch_end)
    if wal_at_start > position:
        cdc_slot.advance(contract, source, name, wal_at_start)
    result.lsn_after = ledger.read(writer.table, ledger.bronze_lsn(contract.name))
    result.slot_lag_bytes = cdc_slot.slot_lag(contract, source, uri)
    result.table = writer.table
    return result


@dataclass
class _Segment:
    """Consecutive changes of one relation, as text, waiting to be typed together."""

    relation: pgoutput.Relation
    rows: list[list[pgoutput.Value]] = field(default_factory=list)
    ops: list[str] = field(default_factory=list)
    lsns: list[int] = field(default_factory=list)


def _apply(writer: Writer, changes: pl.DataFrame, position: int, result: Capture) -> int | None:
    """Write the batch's transactions that end after `position`; the end of its last one (None:
    the batch held no whole transaction)."""
    contract = writer.contract
    relations: dict[int, pgoutput.Relation] = {}
    typed: list[pl.DataFrame] = []
    segment: _Segment | None = None
    transaction: list[tuple[int, pgoutput.Message]] = []
    batch_end: int | None = None

    def flush() -> None:
        nonlocal segment
        if segment is not None and segment.rows:
            typed.append(_typed(writer, segment, typed))
        segment = None

    for lsn, data in changes.iter_rows():
        message = pgoutput.decode(data)
        if isinstance(message, pgoutput.Begin):
            transaction = []
        elif isinstance(message, pgoutput.Relation):
            relations[message.oid] = message
        elif isinstance(message, pgoutput.Insert | pgoutput.Update | pgoutput.Delete | pgoutput.Truncate):
            transaction.append((lsn, message))
        elif isinstance(message, pgoutput.Commit):
            batch_end = message.end_lsn
            if message.end_lsn <= position:
                continue  # committed to bronze by a run that died before advancing the slot
            for change_lsn, change in transaction:
                if isinstance(change, pgoutput.Truncate):
                    flush()
                    keys = writer.live(typed)
                    if not keys.is_empty():
                        typed.append(writer.tombstones(keys, change_lsn))
                    result.deleted += keys.height
                    continue
                relation = relations.get(change.relation)
                if relation is None:
                    raise CaptureError(
                        f"{bronze_name(contract)}: the change stream sent a change at LSN "
                        f"{lsn_text(change_lsn)} of relation {change.relation} before describing it"
                    )
                if segment is None or segment.relation.columns != relation.columns:
                    flush()
                    segment = _Segment(relation)
                op, values = _row(contract, relation, change, change_lsn)
                segment.rows.append(values)
                segment.ops.append(op)
                segment.lsns.append(change_lsn)
                result.inserted += op == INSERT
                result.updated += op == UPDATE
                result.deleted += op == DELETE
    flush()
    if batch_end is None or batch_end <= position:
        return batch_end
    appended = sum(frame.height for frame in typed)
    if writer.write(typed, batch_end, {"lakehouse.capture": "changes"}):
        result.rows_appended += appended
    return batch_end


def _row(
    contract: Contract, relation: pgoutput.Relation, change: pgoutput.Message, lsn: int
) -> tuple[str, list[pgoutput.Value]]:
    """The change's operation and its row's text values in the relation's column order."""
    names = [column.name for column in relation.columns]
    if isinstance(change, pgoutput.Delete):
        kept = set(contract.primary_key)
        values = [value if name in kept else None for name, value in zip(names, change.old, strict=True)]
        if any(values[names.index(name)] is None for name in contract.primary_key if name in names):
            raise CaptureError(
                f"{bronze_name(contract)}: a delete in {relation.namespace}.{relation.name} at LSN "
                f"{lsn_text(lsn)} does not carry the primary key {', '.join(contract.primary_key)}: its "
                "replica identity must include those columns (the default, the primary key, does)"
            )
        return DELETE, values
    assert isinstance(change, pgoutput.Insert | pgoutput.Update)
    values = list(change.new)
    old = change.old if isinstance(change, pgoutput.Update) and change.old else None
    for index, value in enumerate(values):
        # A large value the update did not change is not sent: the old row holds it under
        # replica identity full; otherwise it stays UNCHANGED, for `_fill_unchanged`.
        if value is pgoutput.UNCHANGED and old is not None:
            values[index] = old[index]
    return (INSERT if isinstance(change, pgoutput.Insert) else UPDATE), values


def _fill_unchanged(
    writer: Writer, frame: pl.DataFrame, unchanged: dict[str, list[bool]], earlier: list[pl.DataFrame]
) -> pl.DataFrame:
    """`frame` with each value an update left out (`unchanged`: per column, which rows) taken
    from the key's previous version, in this batch (`earlier`, then `frame`) or in bronze."""
    key, columns = writer.contract.primary_key, list(unchanged)
    marks = [f"__unchanged_{index}" for index in range(len(columns))]
    marked = frame.with_columns(
        pl.Series(mark, unchanged[column], pl.Boolean) for mark, column in zip(marks, columns, strict=True)
    ).with_row_index("__row")
    keys = marked.filter(pl.any_horizontal(marks)).select(key).unique()
    wanted = [*key, *columns, LSN]
    versions = [part.lazy().select(wanted) for part in earlier]
    if writer.table is not None:
        held = [name for name in wanted if name in writer.stored.names]
        versions.insert(0, pl.scan_delta(writer.table).join(keys.lazy(), on=key, how="semi").select(held))
    before = pl.concat([*versions, pl.LazyFrame(schema=frame.select(wanted).schema)], how="diagonal_relaxed")
    history = pl.concat(
        [before.join(keys.lazy(), on=key, how="semi").collect(), marked], how="diagonal_relaxed"
    ).sort(LSN, nulls_last=False, maintain_order=True)
    history = history.with_columns(pl.col(mark).fill_null(False) for mark in marks).with_row_index("__at")
    # Each left-out value is the one of the key's last row that sent it (null included).
    for mark, column in zip(marks, columns, strict=True):
        history = history.with_columns(
            pl.when(~pl.col(mark)).then(pl.col("__at")).forward_fill().over(key).alias("__from")
        )
        unknown = history.filter(pl.col(mark) & pl.col("__from").is_null())
        if not unknown.is_empty():
            raise CaptureError(
                f"{bronze_name(writer.contract)}: an update at LSN {lsn_text(unknown.get_column(LSN)[0])} "
                f"left out column '{column}' (a large value it did not change) and bronze holds no earlier "
                f"version of the row: ALTER TABLE {writer.contract.source.table} REPLICA IDENTITY FULL "
                "makes updates carry it"
            )
        history = history.with_columns(pl.col(column).gather(pl.col("__from")))
    filled = history.filter(pl.col("__row").is_not_null()).sort("__row")
    return frame.with_columns(filled.get_column(column) for column in columns)


def _typed(writer: Writer, segment: _Segment, earlier: list[pl.DataFrame]) -> pl.DataFrame:
    """The segment's rows with the source's types: PostgreSQL casts the text values itself, so
    a change is typed exactly as the snapshot's `SELECT` types the same row. `earlier`: the
    batch's rows before the segment."""
    relation = segment.relation
    unchanged = {
        column.name: [row[index] is pgoutput.UNCHANGED for row in segment.rows]
        for index, column in enumerate(relation.columns)
    }
    unchanged = {name: marks for name, marks in unchanged.items() if any(marks)}
    rows = [[None if value is pgoutput.UNCHANGED else value for value in row] for row in segment.rows]
    types = writer.source.read(
        "SELECT format_type(t.oid, t.modifier) AS type FROM (VALUES "
        + ", ".join(f"({int(c.type_oid)}::oid, {int(c.type_modifier)})" for c in relation.columns)
        + ") AS t(oid, modifier)",
        what=f"{bronze_name(writer.contract)}: reading the column types of {relation.name}",
    ).get_column("type")
    selected = ", ".join(
        f"CAST(e.v->>{index} AS {kind}) AS {quoted(column.name)}"
        for index, (column, kind) in enumerate(zip(relation.columns, types, strict=True))
    )
    frame = writer.source.read(
        f"SELECT {selected} FROM json_array_elements($1::json) WITH ORDINALITY AS e(v, n) ORDER BY e.n",
        [json.dumps(rows)],
        what=f"{bronze_name(writer.contract)}: typing changes of {relation.name}",
    )
    frame = writer.shape(frame, pl.Series(OP, segment.ops, pl.String), pl.Series(LSN, segment.lsns, pl.Int64))
    return _fill_unchanged(writer, frame, unchanged, earlier) if unchanged else frame
