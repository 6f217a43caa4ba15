"""Landing files still being written: bronze takes a file only once it is complete, records its
size and checksum, and a file that changes after its ingestion is reported by name.

The domain is a water network's meter readings, not the shop: one JSON line per reading.
"""

import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import polars as pl
import pytest

from asset_checks import all_checks
from lakehouse.bronze.assets import bronze_assets
from lakehouse.bronze.columns import PARTITION_COLUMN, with_audit_columns
from lakehouse.bronze.landing import settle_seconds
from lakehouse.orchestration.sensors import landing_sensor
from lakehouse.resources import Clock, LakehouseStorage, LandingZone
from lakehouse.settings import SettingsError
from lakehouse.sources.contract import Contract
from lakehouse.storage import delta, ledger

READINGS = Contract.model_validate(
    {
        "name": "readings",
        "description": "Meter readings from a water network's sensors.",
        "source": {"kind": "landing", "glob": "readings/*.jsonl"},
        "primary_key": ["reading_id"],
        "history": "append",
        "columns": {
            "reading_id": {"type": "string", "nullable": False, "unique": True},
            "meter": {"type": "string"},
            "litres": {"type": "float"},
        },
    }
)
SETTLE = "LAKEHOUSE_LANDING_SETTLE_SECONDS"
# Appends a reading every `pause` seconds until the file `stop` exists, then the last `tail`
# readings at once, and prints how many it wrote.
WRITER = """
import json, sys, time
from pathlib import Path
path, stop, pause, tail = Path(sys.argv[1]), Path(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
written = 0
with path.open("a") as out:
    def reading():
        global written
        written += 1
        out.write(json.dumps({"reading_id": f"w{written}", "meter": "m7", "litres": written}) + "\\n")
        out.flush()
    while not stop.exists():
        reading()
        time.sleep(pause)
    for _ in range(tail):
        reading()
print(written)
"""


def readings(count: int, prefix: str) -> str:
    return "".join(
        json.dumps({"reading_id": f"{prefix}{n}", "meter": f"m{n % 3}", "litres": n / 4}) + "\n"
        for n in range(count)
    )


class Network:
    """A landing folder of meter readings and its lakehouse, materialised in-process."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.landing = folder / "landing"
        (self.landing / "readings").mkdir(parents=True)
        self.storage = LakehouseStorage(root=str(folder / "lakehouse"))
        self.instance = dg.DagsterInstance.ephemeral()

    def file(self, name: str) -> Path:
        return self.landing / "readings" / name

    def materialize(self) -> dg.ExecuteInProcessResult:
        return dg.materialize(
            [*bronze_assets([READINGS]), *all_checks([READINGS])],
            selection=dg.AssetSelection.assets(["bronze", "readings"], ["quarantine", "readings_malformed"]),
            resources={
                "landing": LandingZone(path=str(self.landing)),
                "lakehouse": self.storage,
                "clock": Clock(now="2026-11-02T12:00:00+00:00"),
            },
            instance=self.instance,
            raise_on_error=False,
        )

    def bronze(self) -> pl.DataFrame:
        return pl.read_delta(self.storage.table_uri("bronze", "readings"))

    def ledger(self) -> delta.DeltaTable | None:
        return delta.open_table(self.storage.table_uri("bronze", "readings"))


def bronze_metadata(result: dg.ExecuteInProcessResult) -> dict:
    [event] = [
        m
        for m in result.asset_materializations_for_node("bronze_readings")
        if m.asset_key.path[0] == "bronze"
    ]
    return {name: value.value for name, value in event.metadata.items()}


def lines_check(result: dg.ExecuteInProcessResult) -> dg.AssetCheckEvaluation:
    [evaluation] = [
        e for e in result.get_asset_check_evaluations() if e.check_name == "lines_in_bronze_or_quarantine"
    ]
    return evaluation


@pytest.fixture
def network(tmp_path: Path) -> Network:
    return Network(tmp_path)


@pytest.mark.slow
def test_a_file_being_appended_to_is_ingested_whole_once_it_has_settled(
    network: Network, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(SETTLE, "2")
    growing, stop = network.file("meter_m7.jsonl"), network.folder / "stop"
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(growing), str(stop), "0.02", "36"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        while not growing.exists() or growing.stat().st_size == 0:
            time.sleep(0.01)
        # A file written elsewhere and renamed in whole, while the other is being written.
        staged = network.folder / "staging" / "meters_a.jsonl"
        staged.parent.mkdir()
        staged.write_text(readings(5, "a"))
        staged.rename(network.file("meters_a.jsonl"))

        during = network.materialize()
        assert writer.poll() is None, "the writer must still be writing during the first run"
    finally:
        stop.touch()
        output, _ = writer.communicate(timeout=60)
    written = int(output)

    assert during.success
    metadata = bronze_metadata(during)
    assert (metadata["files_ingested"], metadata["files_settling"]) == (1, 1)
    assert ledger.ingested_file(network.ledger(), "readings", growing.name) is None
    assert set(network.bronze().get_column("_source_file")) == {"meters_a.jsonl"}

    after = network.materialize()
    assert after.success and lines_check(after).passed
    assert bronze_metadata(after)["files_ingested"] == 1
    lines = network.bronze().filter(pl.col("_source_file") == growing.name)
    assert sorted(lines.get_column("_line_number")) == list(range(1, written + 1))
    recorded = ledger.ingested_file(network.ledger(), "readings", growing.name)
    data = growing.read_bytes()
    assert recorded == ledger.IngestedFile(len(data), ledger.checksum(data))

    again = network.materialize()
    assert bronze_metadata(again)["files_ingested"] == 0
    assert network.bronze().height == 5 + written


def test_a_file_changed_after_its_ingestion_fails_the_check_naming_it_and_adds_nothing(
    network: Network,
) -> None:
    for name in ("meters_a.jsonl", "meters_b.jsonl", "meters_c.jsonl"):
        network.file(name).write_text(readings(4, name[7]))
    assert network.materialize().success
    rows = network.bronze().height

    appended = network.file("meters_a.jsonl")
    appended.write_text(appended.read_text() + readings(1, "late"))
    rewritten = network.file("meters_b.jsonl")
    rewritten.write_text(rewritten.read_text().replace('"m1"', '"m4"'))
    result = network.materialize()

    evaluation = lines_check(result)
    assert not result.success and not evaluation.passed
    assert evaluation.description.startswith("2 ingested readings files do not match bronze: ")
    size = len(readings(4, "a"))
    assert (
        f"meters_a.jsonl: changed after ingestion: {size + len(readings(1, 'late')):,} bytes now, "
        f"{size:,} when ingested" in evaluation.description
    )
    assert "meters_b.jsonl: changed after ingestion: same" in evaluation.description
    assert "meters_c.jsonl" not in evaluation.description
    assert evaluation.metadata["files_changed_after_ingestion"].value == 2
    assert bronze_metadata(result)["files_ingested"] == 0
    assert network.bronze().height == rows


def test_a_lake_whose_ledger_has_no_sizes_is_read_and_advanced_and_names_a_short_file(
    network: Network,
) -> None:
    """A lake written before sizes and checksums were recorded: its files stay ingested, a new
    file gets them, and a file bronze holds only part of is named with its missing lines."""
    old = network.file("meters_old.jsonl")
    old.write_text(readings(5, "o"))
    # What the earlier code committed for a file it read while it was written: 3 of its 5
    # lines, the file marked ingested and nothing more.
    rows = pl.DataFrame(
        {
            "reading_id": [f"o{n}" for n in range(3)],
            "meter": [f"m{n % 3}" for n in range(3)],
            "litres": [str(n / 4) for n in range(3)],
            "_source_file": [old.name] * 3,
            "_line_number": [1, 2, 3],
        }
    )
    delta.write(
        network.storage.table_uri("bronze", "readings"),
        with_audit_columns(
            rows, "landing:readings/*.jsonl", "earlier-run", datetime(2026, 11, 1, tzinfo=UTC)
        ),
        partition_by=[PARTITION_COLUMN],
        transactions={ledger.landing_file("readings", old.name): 1},
    )
    network.file("meters_new.jsonl").write_text(readings(2, "n"))

    result = network.materialize()

    assert bronze_metadata(result)["files_ingested"] == 1
    table = network.ledger()
    assert ledger.ingested_file(table, "readings", old.name) == ledger.IngestedFile(None, None)
    new = network.file("meters_new.jsonl").read_bytes()
    assert ledger.ingested_file(table, "readings", "meters_new.jsonl") == ledger.IngestedFile(
        len(new), ledger.checksum(new)
    )
    evaluation = lines_check(result)
    assert not evaluation.passed
    assert evaluation.description == (
        "1 ingested readings files do not match bronze: "
        "meters_old.jsonl: 3 of 5 lines in bronze or quarantine"
    )


def test_the_landing_sensor_launches_no_run_for_a_file_still_settling(
    network: Network, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(SETTLE, "30")
    sensor = landing_sensor(READINGS)
    fresh = network.file("meters_a.jsonl")
    fresh.write_text(readings(3, "a"))

    def evaluate(cursor: str | None) -> tuple[dg.SensorResult | dg.SkipReason, str | None]:
        context = dg.build_sensor_context(
            cursor=cursor,
            instance=network.instance,
            resources={"landing": LandingZone(path=str(network.landing)), "lakehouse": network.storage},
        )
        result = sensor(context)
        return result, result.cursor if isinstance(result, dg.SensorResult) else context.cursor

    skipped, cursor = evaluate(None)
    assert isinstance(skipped, dg.SkipReason) and "1 still settling" in skipped.skip_message
    assert json.loads(cursor) == []

    # Unchanged for longer than the settle time, as a file written a minute ago and renamed
    # in is: requested now.
    a_minute_ago = time.time() - 60
    os.utime(fresh, (a_minute_ago, a_minute_ago))
    requested, cursor = evaluate(cursor)
    assert isinstance(requested, dg.SensorResult) and len(requested.run_requests) == 1
    assert json.loads(cursor) == [fresh.name]


@pytest.mark.parametrize("value", ["soon", "-1", "nan"])
def test_a_settle_time_that_is_not_seconds_is_refused_naming_the_variable(
    value: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(SETTLE, value)
    with pytest.raises(
        SettingsError, match=f"^{SETTLE} must be a number of seconds \\(0 or more\\), not '{value}'$"
    ):
        settle_seconds()
