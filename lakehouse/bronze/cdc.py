"""Change data capture: a PostgreSQL table's change stream, read into its append-only bronze table.

For a contract with `capture: cdc` the lakehouse creates and owns a publication of the table
and a logical replication slot with the built-in `pgoutput` plugin, both named by
`capture_name` (`lakehouse_<contract>_<digest of the bronze table's location>`, so two
lakehouses reading one server never share a slot). Nothing is installed on the server.

- First run: the publication, then the slot, then the table's rows as a snapshot, each with
  `_op = insert` and `_lsn` just below the slot's start (the stream's first change may sit at
  the start itself). The snapshot is read after the slot exists, so a change committed
  meanwhile is in both; the stream's copy has the higher `_lsn` and wins wherever rows are
  ordered by it, so the snapshot never misses one. The ledger holds the slot's start.
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

import hashlib
import itertools
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime

import polars as pl
import pyarrow as pa

from lakehouse.bronze import pgoutput, tombstones
from lakehouse.bronze.columns import (
    DELETE,
    INSERT,
    LSN,
    OP,
    PARTITION_COLUMN,
    UPDATE,
    pin_types,
    with_audit_columns,
)
from lakehouse.bronze.database import check_source_columns, source_chunks
from lakehouse.bronze.watermark import WatermarkRange
from lakehouse.resources import SourceDatabase
from lakehouse.sources.contract import Contract
from lakehouse.sources.errors import SourceError
from lakehouse.storage import delta, ledger
from lakehouse.storage.sql import qualified, quoted

# Changes a batch holds: it ends with the transaction that reaches this many, so memory follows
# the batch (and the largest transaction), not the backlog.
BATCH_CHANGES = 20_000
# Marks the publication as the lakehouse's own (its comment); a slot is known by its name.
OWNER_MARK = "lakehouse change capture"
SLOT_PLUGIN = "pgoutput"


class CaptureError(SourceError):
    """A source that change capture cannot read; the message says why and what to change."""


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


def lsn_text(lsn: int | None) -> str:
    """An LSN as PostgreSQL writes it (`16/B374D848`)."""
    return "none" if lsn is None else f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


def capture_name(contract: Contract, bronze_uri: str) -> str:
    """The name of the slot and of the publication the lakehouse owns for this contract's
    bronze table (slot names: at most 63 lower-case letters, digits and underscores)."""
    digest = hashlib.sha256(bronze_uri.encode()).hexdigest()[:8]
    return f"lakehouse_{contract.name.lower()[:40]}_{digest}"


def _name(contract: Contract) -> str:
    return f"bronze/{contract.name}"


def check_source(contract: Contract, source: SourceDatabase) -> None:
    """Fail with one line when the source cannot be change-captured: not PostgreSQL,
    `wal_level` below logical, a role without replication rights, or a table whose updates
    and deletes do not say which row they changed."""
    name = _name(contract)
    if source.dialect != "postgresql":
        raise CaptureError(
            f"{name}: capture: cdc needs a PostgreSQL source, and {source.label} is SQLite; "
            "use capture: watermark"
        )
    server = source.read(
        "SELECT current_setting('wal_level') AS wal_level, current_user AS who, "
        "(SELECT rolsuper OR rolreplication FROM pg_roles WHERE rolname = current_user) AS may_replicate",
        what=f"{name}: checking change capture on",
    ).row(0, named=True)
    if server["wal_level"] != "logical":
        raise CaptureError(
            f"{name}: {source.label} has wal_level = {server['wal_level']}; change capture needs "
            "wal_level = logical (ALTER SYSTEM SET wal_level = logical, then restart the server: "
            "the setting takes effect only at start)"
        )
    if not server["may_replicate"]:
        raise CaptureError(
            f"{name}: role {server['who']} on {source.label} may not use replication slots: "
            f"ALTER ROLE {quoted(server['who'])} REPLICATION (or use capture: watermark)"
        )
    identity = source.read(
        "SELECT c.relreplident AS identity, EXISTS (SELECT 1 FROM pg_index i "
        "WHERE i.indrelid = c.oid AND i.indisprimary) AS has_key FROM pg_class c WHERE c.oid = $1::regclass",
        [qualified(contract.source.table)],
        what=f"{name}: checking source table {contract.source.table}",
    ).row(0, named=True)
    if identity["identity"] == "n" or (identity["identity"] == "d" and not identity["has_key"]):
        raise CaptureError(
            f"{name}: source table {contract.source.table} has no primary key or replica identity, "
            "so its updates and deletes cannot name their row (and PostgreSQL would refuse its "
            "UPDATEs once published): add a primary key, or use capture: watermark"
        )


def _slot(source: SourceDatabase, name: str, contract: Contract) -> int | None:
    """The slot's confirmed position, None when there is no such slot; a slot of that name
    that is not a pgoutput slot of this database is refused, never used."""
    found = source.read(
        "SELECT plugin, database = current_database() AS here, "
        "(confirmed_flush_lsn - '0/0')::bigint AS confirmed FROM pg_replication_slots WHERE slot_name = $1",
        [name],
        what=f"{_name(contract)}: reading replication slot {name}",
    )
    if found.is_empty():
        return None
    slot = found.row(0, named=True)
    if slot["plugin"] != SLOT_PLUGIN or not slot["here"]:
        raise CaptureError(
            f"{_name(contract)}: replication slot {name} exists but is not the lakehouse's "
            f"({slot['plugin']} slot{'' if slot['here'] else ' of another database'}); drop or rename it"
        )
    return slot["confirmed"]


def _publication_owned(source: SourceDatabase, name: str) -> bool | None:
    """Whether the publication is the lakehouse's; None when it does not exist."""
    found = source.read(
        "SELECT obj_description(oid, 'pg_publication') AS note FROM pg_publication WHERE pubname = $1",
        [name],
        what=f"reading publication {name}",
    )
    return None if found.is_empty() else (found.item() or "").startswith(OWNER_MARK)


def _publication_lost(contract: Contract, source: SourceDatabase, name: str) -> str | None:
    """When the slot's publication was dropped outside the lakehouse, the slot cannot be read
    again (its changes name a publication that no longer exists): drop it, and say so."""
    if _publication_owned(source, name) is not None:
        return None
    source.read(
        "SELECT 1 AS dropped FROM pg_drop_replication_slot($1)",
        [name],
        what=f"{_name(contract)}: dropping replication slot {name}",
    )
    return (
        f"{_name(contract)}: publication {name} is gone (dropped outside the lakehouse?), and its slot "
        "cannot be read without it: created both again and re-read the table whole, with a tombstone "
        "for every key it no longer holds"
    )


def _create_slot(contract: Contract, source: SourceDatabase, name: str) -> int:
    """Create the publication (if absent) and the slot; the slot's start position."""
    owned = _publication_owned(source, name)
    if owned is False:
        raise CaptureError(
            f"{_name(contract)}: publication {name} exists but is not the lakehouse's; drop or rename it"
        )
    if owned is None:
        source.execute(
            [
                f"CREATE PUBLICATION {quoted(name)} FOR TABLE {qualified(contract.source.table)}",
                f"COMMENT ON PUBLICATION {quoted(name)} IS '{OWNER_MARK} of contract {contract.name}'",
            ],
            what=f"{_name(contract)}: creating publication {name}",
        )
    created = source.read(
        "SELECT (lsn - '0/0')::bigint AS lsn FROM pg_create_logical_replication_slot($1, $2)",
        [name, SLOT_PLUGIN],
        what=f"{_name(contract)}: creating replication slot {name}",
    )
    return created.item()


def release(contract: Contract, source: SourceDatabase, bronze_uri: str) -> list[str]:
    """Drop the contract's slot and publication, when they are the lakehouse's; what was dropped."""
    name = capture_name(contract, bronze_uri)
    dropped = []
    if _slot(source, name, contract) is not None:
        source.read(
            "SELECT 1 AS dropped FROM pg_drop_replication_slot($1)",
            [name],
            what=f"{_name(contract)}: dropping replication slot {name}",
        )
        dropped.append(f"replication slot {name}")
    if _publication_owned(source, name):
        source.execute([f"DROP PUBLICATION {quoted(name)}"], what=f"{_name(contract)}: dropping publication")
        dropped.append(f"publication {name}")
    return dropped


def slot_lag(contract: Contract, source: SourceDatabase, bronze_uri: str) -> int | None:
    """Bytes of WAL the contract's slot keeps on the server; None when there is no slot."""
    lag = source.read(
        "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint AS lag "
        "FROM pg_replication_slots WHERE slot_name = $1",
        [capture_name(contract, bronze_uri)],
        what=f"{_name(contract)}: reading slot lag",
    )
    return None if lag.is_empty() else lag.item()


def _conform(frame: pl.DataFrame, schema: pl.Schema) -> pl.DataFrame:
    """`frame` with exactly `schema`'s columns in its order, missing ones null."""
    return frame.select(
        pl.col(name).cast(dtype) if name in frame.columns else pl.lit(None, dtype).alias(name)
        for name, dtype in schema.items()
    )


@dataclass
class _Writer:
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
        frame = pin_types(frame, self.contract, self.stored, _name(self.contract))
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
        return tombstones.live_keys(pl.concat(parts, how="diagonal_relaxed"), self.contract).collect()

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
        _name(contract),
    )


def _capture_once(
    contract: Contract, source: SourceDatabase, uri: str, run_id: str, now: datetime, batch_changes: int
) -> Capture:
    check_source(contract, source)
    check_source_columns(contract, source)
    table = delta.open_table(uri)
    writer = _Writer(contract, source, uri, run_id, now, ledger.Claim(uri, table), table)
    result = Capture(lsn_before=ledger.read(table, ledger.bronze_lsn(contract.name)))
    name = capture_name(contract, uri)
    confirmed = _slot(source, name, contract)
    position = result.lsn_before
    lost = None if confirmed is None else _publication_lost(contract, source, name)
    if lost:
        result.warnings.append(lost)
        confirmed = None
    if confirmed is None or position is None:
        if confirmed is None and position is not None and not lost:
            result.warnings.append(
                f"{_name(contract)}: replication slot {name} is gone (dropped outside the lakehouse?), so "
                f"changes after LSN {lsn_text(position)} may be missing from the stream: created it again "
                "and re-read the table whole, with a tombstone for every key it no longer holds"
            )
        start = confirmed if confirmed is not None else _create_slot(contract, source, name)
        # Bronze may hold keys already (a stream lost, a contract that was watermark-extracted):
        # those the table no longer has get a tombstone.
        result.snapshot_rows = _snapshot(writer, start, tombstones=table is not None, result=result)
        position = start
    # The server's position before reading: once the stream is read to its end, the slot may
    # move up to it, so a table that rarely changes does not keep the WAL of every other one.
    wal_at_start = source.read(
        "SELECT (pg_current_wal_lsn() - '0/0')::bigint AS lsn",
        what=f"{_name(contract)}: reading the WAL position",
    ).item()
    while True:
        changes = _peek(contract, source, name, batch_changes)
        if changes.is_empty():
            break
        batch_end = _apply(writer, changes, position, result)
        if batch_end is None:
            break
        _advance(contract, source, name, batch_end)
        position = max(position, batch_end)
    if wal_at_start > position:
        _advance(contract, source, name, wal_at_start)
    result.lsn_after = ledger.read(writer.table, ledger.bronze_lsn(contract.name))
    result.slot_lag_bytes = slot_lag(contract, source, uri)
    result.table = writer.table
    return result


def _snapshot(writer: _Writer, start: int, tombstones: bool, result: Capture) -> int:
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


def _peek(contract: Contract, source: SourceDatabase, name: str, limit: int) -> pl.DataFrame:
    return source.read(
        "SELECT (lsn - '0/0')::bigint AS lsn, data FROM pg_logical_slot_peek_binary_changes("
        "$1, NULL, $2::int, 'proto_version', '1', 'publication_names', $3)",
        [name, limit, name],
        what=f"{_name(contract)}: reading replication slot {name}",
    )


def _advance(contract: Contract, source: SourceDatabase, name: str, lsn: int) -> None:
    """Let the slot forget what came before `lsn`: only once bronze has committed it."""
    # Never behind where the slot is (another run may have moved it): that would be an error.
    source.read(
        "SELECT slot_name FROM pg_replication_slot_advance($1, GREATEST('0/0'::pg_lsn + $2::numeric, "
        "(SELECT confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = $1)))",
        [name, lsn],
        what=f"{_name(contract)}: advancing replication slot {name}",
    )


@dataclass
class _Segment:
    """Consecutive changes of one relation, as text, waiting to be typed together."""

    relation: pgoutput.Relation
    rows: list[list[pgoutput.Value]] = field(default_factory=list)
    ops: list[str] = field(default_factory=list)
    lsns: list[int] = field(default_factory=list)


def _apply(writer: _Writer, changes: pl.DataFrame, position: int, result: Capture) -> int | None:
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
                        f"{_name(contract)}: the change stream sent a change at LSN {lsn_text(change_lsn)} "
                        f"of relation {change.relation} before describing it"
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
                f"{_name(contract)}: a delete in {relation.namespace}.{relation.name} at LSN {lsn_text(lsn)} "
                f"does not carry the primary key {', '.join(contract.primary_key)}: its replica identity "
                "must include those columns (the default, the primary key, does)"
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
    writer: _Writer, frame: pl.DataFrame, unchanged: dict[str, list[bool]], earlier: list[pl.DataFrame]
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
                f"{_name(writer.contract)}: an update at LSN {lsn_text(unknown.get_column(LSN)[0])} left "
                f"out column '{column}' (a large value it did not change) and bronze holds no earlier "
                f"version of the row: ALTER TABLE {writer.contract.source.table} REPLICA IDENTITY FULL "
                "makes updates carry it"
            )
        history = history.with_columns(pl.col(column).gather(pl.col("__from")))
    filled = history.filter(pl.col("__row").is_not_null()).sort("__row")
    return frame.with_columns(filled.get_column(column) for column in columns)


def _typed(writer: _Writer, segment: _Segment, earlier: list[pl.DataFrame]) -> pl.DataFrame:
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
        what=f"{_name(writer.contract)}: reading the column types of {relation.name}",
    ).get_column("type")
    selected = ", ".join(
        f"CAST(e.v->>{index} AS {kind}) AS {quoted(column.name)}"
        for index, (column, kind) in enumerate(zip(relation.columns, types, strict=True))
    )
    frame = writer.source.read(
        f"SELECT {selected} FROM json_array_elements($1::json) WITH ORDINALITY AS e(v, n) ORDER BY e.n",
        [json.dumps(rows)],
        what=f"{_name(writer.contract)}: typing changes of {relation.name}",
    )
    frame = writer.shape(frame, pl.Series(OP, segment.ops, pl.String), pl.Series(LSN, segment.lsns, pl.Int64))
    return _fill_unchanged(writer, frame, unchanged, earlier) if unchanged else frame
