"""dbt's target folder: a run folder per build, and the parse state each warehouse keeps.

dbt parses the project again in whole (seconds at every build) when the parse state it is
handed was written for another profile, and the warehouse's path is part of the profile. One
state for the project would be thrown away at every build whenever two deployments (or
tests) with their own warehouses share the checkout, so each warehouse keeps its own. dbt still
checks the state it is handed and parses again whatever changed in the project.
"""

import hashlib
import os
import shutil
import uuid
from pathlib import Path

PARSE_STATE = "partial_parse.msgpack"
PARSE_STATES = "parse_states"
KEPT_RUN_FOLDERS = 5
# One per warehouse built from this checkout recently: a deployment has one or two.
KEPT_PARSE_STATES = 8


def parse_state_of(target: Path, warehouse: Path) -> Path:
    """Where the parse state of builds into `warehouse` is kept."""
    key = hashlib.sha256(str(warehouse.resolve()).encode()).hexdigest()[:16]
    return target / PARSE_STATES / f"{key}.msgpack"


def run_folder(target: Path, step: str, run_id: str, warehouse: Path) -> Path:
    """A new folder for one dbt build (named as dagster-dbt names its own), holding the parse
    state of `warehouse` when it has one; otherwise dagster-dbt copies the project's."""
    folder = target / f"{step}-{run_id[:7]}-{uuid.uuid4().hex[:7]}"
    folder.mkdir(parents=True)
    state = parse_state_of(target, warehouse)
    if state.exists():
        shutil.copyfile(state, folder / PARSE_STATE)
    return folder


def keep_parse_state(target: Path, run: Path, warehouse: Path) -> None:
    """Keep the parse state a build left in its run folder for the next build into `warehouse`."""
    written = run / PARSE_STATE
    if not written.exists():
        return
    state = parse_state_of(target, warehouse)
    state.parent.mkdir(exist_ok=True)
    # Named for this process: a build into the same warehouse elsewhere may keep its own now.
    staged = state.with_name(f"{state.name}.{os.getpid()}.new")
    shutil.copyfile(written, staged)
    staged.replace(state)


def prune(target: Path) -> None:
    """Keep only the newest run folders and parse states."""
    runs = [path for path in target.iterdir() if path.is_dir() and "-" in path.name]
    # With the copies a killed build left staged: the newest are some build's own, still in use.
    states = list((target / PARSE_STATES).glob("*.msgpack*")) if (target / PARSE_STATES).is_dir() else []
    for paths, kept in ((runs, KEPT_RUN_FOLDERS), (states, KEPT_PARSE_STATES)):
        for path in sorted(paths, key=_modified)[:-kept]:
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)


def _modified(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:  # pruned by another build meanwhile
        return 0.0
