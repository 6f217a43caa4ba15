"""Incremental extraction of a source table into its append-only bronze Delta table.

Each run reads the rows whose watermark column is at or after the last watermark minus the
contract's lookback, up to the source's newest watermark when the run starts, drops the row
versions bronze already holds, and appends the rest in one commit that also records the new
watermark (as a Delta app transaction, which survives log checkpoints). A crash before that
commit changes nothing; the next run reads again.

The same commit appends a tombstone for each key bronze holds that the source no longer has
(lakehouse/bronze/deletes.py), on every run or on the contract's cadence, starting from the
summary of the live keys the last run left (lakehouse/bronze/live_keys.py).

The rows are read in chunks of CHUNK_ROWS and streamed into that one commit: memory follows
the chunk, not the table, however large the first load.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime

import polars as pl
import pyarrow as pa

from lakehouse.bronze import deletes, tombstones
from lakehouse.bronze.columns import OP, PARTITION_COLUMN, UPSERT, pin_types, with_audit_columns
from lakehouse.bronze.live_keys import LiveKeys, find_deletes_from, first_load, remaining
from lakehouse.bronze.source_seen import SourceSeen
from lakehouse.bronze.watermark import WatermarkRange
from lakehouse.resources import SourceDatabase
from lakehouse.sources.contract import Contract, DeleteCadence
from lakehouse.sources.errors import reading
from lakehouse.sources.timestamps import instant
from lakehouse.storage import delta, ledger
from lakehouse.storage.sql import qualified, quoted

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
    rows_deleted: int
    deletes_checked: str  # how deletes were looked for, or why not
    live_keys: LiveKeys | None = None  # the summary the next run starts from
    source_keys: deletes.SourceKeys | None = None  # the source's, when deletes were looked for by ranges
    # The run saw the whole source: it looked for deletes, or had none to look for.
    whole_source: bool = False


def read_watermark(table: delta.DeltaTable | None, contract: Contract) -> datetime | None:
    """The highest watermark value bronze has committed, as stored in its ledger."""
    micros = ledger.read(table, ledger.bronze_watermark(contract.name))
    return None if micros is None else ledger.moment(micros)


def source_chunks(
    contract: Contract,
    source: SourceDatabase,
    bounds: WatermarkRange,
    columns: list[str] | None = None,
    what: str = "extracting",
    keep_admitted: bool = False,
) -> Iterator[pl.DataFrame]:
    """The `columns` (all by default) of the source rows in the watermark range `bounds`,
    CHUNK_ROWS at a time, as the driver types them.

    A load with no lower bound pages through the primary key, the table's own order; later
    runs through (watermark, primary key), which the watermark's index serves. Reading a whole
    table in watermark order would jump around it, as rows that changed since their creation
    are spread over the whole table. The source's condition may admit rows just outside the
    range (see `lakehouse.bronze.watermark`): they are dropped here, those below it kept with
    `keep_admitted`.
    """
    column = contract.watermark.column
    order = contract.primary_key if bounds.lower is None else [column, *contract.primary_key]
    ordered = ", ".join(map(quoted, order))
    selected = ", ".join(map(quoted, columns)) if columns else "*"
    after: tuple = ()
    while True:
        # Past the first page the keyset bounds the rows from below.
        range_bounds = replace(bounds, lower=None) if after else bounds
        conditions, parameters = range_bounds.sql(quoted(column), source.placeholder, 1)
        if after:
            first = len(parameters) + 1
            places = ", ".join(source.placeholder(position) for position in range(first, first + len(order)))
            conditions.append(f"({ordered}) > ({places})")
            parameters.extend(after)
        # No condition at all: a snapshot of every row (change capture's first load).
        where = " AND ".join(conditions) or "TRUE"
        page = source.read(
            f"SELECT {selected} FROM {qualified(contract.source.table)} WHERE {where} "
            f"ORDER BY {ordered} LIMIT {CHUNK_ROWS}",
            parameters,
            what=reading(contract, what),
        )
        kept = replace(bounds, lower=None) if keep_admitted else bounds
        yield page.filter(replace(kept, kind=page.schema[column]).exact())
        if page.height < CHUNK_ROWS:
            return
        after = page.select(order).row(-1)


def source_range(
    contract: Contract, source: SourceDatabase, lower: datetime | None = None, upper: datetime | None = None
) -> tuple[WatermarkRange, int]:
    """The range [lower, upper] of the source's watermark column, up to its newest value now
    (rows changed while a range is read wait for the next), and the number of rows with no
    watermark, which no range holds."""
    table_name, column = qualified(contract.source.table), contract.watermark.column
    # Rows changed while the range is read wait for the next run.
    probe = source.read(
        f"SELECT (SELECT max({quoted(column)}) FROM {table_name}) AS newest, "
        f"(SELECT count(*) FROM {table_name} WHERE {quoted(column)} IS NULL) AS unwatermarked",
        what=reading(contract),
    )
    newest, unwatermarked = probe.row(0)
    form = contract.timestamp_form(column)
    return WatermarkRange(column, probe.schema["newest"], form, lower, upper, newest), unwatermarked


def newest_instant(contract: Contract, source: SourceDatabase, bounds: WatermarkRange) -> datetime | None:
    """The latest instant the source's watermark column holds, up to `bounds.newest`.

    The greatest value is the latest instant, except in text: there the values that may name
    a later instant than the greatest text are read (`WatermarkRange.candidates_sql`).
    """
    latest = instant(bounds.newest, bounds.form)
    if not bounds.is_text:
        return latest
    column = contract.watermark.column
    conditions, parameters = bounds.candidates_sql(quoted(column), source.placeholder, latest)
    values = source.read(
        f"SELECT {quoted(column)} FROM {qualified(contract.source.table)} WHERE {' AND '.join(conditions)}",
        parameters,
        what=reading(contract),
    )
    found = values.select(replace(bounds, kind=values.schema[column]).instant().max()).item()
    return max(filter(None, [latest, found]), default=None)


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
    contract: Contract,
    source: SourceDatabase,
    uri: str,
    run_id: str,
    now: datetime | None = None,
    carried: LiveKeys | None = None,
) -> Extraction:
    """Append the source rows changed since bronze's watermark (see the module's docstring),
    looking for deletes from the live keys' summary the last run `carried` over, if it holds."""
    return ledger.redo_when_moved(
        lambda: _extract_once(contract, source, uri, run_id, now, carried), f"bronze/{contract.name}"
    )


def unchanged(
    contract: Contract, table: delta.DeltaTable, seen: SourceSeen, carried: LiveKeys | None
) -> Extraction:
    """What a run whose source has not changed since the last one saw it whole does: nothing
    (lakehouse/bronze/source_seen.py)."""
    watermark = read_watermark(table, contract)
    return Extraction(
        0, 0, watermark, watermark, [], table, seen.unwatermarked, rows_deleted=0,
        deletes_checked="not looked for: the source table is unchanged since the last run that did",
        live_keys=carried, whole_source=True,
    )  # fmt: skip


def _extract_once(
    contract: Contract,
    source: SourceDatabase,
    uri: str,
    run_id: str,
    now: datetime | None,
    carried: LiveKeys | None,
) -> Extraction:
    assert contract.watermark is not None and contract.is_database
    check_source_columns(contract, source)
    table_name, column = contract.source.table, contract.watermark.column
    table = delta.open_table(uri)
    claim = ledger.Claim(uri, table)
    before = read_watermark(table, contract)
    lower = None if before is None else before - contract.watermark.lookback
    # Rows without a watermark cannot be extracted incrementally: they are counted, not read.
    bounds, unwatermarked = source_range(contract, source, lower)
    newest = None if bounds.newest is None else newest_instant(contract, source, bounds)

    stored = delta.arrow_schema(table) if table else None
    identity = [*contract.primary_key, column]
    seen = None
    if table is not None and bounds.newest is not None:
        # The lookback re-reads recent rows on purpose (to catch late commits in the source);
        # the versions bronze already has (in the version whose watermark this run starts
        # from) are dropped by (primary key, watermark value), read by the same test as the
        # source's rows. Bronze stores the watermark as the driver returns it (text from SQLite).
        held = replace(bounds, kind=pl.Schema(stored).get(column, pl.String), newest=None)
        seen = pl.scan_delta(table).filter(held.admits()).filter(held.exact()).select(identity).collect()

    extracted_at = now or datetime.now(UTC)
    label = f"{source.label}/{table_name}"
    counts = {"read": 0, "appended": 0}
    pinned: pa.Schema | None = None
    appended_keys: list[pl.DataFrame] = []

    def new_rows() -> Iterator[pl.DataFrame]:
        nonlocal pinned
        if bounds.newest is None:
            return
        for chunk in source_chunks(contract, source, bounds):
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
                # Kept for the search for deletes, which a first load skips: its frames are the
                # driver's batches, each of whose columns would keep the whole batch in memory.
                if table is not None:
                    appended_keys.append(frame.select(contract.primary_key))
                yield with_audit_columns(frame, label, run_id, extracted_at).with_columns(
                    pl.lit(UPSERT).alias(OP)
                )

    # A first load has nothing to delete. Deletes are looked for after the extraction, against
    # the keys bronze holds live and those this run appends: one commit holds both, so a key
    # deleted while the run reads is a tombstone after its last version.
    checked = ledger.read(table, ledger.bronze_deletes_checked(contract.name))
    looking = table is not None and deletes.due(contract, checked, extracted_at)
    # Read here, not while the commit streams the rows: delta-rs cannot be called from there.
    record = carried if looking and carried is not None and carried.holds_for(table) else None
    found: list[deletes.Deletes] = []
    summaries: list[LiveKeys | None] = []

    def gone(schema: pl.Schema) -> Iterator[pl.DataFrame]:
        assert table is not None
        keys = pl.DataFrame(schema={name: schema[name] for name in contract.primary_key})
        appended = tombstones.distinct_keys(pl.concat([keys, *appended_keys]))
        started = None
        if record is not None and deletes.ranged(contract, appended):
            started = find_deletes_from(contract, source, table, record, appended)
        if started is None:
            live = pl.concat([tombstones.live_keys(pl.scan_delta(table), contract), appended])
            result = deletes.find_deletes(contract, source, tombstones.distinct_keys(live))
            started = result, remaining(result, contract.primary_key[0])
        found.append(started[0])
        summaries.append(started[1])
        if not found[-1].keys.is_empty():
            yield tombstones.tombstones(found[-1].keys, schema, label, run_id, extracted_at)

    def changes() -> Iterator[pl.DataFrame]:
        schema = None
        for frame in new_rows():
            schema = schema or frame.schema
            yield frame
        if looking:
            assert stored is not None
            yield from gone(schema or pl.Schema({**pl.DataFrame(stored.empty_table()).schema, OP: pl.String}))

    def extraction(after: datetime | None, written: delta.DeltaTable | None, added: list[str]) -> Extraction:
        result = found[0] if found else None
        live = summaries[0] if summaries else None
        if table is None and written is not None:
            live = first_load(contract, written)
        if live is not None:
            # This run's commit, or the last one that changed the rows when it made none.
            committed = written is not table
            version = claim.version if committed else delta.last_row_change(table)
            live = None if version is None else replace(live, version=version)
        in_source = None
        if result is not None and result.ranges is not None and result.in_source is not None:
            in_source = deletes.SourceKeys(result.ranges, result.in_source)
        return Extraction(
            counts["read"], counts["appended"], before, after, added, written, unwatermarked,
            rows_deleted=0 if result is None else result.keys.height,
            deletes_checked=deletes.describe(contract, result, table is None),
            live_keys=live, source_keys=in_source,
            whole_source=table is None or looking or contract.deletes == "never",
        )  # fmt: skip

    stream = changes()
    first = next(stream, None)
    # The time of the check is kept for a cadence only: a run that finds nothing commits nothing.
    cadence = isinstance(contract.deletes, DeleteCadence)
    entries = {ledger.bronze_deletes_checked(contract.name): ledger.micros(extracted_at)} if looking else {}
    if first is None:
        if not (looking and cadence):
            return extraction(before, table, [])
        assert stored is not None
        recorded = delta.write(uri, pl.DataFrame(stored.empty_table()), transactions=entries, claim=claim)
        return extraction(before, recorded, [])
    after = max(filter(None, [before, newest]), default=None)
    added = [name for name in first.columns if stored is not None and name not in stored.names]
    # A source whose every watermark is unreadable has none to record: its next run reads it
    # whole again, and bronze's copy of each row keeps it from being appended twice.
    written = delta.write(
        uri,
        itertools.chain([first], stream),
        partition_by=[PARTITION_COLUMN],
        configuration=delta.CHANGE_DATA_FEED,
        metadata={
            "lakehouse.run_id": run_id,
            **({"lakehouse.watermark": after.isoformat()} if after else {}),
        },
        transactions={
            **({ledger.bronze_watermark(contract.name): ledger.micros(after)} if after else {}),
            **entries,
        },
        claim=claim,
    )
    return extraction(after, written, added)
