"""Loading one dataset from bronze into silver, incrementally and restart-safe.

A run reads the bronze rows committed since the bronze version silver last consumed
(lakehouse/silver/changes.py), types and validates them, quarantines the invalid ones, and
MERGEs the newest version of each valid key into silver. The bronze version consumed is an
app transaction in silver's own commit, so a crash anywhere before it makes the next run
read the same rows again; quarantine and history are written first, by MERGEs keyed on the
bronze row, so reading them again duplicates nothing. Keys silver does not hold yet are
appended rather than MERGEd, which would rewrite their partitions' files: a batch of new
orders leaves the month's older files alone. An append-only dataset keeps each key's
first arrival; a later row with the key and other content is quarantined with the reason
(lakehouse/silver/repeats.py). Rows whose parents silver lacks are loaded flagged as orphans
(lakehouse/silver/orphans.py).

A load goes a slice of keys at a time (the first load reads bronze whole, in slices); only
the last slice's commit moves silver's position.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime

import polars as pl

from lakehouse.bronze import tombstones
from lakehouse.bronze.columns import LSN, OP, PARTITION_COLUMN
from lakehouse.resources import LakehouseStorage, PiiHasher
from lakehouse.silver import history
from lakehouse.silver.changes import bronze_identity, bronze_slices, change_slices, read_bronze_changes
from lakehouse.silver.orphans import Orphans, ParentKeys, flag_orphans, parent_keys, resolve_orphans
from lakehouse.silver.repeats import split_repeats
from lakehouse.silver.validate import split_valid
from lakehouse.sources.contract import Contract
from lakehouse.storage import delta, keys, ledger
from lakehouse.storage.ledger import DELETED_DAYS, LOADED_AT
from lakehouse.storage.merge import MergeCounts, merge
from lakehouse.storage.sql import quoted

ROW = "_row"
# Silver's commits name the bronze versions their load consumed: those after the one before,
# up to the one after (the position silver's ledger records).
BRONZE_VERSION, BRONZE_VERSION_BEFORE = "lakehouse.bronze_version", "lakehouse.bronze_version_before"
DELETE_FLAG = "_delete"


@dataclass(frozen=True)
class SilverLoad:
    bronze_version_before: int | None
    bronze_version: int | None  # None: bronze has no table yet (an empty source)
    rows_read: int
    duplicates_collapsed: int
    rows_quarantined: int  # conflicting repeats among them
    conflicting_duplicates: int
    orphans: Orphans
    silver: MergeCounts | None
    history: MergeCounts | None
    history_closed: int = 0  # current history rows closed by a delete
    tombstones: int = 0
    rows_before_a_delete: int = 0  # valid versions a later tombstone of their key supersedes


def partition_column(contract: Contract) -> str | None:
    return (
        f"{contract.partitioning.column}_{contract.partitioning.granularity}"
        if contract.partitioning
        else None
    )


def _with_partition(frame: pl.DataFrame, contract: Contract) -> pl.DataFrame:
    column = partition_column(contract)
    if column is None:
        return frame
    assert contract.partitioning is not None
    pattern = "%Y-%m" if contract.partitioning.granularity == "month" else "%Y-%m-%d"
    return frame.with_columns(pl.col(contract.partitioning.column).dt.strftime(pattern).alias(column))


def _newest_per_key(frame: pl.DataFrame, contract: Contract) -> pl.DataFrame:
    """One row per primary key: the newest version, or the first arrival for append-only data.

    Only the key, the ordering columns and a row number are grouped, then the chosen rows are
    taken once: sorting the whole frame first would copy every column twice, which on a full
    build is the step's peak memory. Ties keep the later row, as a stable sort would.
    """
    if contract.history == "append":
        order, pick = ["_source_file", "_line_number"], pl.Expr.first
    elif contract.is_cdc:
        order, pick = [LSN], pl.Expr.last
    else:
        assert contract.watermark is not None
        order, pick = [contract.watermark.column], pl.Expr.last
    rows = (
        frame.select(*contract.primary_key, *order)
        .with_row_index(ROW)
        .group_by(contract.primary_key)
        .agg(pick(pl.col(ROW).sort_by([*order, ROW])))
    )
    # Usually every key comes once: the frame itself, not a copy of it.
    return frame if rows.height == frame.height else frame[rows.get_column(ROW).sort()]


@dataclass(frozen=True)
class _Slice:
    rows_read: int
    duplicates_collapsed: int
    rows_quarantined: int
    conflicting_duplicates: int
    silver: MergeCounts
    history: MergeCounts | None
    history_closed: int
    tombstones: int
    rows_before_a_delete: int


def _doomed(silver_uri: str, gone: pl.DataFrame, contract: Contract) -> pl.DataFrame | None:
    """Silver's rows of the deleted keys `gone`; None when it holds none."""
    if gone.is_empty() or delta.open_table(silver_uri) is None:
        return None
    silver = delta.scan(silver_uri)
    found = keys.held(silver, gone.select(contract.primary_key))
    return None if found.is_empty() else keys.rows_of(silver, found).collect(engine="streaming")


def _deleted_days(doomed: pl.DataFrame, contract: Contract) -> str:
    """The days each date or timestamp column of the deleted rows holds, as JSON."""
    days = {
        name: doomed.get_column(name).dt.date().drop_nulls().unique().sort().cast(pl.String).to_list()
        for name, dtype in doomed.schema.items()
        if name in contract.columns and (dtype == pl.Date or isinstance(dtype, pl.Datetime))
    }
    return json.dumps(days, separators=(",", ":"))


def _load_slice(
    changes: pl.DataFrame,
    contract: Contract,
    lakehouse: LakehouseStorage,
    hasher: PiiHasher,
    parents: ParentKeys,
    loaded_at: datetime,
    position: dict[str, int],
    unmoved: dict[str, int],
    claim: ledger.Claim,
    metadata: dict[str, str],
    keys_are_new: bool = False,
) -> _Slice:
    """Quarantine the invalid rows of `changes` (and append-only repeats of a key with other
    content), record history, MERGE the newest valid version of each key silver holds into it
    and append those of the other keys, against `claim`. The last commit carries silver's
    `position`, one before it `unmoved`; both carry `metadata`. The MERGE also deletes the rows
    of the keys whose last change is a tombstone; their history is closed before it."""
    gone = tombstones.deleted_keys(changes, contract)
    deletes = tombstones.deletes(changes)
    valid, invalid = split_valid(tombstones.versions(changes), contract)
    rows_read = changes.height
    valid = hasher.protect(valid, contract)
    silver_uri = lakehouse.table_uri("silver", contract.name)
    repeats = None
    if contract.history == "append":
        repeats = split_repeats(
            valid,
            _newest_per_key(valid, contract),
            contract.primary_key,
            None if keys_are_new else silver_uri,
        )
        valid = repeats.kept
        # The conflicting rows as bronze holds them, like every quarantined row.
        conflicting = changes.join(repeats.conflicting, on=bronze_identity(contract), how="inner")
        invalid = pl.concat([invalid, conflicting.select(invalid.columns)])
    # The slice as bronze holds it is not needed past here: released, it is not held beside the
    # copies the steps below make (a first load's peak memory is during its writes).
    del changes
    if not invalid.is_empty():
        # PII is hashed here too: raw values stay in bronze only.
        quarantined = (
            hasher.protect(invalid, contract)
            .drop(PARTITION_COLUMN, strict=False)
            .with_columns(_quarantined_at=pl.lit(loaded_at, dtype=pl.Datetime("us", "UTC")))
        )
        merge(lakehouse.table_uri("quarantine", contract.name), quarantined, bronze_identity(contract))

    partition = partition_column(contract)
    valid = _with_partition(valid, contract).with_columns(
        pl.lit(loaded_at, dtype=pl.Datetime("us", "UTC")).alias(LOADED_AT)
    )
    valid = flag_orphans(valid.drop(PARTITION_COLUMN), parents)
    changed, closed = None, 0
    if contract.history == "scd2":
        history_uri = lakehouse.table_uri("silver", f"{contract.name}_history")
        changed = history.record_changes(history_uri, valid, contract)
        closed = history.close_deleted(history_uri, gone, contract, loaded_at)

    # The versions after the last delete of their key; append-only rows are each key's first
    # arrival already.
    standing = (valid if deletes.is_empty() else tombstones.standing(valid, contract, deletes)).drop(
        OP, strict=False
    )
    before_a_delete = valid.height - standing.height
    del valid
    newest = standing if repeats is not None else _newest_per_key(standing, contract)
    collapsed = standing.height - newest.height
    del standing
    # Keys silver does not hold are appended, with no MERGE reading every row of their
    # partitions: a load that added keys since moved the position, which the claim refuses.
    if keys_are_new or claim.version is None:
        # A table this load creates is created by the MERGE, with its partitions.
        held = (
            newest.head(0).select(contract.primary_key)
            if keys_are_new
            else newest.select(contract.primary_key)
        )
    else:
        held = (
            repeats.held
            if repeats is not None
            else keys.held(delta.scan(silver_uri), newest.select(contract.primary_key))
        )
    held = held.cast(dict(newest.select(contract.primary_key).schema))
    # A join copies every row, even with no keys to join: a first load's slices have none.
    fresh = newest if held.is_empty() else newest.join(held, on=contract.primary_key, how="anti")
    known = newest.head(0) if held.is_empty() else newest.join(held, on=contract.primary_key, how="semi")
    del newest
    doomed = None if keys_are_new else _doomed(silver_uri, gone, contract)
    if doomed is not None:
        metadata = {**metadata, DELETED_DAYS: _deleted_days(doomed, contract)}
        known = pl.concat(
            [
                known.with_columns(pl.lit(False).alias(DELETE_FLAG)),
                doomed.with_columns(pl.lit(True).alias(DELETE_FLAG)),
            ],
            how="diagonal_relaxed",
        )
    wm = contract.watermark.column if contract.watermark else ""
    # A change stream's order is the truth: its newest change replaces the row whatever its
    # watermark says.
    update_when = f"s.{quoted(wm)} > t.{quoted(wm)}" if not contract.is_cdc else "true"
    # The last commit moves the position; one before it carries it unmoved, so that a second
    # load at once conflicts on both.
    parts = []
    if not known.is_empty() or fresh.is_empty():
        parts.append(
            merge(
                silver_uri,
                known,
                contract.primary_key,
                update_when=None if contract.history == "append" else update_when,
                delete_flag=None if doomed is None else DELETE_FLAG,
                partition=partition,
                metadata=metadata,
                transactions=position if fresh.is_empty() else unmoved,
                claim=claim,
            )
        )
    if not fresh.is_empty():
        written = delta.write(silver_uri, fresh, metadata=metadata, transactions=position, claim=claim)
        parts.append(MergeCounts(fresh.height, 0, 0, written))
    counts = _summed(parts)
    assert counts is not None
    return _Slice(
        rows_read,
        repeats.identical if repeats is not None else collapsed,
        invalid.height,
        repeats.conflicting.height if repeats is not None else 0,
        counts,
        changed,
        closed,
        deletes.height,
        before_a_delete,
    )


def _summed(counts: list[MergeCounts | None]) -> MergeCounts | None:
    present = [each for each in counts if each is not None]
    if not present:
        return None
    return MergeCounts(
        sum(each.inserted for each in present),
        sum(each.updated for each in present),
        sum(each.unchanged for each in present),
        present[-1].table,
        sum(each.deleted for each in present),
    )


def load_silver(
    contract: Contract,
    lakehouse: LakehouseStorage,
    hasher: PiiHasher,
    run_id: str,
    now: datetime | None = None,
    orphans: Orphans | None = None,
) -> SilverLoad:
    """Load the bronze rows committed since silver's position (see the module's docstring); a
    load overtaken by another that moved the position first starts again from it. `orphans`:
    what the last load found of them."""
    return ledger.redo_when_moved(
        lambda: _load_once(contract, lakehouse, hasher, run_id, now, orphans), f"silver/{contract.name}"
    )


def _load_once(
    contract: Contract,
    lakehouse: LakehouseStorage,
    hasher: PiiHasher,
    run_id: str,
    now: datetime | None,
    orphans: Orphans | None,
) -> SilverLoad:
    silver_uri = lakehouse.table_uri("silver", contract.name)
    bronze_uri = lakehouse.table_uri("bronze", contract.name)
    silver = delta.open_table(silver_uri)
    claim = ledger.Claim(silver_uri, silver)
    key = ledger.silver_position(contract.name)
    since = ledger.read(silver, key)
    if since is None:
        bronze = delta.open_table(bronze_uri)
        if bronze is None:
            # The source table is empty: bronze has written nothing yet, and silver has nothing.
            return SilverLoad(None, None, 0, 0, 0, 0, Orphans(0, ""), None, None)
        version = bronze.version()
        slices = bronze_slices(bronze, contract)
    else:
        changes, version = read_bronze_changes(bronze_uri, since)
        if changes.is_empty():
            # No new rows, but parents may have arrived for rows flagged as orphans.
            still = resolve_orphans(silver_uri, contract, lakehouse, seen=orphans)
            return SilverLoad(since, version, 0, 0, 0, 0, still, None, None)
        slices = change_slices(changes, contract)
    loaded_at = now or datetime.now(UTC)
    parents = parent_keys(contract, lakehouse)
    metadata = {
        "lakehouse.run_id": run_id,
        BRONZE_VERSION: str(version),
        BRONZE_VERSION_BEFORE: "" if since is None else str(since),
    }
    # Only the last slice's commit moves silver's position: after a crash in between, the next
    # run loads every slice again, and the MERGEs find the rows already there unchanged. The
    # slices before it commit the position unmoved, so that a second load at once conflicts
    # on every commit, not just the last. Slices after the first of a table this load creates
    # hold keys silver cannot have: appended.
    unmoved = {key: ledger.UNSET if since is None else since}
    loaded = [
        _load_slice(
            rows.collect(engine="streaming"), contract, lakehouse, hasher, parents, loaded_at,
            {key: version} if number == len(slices) - 1 else unmoved, unmoved, claim, metadata,
            keys_are_new=silver is None and number > 0,
        )
        for number, rows in enumerate(slices)
    ]  # fmt: skip
    silver = _summed([part.silver for part in loaded])
    assert silver is not None
    return SilverLoad(
        bronze_version_before=since,
        bronze_version=version,
        rows_read=sum(part.rows_read for part in loaded),
        duplicates_collapsed=sum(part.duplicates_collapsed for part in loaded),
        rows_quarantined=sum(part.rows_quarantined for part in loaded),
        conflicting_duplicates=sum(part.conflicting_duplicates for part in loaded),
        orphans=resolve_orphans(silver_uri, contract, lakehouse, parents),
        silver=silver,
        history=_summed([part.history for part in loaded]),
        history_closed=sum(part.history_closed for part in loaded),
        tombstones=sum(part.tombstones for part in loaded),
        rows_before_a_delete=sum(part.rows_before_a_delete for part in loaded),
    )
