"""The ledger: entries committed with the rows they describe, and writers that lose a race to
another writer of the same entries starting again instead of appending twice."""

import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import polars as pl
import pytest
from conftest import PROJECT, Lake, assert_bronze_holds_each_version_once, command_environment

from lakehouse.storage import delta, ledger
from lakehouse.storage.ledger import Claim, LedgerMoved

READINGS = pl.DataFrame({"sensor": ["a", "b"], "celsius": [21.5, 19.0]})
WATERMARK = ledger.bronze_watermark("readings")


def test_entries_are_read_back_from_the_commit_that_wrote_them(tmp_path: Path) -> None:
    uri = str(tmp_path / "readings")
    assert ledger.read(delta.open_table(uri), WATERMARK) is None
    table = delta.write(uri, READINGS, transactions={WATERMARK: 100, ledger.landing_file("readings", "x"): 1})
    assert ledger.read(table, WATERMARK) == 100
    assert ledger.keys_written(uri, -1, table.version()) == {WATERMARK, ledger.landing_file("readings", "x")}
    delta.write(uri, READINGS, transactions={WATERMARK: ledger.UNSET})
    assert ledger.read(delta.open_table(uri), WATERMARK) is None


def test_a_commit_fails_when_another_writer_moved_the_same_entry_since_it_was_read(tmp_path: Path) -> None:
    uri = str(tmp_path / "readings")
    delta.write(uri, READINGS, transactions={WATERMARK: 1})
    first, second = Claim(uri, delta.open_table(uri)), Claim(uri, delta.open_table(uri))
    delta.write(uri, READINGS, transactions={WATERMARK: 2}, claim=first)
    with pytest.raises(LedgerMoved, match=WATERMARK):
        delta.write(uri, READINGS, transactions={WATERMARK: 2}, claim=second)
    assert pl.read_delta(uri).height == 2 * READINGS.height


def test_commits_of_other_entries_or_without_entries_do_not_stop_a_writer(tmp_path: Path) -> None:
    uri = str(tmp_path / "readings")
    delta.write(uri, READINGS, transactions={WATERMARK: 1})
    claim = Claim(uri, delta.open_table(uri))
    delta.write(uri, READINGS, transactions={ledger.landing_file("readings", "other.jsonl"): 1})
    delta.write(uri, READINGS)  # a maintenance rewrite, say
    table = delta.write(uri, READINGS, transactions={WATERMARK: 2}, claim=claim)
    assert ledger.read(table, WATERMARK) == 2
    # The claim follows the writer's own commit: its next commit is not "moved" by itself.
    delta.write(uri, READINGS, transactions={WATERMARK: 3}, claim=claim)


def test_a_table_created_by_another_writer_since_the_read_counts_as_moved(tmp_path: Path) -> None:
    uri = str(tmp_path / "readings")
    claim = Claim(uri, None)
    delta.write(uri, READINGS, transactions={WATERMARK: 1})
    with pytest.raises(LedgerMoved):
        delta.write(uri, READINGS, transactions={WATERMARK: 1}, claim=claim)


def test_a_table_created_by_another_writer_during_the_write_is_not_appended_to(tmp_path: Path) -> None:
    uri = str(tmp_path / "readings")
    claim = Claim(uri, None)

    def frames() -> Iterator[pl.DataFrame]:
        delta.write(uri, READINGS, transactions={WATERMARK: 1})  # the other writer, first
        yield READINGS

    with pytest.raises(LedgerMoved):
        delta.write(uri, frames(), transactions={WATERMARK: 1}, claim=claim)
    assert pl.read_delta(uri).height == READINGS.height


def test_a_merge_that_finds_its_table_created_meanwhile_merges_into_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two runs' first loads at once: the one whose look found no table must not append what
    the other has created (an unclaimed table, such as a silver table's history)."""
    from lakehouse.storage.merge import merge

    uri = str(tmp_path / "readings")
    merge(uri, READINGS, ["sensor"])  # the other writer, between this one's look and its write
    opened = delta.open_table
    looks = iter([None])
    monkeypatch.setattr(delta, "open_table", lambda at: next(looks, opened(at)))

    counts = merge(uri, pl.DataFrame({"sensor": ["b", "c"], "celsius": [19.0, 7.5]}), ["sensor"])

    assert (counts.inserted, counts.unchanged) == (1, 1)
    assert pl.read_delta(uri).sort("sensor").get_column("sensor").to_list() == ["a", "b", "c"]


def test_a_merge_against_a_moved_ledger_fails_and_changes_nothing(tmp_path: Path) -> None:
    from lakehouse.storage.merge import merge

    uri = str(tmp_path / "readings")
    position = ledger.silver_position("readings")
    merge(uri, READINGS, ["sensor"], transactions={position: 1})
    late = Claim(uri, delta.open_table(uri))
    changed = 's."celsius" <> t."celsius"'
    merge(
        uri,
        READINGS.with_columns(celsius=pl.lit(30.0)),
        ["sensor"],
        update_when=changed,
        transactions={position: 2},
    )
    with pytest.raises(LedgerMoved):
        merge(
            uri,
            READINGS.with_columns(celsius=pl.lit(0.0)),
            ["sensor"],
            transactions={position: 2},
            claim=late,
        )
    assert pl.read_delta(uri).get_column("celsius").to_list() == [30.0, 30.0]


def test_work_overtaken_by_another_writer_starts_again_and_gives_up_with_one_clear_error() -> None:
    attempts: list[int] = []

    def overtaken_once() -> str:
        attempts.append(1)
        if len(attempts) == 1:
            raise LedgerMoved("moved")
        return "done"

    assert ledger.redo_when_moved(overtaken_once, "bronze/readings") == "done"
    assert len(attempts) == 2

    def always_overtaken() -> None:
        raise LedgerMoved("moved")

    with pytest.raises(LedgerMoved, match="bronze/readings: gave up after 3 attempts"):
        ledger.redo_when_moved(always_overtaken, "bronze/readings", attempts=3)


INGEST = "group:bronze or group:silver"
EXCEPTION_LINE = re.compile(r"^[\w.]+(Error|Exception): ")


def _start_runs(lake: Lake, count: int) -> list[subprocess.Popen]:
    """`count` runs of bronze and silver from the CLI, started at once, each in its own group."""
    environment = command_environment(lake.folder)
    return [
        subprocess.Popen(
            [
                str(Path(sys.executable).parent / "dagster"),
                "asset",
                "materialize",
                "-m",
                "lakehouse.definitions",
                "--select",
                INGEST,
            ],
            cwd=PROJECT,
            env=environment,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        for _ in range(count)
    ]


def _finish(runs: list[subprocess.Popen]) -> list[tuple[int, str]]:
    results = []
    for run in runs:
        try:
            output, _ = run.communicate(timeout=300)
        except subprocess.TimeoutExpired:
            os.killpg(run.pid, signal.SIGKILL)
            output, _ = run.communicate()
        results.append((run.returncode, output))
    return results


def failure(output: str) -> str:
    """What a failed run printed: each exception it names (Dagster prints a step's cause before
    its stack), then its last lines."""
    named = [line for line in output.splitlines() if EXCEPTION_LINE.match(line)]
    return "\n".join([*dict.fromkeys(named), "...", output[-2000:]])


def test_runs_started_together_append_each_row_version_once(lake: Lake) -> None:
    for _ in range(2):  # a first load, then an incremental batch, each raced by three runs
        if _:
            lake.advance()
        for code, output in _finish(_start_runs(lake, 3)):
            assert code == 0, failure(output)
        assert_bronze_holds_each_version_once(lake)
    # One more run finds nothing new, and its blocking reconciliation checks pass.
    ((code, output),) = _finish(_start_runs(lake, 1))
    assert code == 0, failure(output)
    assert "RUN_SUCCESS" in output
