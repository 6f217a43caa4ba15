"""A corrupt Delta log: named (table and file) wherever the lakehouse opens the table, checked
and, for a torn last commit, set aside by `lakehouse table check|repair`, after which the next
run redoes exactly the set-aside commit's work.

Tables of a domain that is not the shop: sensor readings written through `delta.write` with
ledger entries, and the library source (tests/library_source.py) run through bronze and silver.
"""

from pathlib import Path

import dagster as dg
import polars as pl
import pytest
from conftest import TEST_SALT, error_line, run_command
from library_source import TABLES, materialize
from test_own_source import _assert_lake, _assert_run, _versions, library, scaffold_contracts

from lakehouse.cli.main import main
from lakehouse.resources import LakehouseStorage
from lakehouse.storage import delta, ledger, table_log
from lakehouse.storage.table_log import CorruptLog, RepairRefused

WATERMARK = ledger.bronze_watermark("readings")


def _readings(root: Path, commits: int = 3) -> str:
    """bronze/readings with `commits` appends, each moving the watermark ledger to 10 * version."""
    uri = LakehouseStorage(root=str(root)).table_uri("bronze", "readings")
    for version in range(commits):
        frame = pl.DataFrame({"sensor_id": [version, version + 100], "value": [0.5, 1.5]})
        delta.write(uri, frame, transactions={WATERMARK: 10 * version})
    return uri


def _tear(uri: str, version: int) -> bytes:
    """Cut the commit file in the middle of a line, as a writer killed half-way leaves it."""
    path = Path(uri) / table_log.commit_file(version)
    whole = path.read_bytes()
    path.write_bytes(whole[: len(whole) // 2])
    return whole[: len(whole) // 2]


def _lakehouse(command: list[str], root: Path, monkeypatch: pytest.MonkeyPatch) -> int:
    monkeypatch.setenv("LAKEHOUSE_ROOT", str(root))
    return main(["table", *command])


def test_a_torn_last_commit_is_named_checked_and_set_aside(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    root = tmp_path / "lakehouse"
    uri = _readings(root)
    torn = _tear(uri, 2)
    broken = f"{uri}/_delta_log/00000000000000000002.json"

    with pytest.raises(CorruptLog) as raised:
        delta.open_table(uri)
    message = str(raised.value)
    assert message.startswith(f"bronze/readings: the Delta log cannot be read: {broken}: line 2 is not JSON")
    assert "\n" not in message and "lakehouse table repair bronze/readings" in message
    assert raised.value.__cause__ is None and raised.value.__suppress_context__, "no DeltaError behind it"

    # As a user runs them: one line on stderr, exit 2, no traceback.
    for command in (["history", "bronze/readings"], ["restore", "bronze/readings", "--version", "0"]):
        line = error_line(run_command(["lakehouse", "table", *command], tmp_path))
        assert line.startswith(f"lakehouse table {command[0]}: bronze/readings: the Delta log cannot be read")
        assert broken in line

    assert _lakehouse(["check", "bronze/readings"], root, monkeypatch) == 1
    out = capsys.readouterr().out
    assert "_delta_log/00000000000000000002.json: line 2 is not JSON" in out
    assert "table loads: no (Kernel error: Json error" in out
    assert "`lakehouse table repair bronze/readings` sets the torn last commit aside" in out

    assert _lakehouse(["repair", "bronze/readings"], root, monkeypatch) == 0
    assert "the table reads at version 1" in capsys.readouterr().out
    # Set aside, never deleted: the torn bytes are kept where Delta reads no commit.
    (kept,) = (Path(uri) / "_delta_log" / "_corrupt").iterdir()
    assert kept.name.startswith("00000000000000000002.json.") and kept.read_bytes() == torn
    table = delta.open_table(uri)
    assert table is not None and table.version() == 1
    assert ledger.read(table, WATERMARK) == 10, "the torn commit's ledger entry went with it"
    assert pl.read_delta(uri).get_column("sensor_id").sort().to_list() == [0, 1, 100, 101]

    assert _lakehouse(["check", "bronze/readings"], root, monkeypatch) == 0
    assert "table loads: yes" in capsys.readouterr().out
    # The next commit takes the freed version; the set-aside file stays as it was.
    delta.write(uri, pl.DataFrame({"sensor_id": [2], "value": [2.5]}), transactions={WATERMARK: 20})
    assert delta.load_table(uri).version() == 2 and kept.read_bytes() == torn


@pytest.mark.parametrize(
    ("damage", "named"),
    [
        ("torn middle", "00000000000000000001.json: line 2 is not JSON"),
        ("missing middle", "00000000000000000001.json: missing, yet later commits exist"),
        ("missing checkpoint", "_last_checkpoint: names the checkpoint of version 1, which is missing"),
        ("garbled checkpoint", "00000000000000000001.checkpoint.parquet: checkpoint unreadable"),
    ],
)
def test_repair_refuses_anything_but_a_torn_last_commit(
    damage: str, named: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    root = tmp_path / "lakehouse"
    uri = _readings(root)
    log = Path(uri) / "_delta_log"
    if damage == "torn middle":
        _tear(uri, 1)
    elif damage == "missing middle":
        (log / "00000000000000000001.json").rename(tmp_path / "moved.json")
    else:
        delta.load_table(uri, 1).create_checkpoint()
        checkpoint = log / "00000000000000000001.checkpoint.parquet"
        if damage == "missing checkpoint":
            checkpoint.unlink()
        else:
            checkpoint.write_bytes(checkpoint.read_bytes()[:-100])
    files = sorted(path.name for path in log.iterdir())

    with pytest.raises(CorruptLog, match=named):
        delta.open_table(uri)
    assert _lakehouse(["check", "bronze/readings"], root, monkeypatch) == 1
    out = capsys.readouterr().out
    assert named in out and "not a torn last commit: restore the table's folder from a backup" in out
    assert _lakehouse(["repair", "bronze/readings"], root, monkeypatch) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith(
        "lakehouse table repair: bronze/readings: repair only sets aside a torn last commit"
    )
    assert named in error and "\n" not in error
    assert sorted(path.name for path in log.iterdir()) == files, "nothing moved"


def test_repair_refuses_a_torn_commit_silver_has_consumed(tmp_path: Path) -> None:
    root = tmp_path / "lakehouse"
    uri = _readings(root)
    storage = LakehouseStorage(root=str(root))
    silver = storage.table_uri("silver", "readings")
    delta.write(
        silver, pl.DataFrame({"sensor_id": [0]}), transactions={ledger.silver_position("readings"): 2}
    )
    _tear(uri, 2)
    error = error_line(run_command(["lakehouse", "table", "repair", "bronze/readings"], tmp_path))
    assert "silver/readings has consumed bronze/readings up to version 2, the torn commit included" in error
    with pytest.raises(RepairRefused):
        table_log.repair(uri, ("silver/readings", 2))
    assert not (Path(uri) / "_delta_log" / "_corrupt").exists()


# --- the pipeline on the library ------------------------------------------------------------


@pytest.mark.slow
def test_the_next_run_redoes_exactly_the_set_aside_commit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    built = library("sqlite", tmp_path)
    contracts = scaffold_contracts(built, tmp_path / "contracts")
    storage = LakehouseStorage(root=str(tmp_path / "lakehouse"))
    instance = dg.DagsterInstance.ephemeral()
    keys = {name: built.primary_key(name) for name in TABLES}
    loans = storage.table_uri("bronze", "loans")

    _assert_run(
        materialize(contracts, built.source, tmp_path, instance, TEST_SALT, ("bronze", "silver")),
        len(built.orphans()),
    )
    before = {name: _versions(built.truth(name), keys[name]) for name in TABLES}
    built.change()
    extracted = materialize(contracts, built.source, tmp_path, instance, TEST_SALT, ("bronze",))
    assert extracted.success
    torn_rows = _versions(pl.read_delta(loans).filter(pl.col("_run_id") == extracted.run_id), keys["loans"])
    assert torn_rows and delta.load_table(loans).version() == 1
    _tear(loans, 1)

    failed = materialize(contracts, built.source, tmp_path, instance, TEST_SALT, ("bronze", "silver"))
    assert not failed.success
    (failure,) = failed.get_step_failure_events()
    raised = failure.step_failure_data.error.cause
    assert raised is not None and raised.cls_name == "CorruptLog" and raised.cause is None
    text = raised.message.strip()
    assert "\n" not in text and "DeltaError" not in text
    assert text.startswith(
        "lakehouse.storage.table_log.CorruptLog: bronze/loans: the Delta log cannot be read"
    )
    assert f"{loans}/_delta_log/00000000000000000001.json" in text

    assert _lakehouse(["check", "bronze/loans"], tmp_path / "lakehouse", monkeypatch) == 1
    assert "_delta_log/00000000000000000001.json: line" in capsys.readouterr().out
    assert _lakehouse(["repair", "bronze/loans"], tmp_path / "lakehouse", monkeypatch) == 0
    assert delta.load_table(loans).version() == 0

    again = materialize(contracts, built.source, tmp_path, instance, TEST_SALT, ("bronze", "silver"))
    _assert_run(again, len(built.orphans()))
    # Bronze extracted again exactly the versions of the set-aside commit: none lost, none twice.
    redone = pl.read_delta(loans).filter(pl.col("_run_id") == again.run_id)
    assert _versions(redone, keys["loans"]) == torn_rows
    shown = {name: before[name] | _versions(built.truth(name), keys[name]) for name in TABLES}
    _assert_lake(built, storage, keys, shown)

    # The same for silver, whose MERGE commit carries its bronze position.
    silver = storage.table_uri("silver", "members")
    position = ledger.silver_position("members")
    merged = delta.load_table(silver).version()
    consumed = ledger.read(delta.load_table(silver), position)
    _tear(silver, merged)
    failed = materialize(contracts, built.source, tmp_path, instance, TEST_SALT, ("bronze", "silver"))
    (failure,) = failed.get_step_failure_events()
    assert f"{silver}/_delta_log/{merged:020d}.json" in failure.step_failure_data.error.cause.message
    assert _lakehouse(["repair", "silver/members"], tmp_path / "lakehouse", monkeypatch) == 0
    assert ledger.read(delta.load_table(silver), position) < consumed, "silver merges that bronze again"
    _assert_run(
        materialize(contracts, built.source, tmp_path, instance, TEST_SALT, ("bronze", "silver")),
        len(built.orphans()),
    )
    _assert_lake(built, storage, keys, shown)


def test_repair_refuses_a_torn_commit_a_checkpoint_holds(tmp_path: Path) -> None:
    uri = _readings(tmp_path / "lakehouse")
    delta.load_table(uri).create_checkpoint()
    _tear(uri, 2)
    report = table_log.check(uri)
    assert report.load_error is None and not report.sound, "loads from the checkpoint, yet a file is broken"
    assert [problem.file for problem in report.state.problems] == ["_delta_log/00000000000000000002.json"]
    with pytest.raises(RepairRefused, match="a checkpoint holds version 2"):
        table_log.repair(uri)
    assert not (Path(uri) / "_delta_log" / "_corrupt").exists()
