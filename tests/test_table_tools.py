"""The quality report, freshness, the summary's table rows, maintenance and restore, on small
Delta tables: the fast tier's cover for what tests/test_checks.py, tests/test_maintenance.py,
tests/test_time_travel.py and tests/test_commands.py check on a whole demo lake."""

from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest
import yaml

from asset_checks.freshness import age_status
from asset_checks.quality_report import quality_report, to_json, to_markdown
from lakehouse.cli.summary import table_rows
from lakehouse.orchestration.maintenance import maintain_table
from lakehouse.resources import LakehouseStorage
from lakehouse.sources.contract import Contract
from lakehouse.storage import delta, ledger
from lakehouse.storage.time_travel import RestoreError, history, restore

NOW = datetime(2026, 11, 2, 12, 0, tzinfo=UTC)
TIME = pl.Datetime("us", "UTC")
READINGS = """\
name: readings
description: Meter readings.
source: {kind: database, table: readings}
primary_key: [reading_id]
watermark: {column: taken_at}
freshness: {column: taken_at, warn_after: 1h, error_after: 1d}
sla: {completeness: 0.75, duplicate_rate: 0.0}
columns:
  reading_id: {type: int, nullable: false}
  value: {type: float, nullable: false}
  note: {type: string, nullable: true}
  taken_at: {type: timestamp, nullable: false}
"""


def readings_contract() -> Contract:
    return Contract.model_validate(yaml.safe_load(READINGS))


def readings(ids: list[int], values: list[float | None], minutes_ago: int) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "reading_id": ids,
            "value": values,
            "note": [None] * len(ids),
            "taken_at": [NOW - timedelta(minutes=minutes_ago)] * len(ids),
        },
        schema_overrides={"taken_at": TIME, "value": pl.Float64, "note": pl.String},
    )


def test_the_quality_report_measures_each_sla_and_fails_what_breaks_one(tmp_path: Path) -> None:
    storage, contract = LakehouseStorage(root=str(tmp_path)), readings_contract()
    uri = storage.table_uri("silver", "readings")
    delta.write(uri, readings([1, 2, 3, 4], [1.0, 2.0, 3.0, None], minutes_ago=30))

    (clean,) = quality_report(storage, [contract], NOW)["tables"]
    assert clean["status"] == "pass" and clean["row_count"]["value"] == 4
    assert (clean["freshness"]["hours"], clean["freshness"]["status"]) == (0.5, "pass")
    nulls = {column["column"]: column for column in clean["columns"]}
    assert (nulls["value"]["null_rate"], nulls["value"]["status"]) == (0.25, "pass")  # 75 % complete
    assert nulls["note"]["limit_null_rate"] is None  # nullable: no limit

    delta.write(uri, readings([4], [None], minutes_ago=90))  # a duplicate key, a null, stale
    report = quality_report(storage, [contract], NOW, "silver/readings")
    (broken,) = report["tables"]
    assert report["status"] == broken["status"] == "fail"
    assert (broken["duplicates"]["count"], broken["duplicates"]["status"]) == (1, "fail")
    assert {column["column"]: column["status"] for column in broken["columns"]}["value"] == "fail"
    assert broken["freshness"]["status"] == "pass"  # the newest row is still 30 minutes old
    assert '"status": "fail"' in to_json(report) and "silver/readings" in to_markdown(report)

    missing = quality_report(LakehouseStorage(root=str(tmp_path / "empty")), [contract], NOW)
    assert missing["tables"][0]["note"].startswith("the table does not exist")
    with pytest.raises(ValueError, match="no contract for table 'meters'; the tables are: readings"):
        quality_report(storage, [contract], NOW, "meters")


def test_freshness_passes_then_warns_then_fails_with_age() -> None:
    freshness = readings_contract().freshness
    assert freshness is not None
    ages = [timedelta(minutes=59), timedelta(hours=1), timedelta(hours=2), timedelta(days=2), None]
    assert [age_status(age, freshness) for age in ages] == ["pass", "pass", "warn", "fail", "fail"]


def test_the_summary_lists_each_table_with_its_rows_version_and_last_commit(tmp_path: Path) -> None:
    storage = LakehouseStorage(root=str(tmp_path))
    for layer in ("silver", "bronze"):
        delta.write(storage.table_uri(layer, "readings"), readings([1, 2], [1.0, 2.0], minutes_ago=5))
    delta.write(storage.table_uri("bronze", "readings"), readings([3], [3.0], minutes_ago=1))

    listed = [(table, rows, version, added) for table, rows, version, added, _ in table_rows(storage)]

    assert listed == [("bronze/readings", 3, 1, 1), ("silver/readings", 2, 0, 2)]


def test_maintenance_compacts_checkpoints_and_vacuums_keeping_the_rows(tmp_path: Path) -> None:
    uri = str(tmp_path / "readings")
    for reading in range(4):
        delta.write(uri, readings([reading], [float(reading)], minutes_ago=reading))
    table = delta.load_table(uri)

    done = maintain_table(table, ["reading_id"], 1 << 27, 0, [])

    assert (done.before.files, done.after.files) == (4, 1)
    assert done.files_vacuumed == 4  # the small files compaction replaced, with no retention
    assert (tmp_path / "readings" / "_delta_log" / "_last_checkpoint").exists()
    assert pl.read_delta(uri).sort("reading_id").get_column("reading_id").to_list() == [0, 1, 2, 3]


def test_a_restore_rolls_back_the_rows_and_the_ledger_markers_and_refuses_what_it_cannot(
    tmp_path: Path,
) -> None:
    storage = LakehouseStorage(root=str(tmp_path))
    uri = storage.table_uri("bronze", "readings")
    key = ledger.silver_position("meters")  # any marker the table's commits move
    delta.write(uri, readings([1], [1.0], minutes_ago=2), transactions={key: 5})
    delta.write(uri, readings([2], [2.0], minutes_ago=1), transactions={key: 9})

    restored = restore(storage, "bronze", "readings", 0)

    assert (restored.restored_to, restored.markers) == (0, {key: 5})
    assert pl.read_delta(uri).get_column("reading_id").to_list() == [1]
    assert ledger.read(delta.load_table(uri), key) == 5
    newest, *_ = history(uri)
    assert (newest["operation"], newest["restored_to"]) == ("RESTORE", "0")
    with pytest.raises(RestoreError, match="restore to a version from 0 to 1"):
        restore(storage, "bronze", "readings", 2)
    with pytest.raises(RestoreError, match="does not exist"):
        restore(storage, "bronze", "meters", 0)
