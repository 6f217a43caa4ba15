"""Loading one dataset from bronze into silver, incrementally and restart-safe.

A run reads the bronze rows committed since the bronze version silver last consumed (through
bronze's change data feed), types and validates them, quarantines the invalid ones, and
MERGEs the newest version of each valid key into silver. The bronze version consumed is an
app transaction in silver's own commit, so a crash anywhere before it makes the next run
read the same rows again; quarantine and history are written first, by MERGEs keyed on the
bronze row, so reading them again duplicates nothing. An append-only dataset keeps each key's
first arrival; a later row with the key and other content is quarantined with the reason
(lakehouse/silver/repeats.py).

The first load reads bronze whole, in slices of about `SLICE_ROWS` rows split by ranges of the
key (every version of a key in the same slice), so its memory follows the slice and not the
table; only the last slice's commit moves silver's position.
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
from lakehouse.silver.repeats import split_repeats
from lakehouse.silver.validate import split_valid
from lakehouse.sources.contract import Contract
from lakehouse.storage import delta, ledger
from lakehouse.storage.ledger import DELETED_DAYS, LOADED_AT
from lakehouse.storage.merge import MergeCounts, merge
from lakehouse.storage.slices import key_ranges
from lakehouse.storage.sql import quoted

CHANGE_FEED_COLUMNS = ("_change_type", "_commit_version", "_commit_timestamp")
ORPHAN_COLUMN = "_orphan"
ROW = "_row"
# Silver's commits name the bronze versions their load consumed: those after the one before,
# up to the one after (the position silver's ledger records).
BRONZE_VERSION, BRONZE_VERSION_BEFORE = "lakehouse.bronze_version", "lakehouse.bronze_version_before"
DELETE_FLAG = "_delete"
SLICE_ROWS = 1_000_000  # bronze rows a first load holds at a time


@dataclass(frozen=True)
class SilverLoad:
    bronze_version_before: int | None
    bronze_version: int | None  # None: bronze has no table yet (an empty source)
    rows_read: int
    duplicates_collapsed: int
    rows_quarantined: int  # conflicting repeats among them
    conflicting_duplicates: int
    orphans: int
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


def bronze_identity(contract: Contract) -> list[str]:
    """The columns that tell one bronze row from every other."""
    if contract.is_cdc:
        return [*contract.primary_key, LSN]
    if contract.is_database:
        assert contract.watermark is not None
        return [*contract.primary_key, contract.watermark.column]
    return ["_source_file", "_line_number"]


def read_bronze_changes(uri: str, since: int, until: int | None = None) -> tuple[pl.DataFrame, int]:
    """Bronze rows committed after version `since` up to `until` (default: the latest), and
    the version read."""
    table = delta.load_table(uri)
    version = table.version() if until is None else until
    empty = pl.DataFrame(schema=pl.Schema(delta.arrow_schema(table)))
    feeds = [
        pl.DataFrame(table.load_cdf(starting_version=first, ending_version=last).read_all())
        for first, last in live_versions(table, since, version)
    ]
    if not feeds:
        return empty, version
    changes = pl.concat(feeds, how="diagonal_relaxed")
    return changes.filter(pl.col("_change_type") == "insert").drop(CHANGE_FEED_COLUMNS), version


def live_versions(table: delta.DeltaTable, since: int, version: int) -> list[tuple[int, int]]:
    """The ranges of versions after `since` up to `version` that no RESTORE has rolled back.

    A restore to N takes back the commits after N (the rows a bad load appended) with one
    commit of its own: reading neither is what makes the rows as if never loaded.
    """
    undone: set[int] = set()
    # The log's newest commits first, whatever version the range ends at.
    for commit in table.history(limit=max(table.version() - since, 0)):
        if commit["operation"] == "RESTORE" and since < commit["version"] <= version:
            undone.update(range(int(commit["operationParameters"]["version"]) + 1, commit["version"] + 1))
    ranges: list[tuple[int, int]] = []
    for number in (v for v in range(since + 1, version + 1) if v not in undone):
        if ranges and ranges[-1][1] == number - 1:
            ranges[-1] = (ranges[-1][0], number)
        else:
            ranges.append((number, number))
    return ranges


def _with_partition(frame: pl.DataFrame, contract: Contract) -> pl.DataFrame:
    column = partition_column(contract)
    if column is None:
        return frame
    assert contract.partitioning is not None
    pattern = "%Y-%m" if contract.partitioning.granularity == "month" else "%Y-%m-%d"
    return frame.with_columns(pl.col(contract.partitioning.column).dt.strftime(pattern).alias(column))


def _parent_keys(contract: Contract, lakehouse: LakehouseStorage) -> dict[str, tuple[str, pl.Series]]:
    """For each column that references a parent, the parent silver table and its keys now.

    Read once per load, not per slice (a tenth of a second each): a run loads the parents
    first, and a parent that arrives while the load runs is found by the next load's
    `resolve_orphans`, as one that arrives later would be."""
    parents = {}
    for name, spec in contract.columns.items():
        if not spec.references:
            continue
        table, column = spec.references.split(".")
        parent_uri = lakehouse.table_uri("silver", table)
        parents[name] = (
            table,
            pl.scan_delta(parent_uri).select(column).collect().get_column(column)
            if delta.open_table(parent_uri)
            else pl.Series(column, [], dtype=spec.dtype),
        )
    return parents


def _flag_orphans(frame: pl.DataFrame, parents: dict[str, tuple[str, pl.Series]]) -> pl.DataFrame:
    """Name, per row, each reference to a parent silver does not hold yet (null: none)."""
    if not parents:
        return frame
    missing = [
        pl.when(~pl.col(name).is_in(known.implode())).then(pl.lit(f"{name} not in {table}"))
        for name, (table, known) in parents.items()
    ]
    reasons = pl.concat_str(missing, separator="; ", ignore_nulls=True)
    return frame.with_columns(pl.when(reasons != "").then(reasons).alias(ORPHAN_COLUMN))


def resolve_orphans(
    uri: str,
    contract: Contract,
    lakehouse: LakehouseStorage,
    parents: dict[str, tuple[str, pl.Series]] | None = None,
) -> int:
    """Clear the orphan flag of rows whose parents have arrived since; returns rows still orphaned.
    `parents`: their keys, when the caller has read them already."""
    table = delta.open_table(uri)
    if table is None or ORPHAN_COLUMN not in delta.arrow_schema(table).names:
        return 0
    flagged = pl.scan_delta(uri).filter(pl.col(ORPHAN_COLUMN).is_not_null()).collect()
    if flagged.is_empty():
        return 0
    rechecked = _flag_orphans(
        flagged.drop(ORPHAN_COLUMN), parents if parents is not None else _parent_keys(contract, lakehouse)
    )
    # A new _loaded_at tells downstream tables these rows changed.
    resolved = rechecked.filter(pl.col(ORPHAN_COLUMN).is_null()).with_columns(
        pl.lit(datetime.now(UTC), dtype=pl.Datetime("us", "UTC")).alias(LOADED_AT)
    )
    if not resolved.is_empty():
        table.merge(
            delta.to_arrow(resolved.select(*contract.primary_key, ORPHAN_COLUMN, LOADED_AT)),
            predicate=" AND ".join(f"t.{quoted(key)} = s.{quoted(key)}" for key in contract.primary_key),
            source_alias="s",
            target_alias="t",
        ).when_matched_update(
            updates={name: f"s.{quoted(name)}" for name in (ORPHAN_COLUMN, LOADED_AT)}
        ).execute()
    return flagged.height - resolved.height


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
    return frame[rows.get_column(ROW).sort()]


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
    silver = pl.scan_delta(silver_uri)
    schema = silver.collect_schema()
    keys = gone.select(contract.primary_key).cast({key: schema[key] for key in contract.primary_key})
    doomed = silver.join(keys.lazy(), on=contract.primary_key, how="semi").collect()
    return None if doomed.is_empty() else doomed


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
    parents: dict[str, tuple[str, pl.Series]],
    loaded_at: datetime,
    position: dict[str, int],
    claim: ledger.Claim,
    metadata: dict[str, str],
    keys_are_new: bool = False,
) -> _Slice:
    """Quarantine the invalid rows of `changes` (and append-only repeats of a key with other
    content), record history, and MERGE the newest valid version of each key into silver
    (append it, when silver cannot hold these keys yet), in a commit that carries silver's
    `position` and `metadata`, against `claim`. The same commit deletes the rows of the keys
    whose last change is a tombstone; their history is closed before it."""
    gone = tombstones.deleted_keys(changes, contract)
    versions = tombstones.versions(changes)
    valid, invalid = split_valid(versions, contract)
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
    valid = _flag_orphans(valid.drop(PARTITION_COLUMN), parents)
    changed, closed = None, 0
    if contract.history == "scd2":
        history_uri = lakehouse.table_uri("silver", f"{contract.name}_history")
        changed = history.record_changes(history_uri, valid, contract)
        closed = history.close_deleted(history_uri, gone, contract, loaded_at)

    # The versions after the last delete of their key; append-only rows are each key's first
    # arrival already.
    standing = tombstones.standing(valid, contract, changes).drop(OP, strict=False)
    newest = standing if repeats is not None else _newest_per_key(standing, contract)
    collapsed = standing.height - newest.height
    doomed = None if keys_are_new else _doomed(silver_uri, gone, contract)
    if doomed is not None:
        metadata = {**metadata, DELETED_DAYS: _deleted_days(doomed, contract)}
        newest = pl.concat(
            [
                newest.with_columns(pl.lit(False).alias(DELETE_FLAG)),
                doomed.with_columns(pl.lit(True).alias(DELETE_FLAG)),
            ],
            how="diagonal_relaxed",
        )
    wm = contract.watermark.column if contract.watermark else ""
    # A change stream's order is the truth: its newest change replaces the row whatever its
    # watermark says.
    update_when = f"s.{quoted(wm)} > t.{quoted(wm)}" if not contract.is_cdc else "true"
    counts = (
        MergeCounts(
            newest.height,
            0,
            0,
            delta.write(silver_uri, newest, metadata=metadata, transactions=position, claim=claim),
        )
        if keys_are_new
        else merge(
            silver_uri,
            newest,
            contract.primary_key,
            update_when=None if contract.history == "append" else update_when,
            delete_flag=None if doomed is None else DELETE_FLAG,
            partition=partition,
            metadata=metadata,
            transactions=position,
            claim=claim,
        )
    )
    return _Slice(
        changes.height,
        repeats.identical if repeats is not None else collapsed,
        invalid.height,
        repeats.conflicting.height if repeats is not None else 0,
        counts,
        changed,
        closed,
        changes.height - versions.height,
        valid.height - standing.height,
    )


def _whole_table(table: delta.DeltaTable, contract: Contract) -> list[pl.LazyFrame]:
    """Bronze in slices of about SLICE_ROWS rows, by ranges of the first key column, so that
    every version of a key is in the same slice: a first load holds one slice at a time. Bronze
    files hold a first extraction in key order, so each slice's scan skips the others' rows
    and the load reads bronze about once, not once per slice."""
    return key_ranges(pl.scan_delta(table), contract.primary_key[0], SLICE_ROWS)


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
) -> SilverLoad:
    """Load the bronze rows committed since silver's position (see the module's docstring); a
    load overtaken by another that moved the position first starts again from it."""
    return ledger.redo_when_moved(
        lambda: _load_once(contract, lakehouse, hasher, run_id, now), f"silver/{contract.name}"
    )


def _load_once(
    contract: Contract, lakehouse: LakehouseStorage, hasher: PiiHasher, run_id: str, now: datetime | None
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
            return SilverLoad(None, None, 0, 0, 0, 0, 0, None, None)
        version = bronze.version()
        slices = _whole_table(bronze, contract)
    else:
        changes, version = read_bronze_changes(bronze_uri, since)
        if changes.is_empty():
            # No new rows, but parents may have arrived for rows flagged as orphans.
            return SilverLoad(
                since, version, 0, 0, 0, 0, resolve_orphans(silver_uri, contract, lakehouse), None, None
            )
        slices = [changes.lazy()]
    loaded_at = now or datetime.now(UTC)
    parents = _parent_keys(contract, lakehouse)
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
    unmoved = ledger.UNSET if since is None else since
    loaded = [
        _load_slice(
            rows.collect(engine="streaming"), contract, lakehouse, hasher, parents, loaded_at,
            {key: version if number == len(slices) - 1 else unmoved}, claim, metadata,
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
