"""Exactly-once ingestion of landing files (JSON lines) into bronze, with a quarantine.

Every line of every file ends up in one of two tables, bronze or the quarantine
(`lakehouse.bronze.landing_lines` says which).

Only complete files are read: a file is complete once its size and modification time have
not changed for the settle time (`LAKEHOUSE_LANDING_SETTLE_SECONDS`), and a file that changes
while it is read is left for a later run. Producers that write a file and then rename it into
the folder never show a partial file at all (docs/operations.md).

The ledger of ingested files holds each file's size and checksum (lakehouse/storage/ledger.py),
committed together with the file's rows. Quarantined lines are written first with a MERGE on
(file, line), so a crash between the two commits cannot duplicate them when the files are read
again. A run overtaken by another that committed some of the same files first starts again
without them.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from fnmatch import fnmatchcase
from pathlib import PurePosixPath

import polars as pl
import pyarrow.fs as pafs

from lakehouse.bronze.columns import LINE_NUMBER, PARTITION_COLUMN, SOURCE_FILE, pin_types, with_audit_columns
from lakehouse.bronze.landing_lines import parse_file, rows_frame
from lakehouse.settings import seconds
from lakehouse.sources.contract import Contract
from lakehouse.storage import delta, files, ledger
from lakehouse.storage.merge import merge

MAX_FILES_PER_RUN = 500
# Landing bytes one commit takes: a run holds one commit's files parsed at a time, so that its
# memory follows this, not the files waiting. Each commit carries its own files' ledger entries.
COMMIT_BYTES = 128 * 2**20
# A run waits for files that arrived just before it when they settle within this long, so it
# takes what was dropped for it; files that need longer are left to the next run.
SETTLE_WAIT_LIMIT = 60.0
QUARANTINE_SCHEMA = {
    SOURCE_FILE: pl.String,
    LINE_NUMBER: pl.Int64,
    "_raw_line": pl.String,
    "_error": pl.String,
}


@dataclass(frozen=True)
class Ingestion:
    files: list[str]
    lines_read: int
    rows_appended: int
    lines_quarantined: int
    files_waiting: int
    added_columns: list[str]
    table: delta.DeltaTable | None
    quarantine: delta.DeltaTable | None
    # Files still being written (changed within the settle time, or while read): a later run's.
    files_settling: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Seen:
    """A landing file as one look at it found it."""

    name: str  # the file's name, its key in bronze's ledger
    path: str  # in its file system
    size: int
    modified_ns: int

    def settles_in(self, settle: float, now_ns: int) -> float:
        """Seconds until the file has been unchanged for `settle` seconds (0 or less: settled)."""
        return settle - (now_ns - self.modified_ns) / 1e9


def _seen(info: pafs.FileInfo) -> Seen:
    return Seen(info.base_name, info.path, info.size, info.mtime_ns)


def matching_files(landing: str, glob: str) -> list[Seen]:
    """The files under `landing` (a folder or an object-store URI) whose path below it matches
    `glob` (`*` within one folder name, `**` across folders), in name order."""
    filesystem, root = files.filesystem(landing)
    # Listed from the glob's fixed folders down, not the whole landing zone.
    parts = PurePosixPath(glob).parts
    wild = (number for number, part in enumerate(parts) if any(sign in part for sign in "*?["))
    fixed = min(next(wild, len(parts)), len(parts) - 1)  # a folder: the file's, at the deepest
    start = "/".join([root, *parts[:fixed]])
    selector = pafs.FileSelector(start, recursive=fixed < len(parts) - 1, allow_not_found=True)
    found = []
    for info in filesystem.get_file_info(selector):
        below = PurePosixPath(info.path[len(root) :].lstrip("/")).parts
        if info.type == pafs.FileType.File and _matches(below, parts):
            found.append(_seen(info))
    return sorted(found, key=lambda seen: seen.path)


def _matches(path: tuple[str, ...], glob: tuple[str, ...]) -> bool:
    """Whether the path's parts match the glob's: `*` and `?` within one part, `**` any parts."""
    if not glob:
        return not path
    if glob[0] == "**":
        return any(_matches(path[start:], glob[1:]) for start in range(len(path) + 1))
    return bool(path) and fnmatchcase(path[0], glob[0]) and _matches(path[1:], glob[1:])


def pending_files(contract: Contract, landing: str, table: delta.DeltaTable | None) -> list[Seen]:
    """Landing files matching the contract's glob that bronze has not committed, oldest first."""
    assert not contract.is_database
    found = matching_files(landing, contract.source.glob)
    if table is None:
        return found
    return [
        seen for seen in found if ledger.read(table, ledger.landing_file(contract.name, seen.name)) is None
    ]


def look(landing: str, seen: Seen) -> Seen | None:
    """The file's size and modification time now; None when it is gone."""
    filesystem, _ = files.filesystem(landing)
    info = filesystem.get_file_info(seen.path)
    return None if info.type == pafs.FileType.NotFound else _seen(info)


def read(landing: str, seen: Seen) -> bytes:
    filesystem, _ = files.filesystem(landing)
    with filesystem.open_input_stream(seen.path) as stream:
        return stream.read()


def settle_seconds() -> float:
    return seconds("LAKEHOUSE_LANDING_SETTLE_SECONDS")


def split_settled(found: list[Seen], settle: float) -> tuple[list[Seen], list[Seen]]:
    """The files unchanged for `settle` seconds, and those changed more recently (still being
    written, or just arrived), each in the order given."""
    now_ns = time.time_ns()
    return (
        [seen for seen in found if seen.settles_in(settle, now_ns) <= 0],
        [seen for seen in found if seen.settles_in(settle, now_ns) > 0],
    )


def complete_files(landing: str, found: list[Seen], settle: float) -> tuple[list[Seen], list[Seen]]:
    """The files that are complete, in the order given, and those still settling.

    Files that would settle within SETTLE_WAIT_LIMIT are waited for, once: those unchanged
    by then are complete too, the others are still being written. Files gone meanwhile are in
    neither."""
    settled, young = split_settled(found, settle)
    now_ns = time.time_ns()
    soon = [seen for seen in young if seen.settles_in(settle, now_ns) <= SETTLE_WAIT_LIMIT]
    if soon:
        time.sleep(max(seen.settles_in(settle, now_ns) for seen in soon))
        again, _ = split_settled([now for now in (look(landing, seen) for seen in soon) if now], settle)
        settled += [seen for seen in again if seen in soon]
    order = {seen.path: number for number, seen in enumerate(found)}
    complete = sorted(settled, key=lambda seen: order[seen.path])
    done = {seen.path for seen in complete}
    return complete, [seen for seen in young if seen.path not in done]


def _quarantine(uri: str, rejected: pl.DataFrame) -> delta.DeltaTable | None:
    if rejected.is_empty():
        return delta.open_table(uri)
    # Keyed by file and line only: a re-run on another day must still find the same lines.
    return merge(uri, rejected, [SOURCE_FILE, LINE_NUMBER]).table


def ingest_files(
    contract: Contract,
    landing: str,
    uri: str,
    quarantine_uri: str,
    source: str,
    run_id: str,
    now: datetime | None = None,
) -> Ingestion:
    """Ingest the complete pending files (at most MAX_FILES_PER_RUN, oldest first), a commit for
    each COMMIT_BYTES of them."""
    return ledger.redo_when_moved(
        lambda: _ingest_once(contract, landing, uri, quarantine_uri, source, run_id, now),
        f"bronze/{contract.name}",
    )


def _in_commits(taken: list[Seen]) -> Iterator[list[Seen]]:
    """The files in groups of about COMMIT_BYTES, in the order given: one commit each."""
    group: list[Seen] = []
    held = 0
    for seen in taken:
        if group and held + seen.size > COMMIT_BYTES:
            yield group
            group, held = [], 0
        group.append(seen)
        held += seen.size
    if group:
        yield group


def _ingest_once(
    contract: Contract,
    landing: str,
    uri: str,
    quarantine_uri: str,
    source: str,
    run_id: str,
    now: datetime | None,
) -> Ingestion:
    table = delta.open_table(uri)
    claim = ledger.Claim(uri, table)
    waiting, settling = complete_files(landing, pending_files(contract, landing, table), settle_seconds())
    extracted_at = now or datetime.now(UTC)

    def commit(group: list[Seen], done: Ingestion) -> Ingestion:
        """The group's lines in bronze or the quarantine, its files in bronze's ledger, added to `done`."""
        # Each file's rows become columns at once: rows as Python dicts take several times the
        # memory of the frame.
        frames: list[pl.DataFrame] = []
        rejected: list[dict[str, object]] = []
        names: list[str] = []
        entries: dict[str, int] = {}
        for seen in group:
            data = read(landing, seen)
            if look(landing, seen) != seen:  # written to while read: not complete after all
                settling.append(seen)
                continue
            file_rows, file_rejected = parse_file(seen.name, data, contract)
            frames.append(rows_frame(file_rows, contract))
            rejected.extend(file_rejected)
            names.append(seen.name)
            entries |= ledger.landing_file_entries(contract.name, seen.name, seen.size, ledger.checksum(data))
        if not names:
            return done
        bad = pl.DataFrame(rejected, schema=QUARANTINE_SCHEMA)
        quarantine = _quarantine(quarantine_uri, with_audit_columns(bad, source, run_id, extracted_at))
        stored = delta.arrow_schema(done.table) if done.table else None
        good = pin_types(
            pl.concat(frames, how="diagonal"),
            contract,
            stored,
            f"bronze/{contract.name}",
            guessed_nulls=False,
        )
        added = [name for name in good.columns if stored is not None and name not in stored.names]
        good = with_audit_columns(good, source, run_id, extracted_at)
        written = delta.write(
            uri,
            good,
            partition_by=[PARTITION_COLUMN],
            configuration=delta.CHANGE_DATA_FEED,
            metadata={"lakehouse.run_id": run_id, "lakehouse.files": json.dumps(names)},
            transactions=entries,
            claim=claim,
        )
        return replace(
            done,
            files=done.files + names,
            lines_read=done.lines_read + good.height + len(rejected),
            rows_appended=done.rows_appended + good.height,
            lines_quarantined=done.lines_quarantined + len(rejected),
            added_columns=done.added_columns + added,
            table=written,
            quarantine=quarantine,
        )

    done = Ingestion(
        [], 0, 0, 0, max(len(waiting) - MAX_FILES_PER_RUN, 0), [], table, delta.open_table(quarantine_uri)
    )
    for group in _in_commits(waiting[:MAX_FILES_PER_RUN]):
        done = commit(group, done)
    return replace(done, files_settling=sorted(seen.name for seen in settling))
