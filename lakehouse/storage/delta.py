"""Delta Lake tables of the lakehouse: where they live, how they are written, what they report."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator
from typing import Literal, TypeVar

import dagster as dg
import polars as pl
import pyarrow as pa
import pyarrow.dataset
import tenacity
from deltalake import CommitProperties, DeltaTable, Transaction, write_deltalake
from deltalake.exceptions import CommitFailedError, DeltaError, TableNotFoundError

from lakehouse.storage import files, table_log
from lakehouse.storage.ledger import Claim, LedgerMoved

T = TypeVar("T")
COMMIT_ATTEMPTS = 5
# Concurrent writers back off from each other: 0.4 s doubling each time, at most 5 s, each
# wait drawn at random below that so that they do not meet again.
COMMIT_BACKOFF = tenacity.wait_random_exponential(multiplier=0.4, max=5)
BATCH_ROWS = 250_000
# Bronze is read incrementally by silver through the change data feed.
CHANGE_DATA_FEED = {"delta.enableChangeDataFeed": "true"}
# Operations whose commits keep every row of the version before them.
ROW_KEEPING = frozenset({"OPTIMIZE", "VACUUM START", "VACUUM END", "SET TBLPROPERTIES"})


def load_table(uri: str, version: int | None = None) -> DeltaTable:
    """The table at `uri`, at `version` (default: its newest). Raises `TableNotFoundError`
    before its first commit, and `table_log.CorruptLog` naming the table and the broken file
    when its log cannot be read (delta-rs's own error names neither)."""
    try:
        return DeltaTable(uri, version=version, storage_options=files.storage_options(uri))
    except TableNotFoundError:
        raise
    except DeltaError as error:
        raise table_log.unreadable(uri, error) from None


def scan(uri: str, version: int | None = None) -> pl.LazyFrame:
    """The table at `uri` (at `version`, default its newest) as a polars scan."""
    return pl.scan_delta(uri, version=version, storage_options=files.storage_options(uri))


def open_table(uri: str) -> DeltaTable | None:
    """The table at `uri`, or None before its first commit (see `load_table`)."""
    try:
        return load_table(uri)
    except TableNotFoundError:
        return None


def version_label(table: DeltaTable | None) -> str:
    """Which state of the table a reader sees: its version and table id ("v12 (1a2b3c4d)"), so
    a table deleted and created again never passes for the old one; "missing" before it exists."""
    return "missing" if table is None else f"v{table.version()} ({table.metadata().id[:8]})"


def snapshot(uri: str) -> str:
    """The `version_label` of the table at `uri` now."""
    return version_label(open_table(uri))


def _newest_first(table: DeltaTable, page: int) -> Iterator[dict]:
    """The commit information of the table's versions, newest first, read `page` commits at a
    time and then eight times as many: the log holds a file per commit, and most readers stop
    after a few."""
    below = table.version() + 1
    while True:
        commits = table.history(limit=page)
        yield from (commit for commit in commits if commit["version"] < below)
        if len(commits) < page:
            return
        below, page = commits[-1]["version"], page * 8


def commits_after(table: DeltaTable, version: int) -> list[dict]:
    """The commit information of the table's versions after `version`, newest first."""
    newest = _newest_first(table, max(table.version() - version, 1))
    return list(itertools.takewhile(lambda commit: commit["version"] > version, newest))


def is_append(commit: dict) -> bool:
    """Whether the commit only added rows: an append, or a MERGE that only inserts (as the
    quarantines are written)."""
    parameters = commit.get("operationParameters", {})
    if commit["operation"] == "MERGE":
        return (
            parameters.get("matchedPredicates") == "[]"
            and parameters.get("notMatchedBySourcePredicates") == "[]"
        )
    return commit["operation"] == "WRITE" and parameters.get("mode") == "Append"


def last_row_change(table: DeltaTable) -> int | None:
    """The version of the newest commit that changed the table's rows (None: none in the log)."""
    changes = (commit for commit in _newest_first(table, 8) if commit["operation"] not in ROW_KEEPING)
    return next((commit["version"] for commit in changes), None)


def _files_since(table: DeltaTable, uri: str, version: int | None) -> tuple[list[str], list[str]]:
    """The data files the table holds and did not at `version` (None: before its first
    commit), and those it held then and no longer does."""
    now = set(table.file_uris())
    then = set() if version is None else set(load_table(uri, version).file_uris())
    return sorted(now - then), sorted(then - now)


def _read_files(uri: str, file_uris: list[str], schema: pl.Schema) -> pl.DataFrame:
    if not file_uris:
        return pl.DataFrame(schema=schema)
    filesystem, _ = files.filesystem(uri)
    paths = [files.location(each).removeprefix("s3://") for each in file_uris]
    dataset = pyarrow.dataset.dataset(paths, format="parquet", filesystem=filesystem)
    return pl.DataFrame(pl.from_arrow(dataset.to_table(columns=list(schema)))).cast(dict(schema))


def rows_since(
    table: DeltaTable, uri: str, version: int | None, columns: list[str], removed: bool = False
) -> tuple[pl.DataFrame, pl.DataFrame] | None:
    """The `columns` of the rows in the files the table added since `version` (None: since
    before its first commit) and, when `removed`, in those it removed since. A MERGE rewrites
    whole files, so a row it changed is in both, with the rows it kept. None when vacuum has
    deleted one of those files or the log of `version`, or when a column is a partition column
    (its values live in the paths, not the files)."""
    if set(columns) & set(table.metadata().partition_columns):
        return None
    stored = pl.Schema(arrow_schema(table))
    schema = pl.Schema({name: stored[name] for name in columns})
    try:
        added, gone = _files_since(table, uri, version)
        return _read_files(uri, added, schema), _read_files(uri, gone if removed else [], schema)
    except (OSError, DeltaError, pa.ArrowException):
        return None


def rows_changed(uri: str, table: DeltaTable, since: int | None, columns: list[str]) -> pl.DataFrame | None:
    """The `columns` of the rows the table gained or lost since version `since` (None: since
    before it existed): those of the files added since that no removed file holds alike, and
    the other way round, so that the rows a MERGE rewrote unchanged cancel out. Name a key among
    the columns: two rows alike in all of them cancel each other too. None when they cannot be
    read (`rows_since`)."""
    read = rows_since(table, uri, since, columns, removed=True)
    if read is None:
        return None
    gained, lost = read
    return pl.concat(
        [
            gained.join(lost, on=columns, how="anti", nulls_equal=True),
            lost.join(gained, on=columns, how="anti", nulls_equal=True),
        ]
    )


def row_count(table: DeltaTable) -> int:
    """Rows in the current version, from the log's file statistics (no data is read)."""
    counts = pl.DataFrame(table.get_add_actions(flatten=True)).get_column("num_records")
    return int(counts.sum())


def footprint(table: DeltaTable) -> tuple[int, int]:
    """Data files and bytes of the current version, from the log (what maintenance shrinks)."""
    sizes = pl.DataFrame(table.get_add_actions(flatten=True)).get_column("size_bytes")
    return len(sizes), int(sizes.sum())


def arrow_schema(table: DeltaTable) -> pa.Schema:
    return pa.schema(table.schema().to_arrow())


def to_arrow(frame: pl.DataFrame) -> pa.Table:
    # Plain strings, not string_view: DuckDB's and dbt's readers cannot filter string_view.
    return frame.to_arrow(compat_level=pl.CompatLevel.oldest())


def record_batches(frames: pl.DataFrame | Iterator[pl.DataFrame]) -> pa.RecordBatchReader:
    """The frame, or the stream of frames of one schema, as Arrow batches converted a slice at a
    time, for a writer that streams them: converting a frame whole would hold a second copy of
    every string column during the write."""
    stream = iter([frames]) if isinstance(frames, pl.DataFrame) else frames
    first = next(stream)
    schema = to_arrow(first.head(0)).schema

    def batches(frame: pl.DataFrame | None) -> Iterator[pa.RecordBatch]:
        while frame is not None:
            for offset in range(0, frame.height, BATCH_ROWS):
                yield from to_arrow(frame.slice(offset, BATCH_ROWS)).to_batches()
            del frame  # before the next is produced: a stream holds one frame at a time
            frame = next(stream, None)

    return pa.RecordBatchReader.from_batches(schema, batches(first))


class _Stream:
    """Frames to write, remembering an error raised while they are produced: the writer passes
    it on only as text inside an error of its own."""

    def __init__(self, frames: Iterator[pl.DataFrame]) -> None:
        self.frames, self.error = frames, None

    def __iter__(self) -> Iterator[pl.DataFrame]:
        try:
            yield from self.frames
        except Exception as error:
            self.error = error
            raise


def commit_properties(
    metadata: dict[str, str] | None, transactions: dict[str, int] | None, creating: bool = False
) -> CommitProperties:
    """Commit metadata and ledger entries for one commit. A commit that creates a table must be
    version 0 or fail: a second writer creating it at once would otherwise rebase its first
    commit onto the winner's (Delta checks no ledger entries against a table it has not read)."""
    return CommitProperties(
        custom_metadata=metadata,
        app_transactions=[
            Transaction(app_id=key, version=value) for key, value in (transactions or {}).items()
        ],
        max_commit_retries=0 if creating else None,
    )


def committing(attempt: Callable[[], T], uri: str, claim: Claim | None, attempts: int = COMMIT_ATTEMPTS) -> T:
    """`attempt` (one commit), again after each commit conflict with a concurrent writer, backing
    off with jitter, up to `attempts` times. The last conflict of a claimed writer is
    `LedgerMoved`, so that it starts again from the ledger."""
    retrying = tenacity.Retrying(
        stop=tenacity.stop_after_attempt(attempts),
        wait=COMMIT_BACKOFF,
        retry=tenacity.retry_if_exception_type(CommitFailedError),
        before_sleep=lambda state: dg.get_dagster_logger().warning(
            f"{table_log.table_name(uri)}: a concurrent commit won; trying again "
            f"({state.attempt_number} of {attempts})"
        ),
        reraise=True,
    )
    try:
        return retrying(attempt)
    except CommitFailedError as error:
        if claim is not None:
            raise LedgerMoved(f"{uri}: a concurrent commit won ({error})") from error
        raise


class CreatedMeanwhile(RuntimeError):
    """A write that was to create its table found it created by another writer."""


def write(
    uri: str,
    frame: pl.DataFrame | Iterable[pl.DataFrame],
    *,
    mode: Literal["append", "overwrite"] = "append",
    predicate: str | None = None,
    partition_by: list[str] | None = None,
    metadata: dict[str, str] | None = None,
    transactions: dict[str, int] | None = None,
    claim: Claim | None = None,
    configuration: dict[str, str | None] | None = None,
    create: bool = False,
    target_file_size: int | None = None,
) -> DeltaTable:
    """Write `frame` in one commit that also carries `metadata` and ledger `transactions`.

    The transactions land in the same atomic commit as the rows they describe (see
    lakehouse/storage/ledger.py). With a `claim`, the commit fails with `LedgerMoved` when another
    writer committed the same entries since the claim's version. New columns are merged into
    the schema; `configuration` applies when the write creates the table. An overwrite with a
    `predicate` replaces only the rows matching it.
    `frame` may be a stream of frames of one schema, never all in memory. Commit conflicts
    with concurrent writers are retried, producing the frames again, unless they come from
    an iterator, which cannot be read twice: its conflict fails the write (`LedgerMoved` with
    a claim, so that the writer starts again from the ledger). With `create`, the write only
    creates the table: when another writer has, it fails with `CreatedMeanwhile`.
    `target_file_size` (bytes) bounds the data files written, in place of delta-rs' default.
    """

    def attempt() -> DeltaTable | None:
        latest = open_table(uri)
        if claim is not None:
            claim.check(latest, transactions or {})
        if create and latest is not None:
            raise CreatedMeanwhile(f"{uri}: created by another writer meanwhile")
        # A claimed write that found no table creates it or fails: it must not append to a
        # table another writer created meanwhile, whose ledger it has not read.
        creating = latest is None and (claim is not None or create)
        stream = None if isinstance(frame, pl.DataFrame) else _Stream(iter(frame))
        try:
            write_deltalake(
                uri if latest is None else latest,
                record_batches(frame if stream is None else iter(stream)),
                storage_options=files.storage_options(uri) if latest is None else None,
                mode="error" if creating else mode,
                predicate=predicate,
                partition_by=partition_by,
                schema_mode="merge",
                configuration=configuration,
                target_file_size=target_file_size,
                commit_properties=commit_properties(metadata, transactions, creating=creating),
            )
        except CommitFailedError:
            raise  # a concurrent writer's: `committing` tries again
        except Exception as error:
            if stream is not None and stream.error is not None:
                raise stream.error from None
            if creating and open_table(uri) is not None:
                moved = LedgerMoved if claim is not None else CreatedMeanwhile
                raise moved(f"{uri}: created by another writer meanwhile") from error
            raise
        return latest

    latest = committing(attempt, uri, claim, attempts=1 if isinstance(frame, Iterator) else COMMIT_ATTEMPTS)
    if claim is not None:
        # A table object written through is at its own commit's version; a created one is at 0.
        claim.advance(0 if latest is None else latest.version())
    return load_table(uri)
