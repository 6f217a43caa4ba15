"""A table's Delta log as files: which file is broken, a check of the whole log, and setting a
torn last commit aside.

delta-rs reports a log it cannot read as "Kernel error: Json error: ...", naming neither the
table nor the file. A commit file is torn when the process (or disk) writing it stopped
half-way; the commit never completed, so setting the file aside reads the table at the
version before it. The ledger entries of that commit (lakehouse/storage/ledger.py) go with it, so
the next run redoes exactly its work. Anything else (a broken commit that later ones build
on, a missing commit, a broken checkpoint) is refused: the versions after it are real.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime

import pyarrow.parquet as pq
from deltalake import DeltaTable
from deltalake.exceptions import DeltaError, TableNotFoundError
from pyarrow import fs

from lakehouse.storage import files

LOG = "_delta_log"
# Inside the log folder, where Delta lists no commits; a set-aside file also keeps a suffix
# that matches no Delta file pattern.
SET_ASIDE = f"{LOG}/_corrupt"
COMMIT = re.compile(r"(\d{20})\.json")
CHECKPOINT = re.compile(r"(\d{20})\.checkpoint(?:\.\d+\.\d+)?\.parquet")
LAST_CHECKPOINT = "_last_checkpoint"


class CorruptLog(RuntimeError):
    """A table whose Delta log cannot be read, naming the table and the broken file."""


class RepairRefused(ValueError):
    """A log `repair` does not mend: anything but a torn last commit."""


@dataclass(frozen=True)
class Problem:
    file: str  # relative to the table, e.g. _delta_log/00000000000000000007.json
    what: str
    version: int | None = None  # the commit's version, for a commit file


@dataclass(frozen=True)
class LogState:
    """What the log folder holds and what is wrong with it."""

    uri: str
    commits: list[int]
    checkpoints: list[int]
    problems: list[Problem]

    @property
    def newest(self) -> int | None:
        return self.commits[-1] if self.commits else None

    @property
    def torn_last(self) -> Problem | None:
        """The newest commit, when it is broken and the log's only problem."""
        only = self.problems[0] if len(self.problems) == 1 else None
        return only if only is not None and only.version == self.newest else None

    @property
    def covered(self) -> bool:
        """Whether a checkpoint holds the newest version (then setting its commit aside is no repair)."""
        return self.newest is not None and any(c >= self.newest for c in self.checkpoints)

    @property
    def repairable(self) -> bool:
        return self.torn_last is not None and not self.covered


@dataclass(frozen=True)
class Report:
    state: LogState
    load_error: str | None  # why delta-rs cannot load the table, None when it loads

    @property
    def sound(self) -> bool:
        return not self.state.problems and self.load_error is None


@dataclass(frozen=True)
class Repaired:
    set_aside: str  # where the torn commit now is, relative to the table
    version: int | None  # the version the table reads at now, None: no commit left


def table_name(uri: str) -> str:
    """`layer/name` of a table at `<root>/<layer>/<name>`."""
    return "/".join(uri.rstrip("/").split("/")[-2:])


def commit_file(version: int) -> str:
    return f"{LOG}/{version:020d}.json"


def _commit_problem(text: bytes) -> str | None:
    """Why a commit file is not a commit: each line one JSON object, at least one action."""
    lines = [line for line in text.decode("utf-8", errors="replace").splitlines() if line.strip()]
    if not lines:
        return "empty: the file was cut short before its first action"
    for number, line in enumerate(lines, start=1):
        try:
            action = json.loads(line)
        except json.JSONDecodeError as error:
            return f"line {number} is not JSON ({error.msg}): the file was cut short or damaged"
        if not isinstance(action, dict):
            return f"line {number} is not a Delta action"
    return None


def _checkpoint_problems(filesystem: fs.FileSystem, root: str, names: set[str]) -> list[Problem]:
    problems = []
    for name in sorted(name for name in names if CHECKPOINT.fullmatch(name)):
        try:
            with filesystem.open_input_file(f"{root}/{LOG}/{name}") as checkpoint:
                pq.read_metadata(checkpoint)
        except (OSError, ValueError) as error:
            problems.append(Problem(f"{LOG}/{name}", f"checkpoint unreadable ({error})"))
    if LAST_CHECKPOINT in names:
        path = f"{LOG}/{LAST_CHECKPOINT}"
        with filesystem.open_input_stream(f"{root}/{path}") as stream:
            text = stream.read()
        try:
            version = int(json.loads(text)["version"])
        except (ValueError, KeyError, TypeError):
            return [*problems, Problem(path, "not the JSON of a checkpoint hint")]
        if not any(CHECKPOINT.fullmatch(name) and int(name[:20]) == version for name in names):
            problems.append(Problem(path, f"names the checkpoint of version {version}, which is missing"))
    return problems


def inspect(uri: str) -> LogState:
    """Read every file of the table's log: commits that do not parse, versions missing after the
    newest checkpoint, checkpoints that cannot be read."""
    filesystem, root = files.filesystem(uri)
    found = filesystem.get_file_info(fs.FileSelector(f"{root}/{LOG}", allow_not_found=True))
    names = {info.base_name for info in found if info.type == fs.FileType.File}
    commits = sorted(int(name[:20]) for name in names if COMMIT.fullmatch(name))
    checkpoints = sorted({int(name[:20]) for name in names if CHECKPOINT.fullmatch(name)})
    problems = _checkpoint_problems(filesystem, root, names)
    for version in commits:
        with filesystem.open_input_stream(f"{root}/{commit_file(version)}") as commit:
            what = _commit_problem(commit.read())
        if what is not None:
            problems.append(Problem(commit_file(version), what, version))
    # Commits before a checkpoint may be cleaned up; after it, a table needs every one.
    first = checkpoints[-1] + 1 if checkpoints else 0
    present = set(commits)
    missing = [v for v in range(first, commits[-1] + 1) if v not in present] if commits else []
    problems += [
        Problem(commit_file(version), "missing, yet later commits exist", version) for version in missing
    ]
    return LogState(
        uri, commits, checkpoints, sorted(problems, key=lambda p: (p.version is None, p.version or 0, p.file))
    )


def _hint(uri: str) -> str:
    name = table_name(uri)
    return (
        f"`lakehouse table check {name}` reports the log; `lakehouse table repair {name}` sets a "
        "torn last commit aside (docs/operations.md, Troubleshooting)"
    )


def unreadable(uri: str, error: Exception) -> Exception:
    """The error to raise for a table delta-rs failed to load with `error`: `CorruptLog` naming
    the broken file when the log has one, else `error` itself (storage down, permissions)."""
    try:
        problems = inspect(uri).problems
    except OSError:
        return error  # the log cannot be listed either: delta-rs's error is the one to see
    if not problems:
        return error
    # The newest broken file is the one a reader of the current version trips on first.
    problem = next((p for p in reversed(problems) if p.version is not None), problems[-1])
    return CorruptLog(
        f"{table_name(uri)}: the Delta log cannot be read: {uri}/{problem.file}: {problem.what}"
        f"{f' (and {len(problems) - 1} more problem(s))' if len(problems) > 1 else ''}; {_hint(uri)}"
    )


def check(uri: str) -> Report:
    """The log's files and whether delta-rs loads the table from them."""
    state = inspect(uri)
    try:
        DeltaTable(uri, storage_options=files.storage_options(uri))
        load_error = None
    except TableNotFoundError:
        load_error = "no commit to load" if state.commits else None
    except DeltaError as error:
        load_error = str(error).splitlines()[0]
    return Report(state, load_error)


def _aside_path(filesystem: fs.FileSystem, root: str, name: str) -> str:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    path, number = f"{SET_ASIDE}/{name}.{stamp}", 1
    while filesystem.get_file_info(f"{root}/{path}").type != fs.FileType.NotFound:
        number += 1
        path = f"{SET_ASIDE}/{name}.{stamp}-{number}"
    return path


def repair(uri: str, consumer: tuple[str, int] | None = None) -> Repaired:
    """Move a torn last commit into `_delta_log/_corrupt/`, so the table reads at the version
    before it. `consumer`: a table that has consumed this one and the version it got to; a
    torn commit it has consumed cannot be redone by the next run and is refused."""
    name = table_name(uri)
    state = inspect(uri)
    if not state.problems:
        raise RepairRefused(f"{name}: the Delta log has no broken file; nothing to repair")
    torn = state.torn_last
    if torn is None:
        listed = "; ".join(f"{problem.file}: {problem.what}" for problem in state.problems)
        raise RepairRefused(
            f"{name}: repair only sets aside a torn last commit; this log has: {listed}. Restore "
            "the table's folder from a backup (commits after a broken file are real data)"
        )
    assert torn.version is not None
    if state.covered:
        raise RepairRefused(
            f"{name}: a checkpoint holds version {torn.version}, whose commit {torn.file} is broken: "
            "restore the table's folder from a backup"
        )
    if consumer is not None and consumer[1] >= torn.version:
        raise RepairRefused(
            f"{consumer[0]} has consumed {name} up to version {consumer[1]}, the torn commit "
            f"included: restore {consumer[0]} first to a version that consumed at most "
            f"{torn.version - 1} (see `lakehouse table history {consumer[0]}`)"
        )
    filesystem, root = files.filesystem(uri)
    filesystem.create_dir(f"{root}/{SET_ASIDE}")
    aside = _aside_path(filesystem, root, torn.file.rsplit("/", 1)[1])
    filesystem.move(f"{root}/{torn.file}", f"{root}/{aside}")
    return Repaired(aside, torn.version - 1 if torn.version > 0 else None)
