"""dbt's target folder: each warehouse hands its next build the parse state of its last one."""

import os
from pathlib import Path

from lakehouse.marts import target


def build(targets: Path, warehouse: Path, state: bytes) -> Path:
    """What a dbt build does to the target folder: a run folder, where dbt leaves `state`."""
    run = target.run_folder(targets, "dbt_models", "0123456789", warehouse)
    handed = run / target.PARSE_STATE
    (run / "dbt.log").write_text(handed.read_text() if handed.exists() else "")
    handed.write_bytes(state)
    target.keep_parse_state(targets, run, warehouse)
    return run


def test_each_warehouse_gets_the_parse_state_of_its_own_last_build(tmp_path: Path) -> None:
    targets = tmp_path / "target"
    first, second = tmp_path / "a" / "warehouse.duckdb", tmp_path / "b" / "warehouse.duckdb"

    new = build(targets, first, b"state of a")
    build(targets, second, b"state of b")
    again = build(targets, first, b"state of a, later")

    assert (new / "dbt.log").read_text() == ""  # nothing kept yet: dagster-dbt hands the project's
    assert (again / "dbt.log").read_text() == "state of a"
    assert target.parse_state_of(targets, second).read_bytes() == b"state of b"
    assert again.name.startswith("dbt_models-0123456-")


def test_only_the_newest_run_folders_and_parse_states_are_kept(tmp_path: Path) -> None:
    targets = tmp_path / "target"
    warehouses = [tmp_path / f"w{number}.duckdb" for number in range(12)]
    runs = []
    for order, warehouse in enumerate(warehouses):
        runs.append(build(targets, warehouse, b"state"))
        for made in (runs[-1], target.parse_state_of(targets, warehouse)):
            os.utime(made, (1000 + order, 1000 + order))  # the file system's clock may be coarse
    (targets / "manifest.json").write_text("{}")
    left = targets / target.PARSE_STATES / "0123456789abcdef.msgpack.4242.new"  # by a killed build
    left.write_bytes(b"state")
    os.utime(left, (500, 500))

    target.prune(targets)

    kept = {path.name for path in targets.iterdir() if path.is_dir() and path.name != target.PARSE_STATES}
    assert kept == {run.name for run in runs[-target.KEPT_RUN_FOLDERS :]}
    newest = {target.parse_state_of(targets, w) for w in warehouses[-target.KEPT_PARSE_STATES :]}
    assert set((targets / target.PARSE_STATES).iterdir()) == newest
    assert (targets / "manifest.json").exists()
