"""Hostile lines in landing files: each goes to quarantine with its reason, the rest of the
batch is ingested, bronze's columns stay the contract's, and repeated keys are accounted for.

The dataset is a greenhouse's sensor readings (JSON lines, append-only), not the shop's events.
"""

import json
import os
import time
from pathlib import Path

import dagster as dg
import polars as pl
import yaml
from conftest import TEST_SALT
from library import evaluations, value

from asset_checks import all_checks
from asset_checks.bronze_reconciliation import CLOCK_SKEW_NS
from lakehouse.bronze.assets import bronze_assets
from lakehouse.bronze.landing_lines import BYTE_ORDER_MARK, parse_file
from lakehouse.resources import Clock, LakehouseStorage, LandingZone, PiiHasher, SourceDatabase
from lakehouse.silver.assets import silver_assets
from lakehouse.sources.contract import Contract
from lakehouse.sources.contract_files import load_contracts
from lakehouse.storage import delta

READINGS = {
    "name": "readings",
    "description": "One temperature reading of a greenhouse sensor.",
    "source": {"kind": "landing", "glob": "readings/*.jsonl"},
    "primary_key": ["reading_id"],
    "event_time": "measured_at",
    "history": "append",
    "partitioning": {"column": "measured_at", "granularity": "day"},
    # The batches here are a few lines, of which the tests quarantine a third on purpose.
    "sla": {"max_quarantine_rate": 0.5},
    "columns": {
        "reading_id": {"type": "string", "nullable": False},
        "sensor": {"type": "string", "nullable": False},
        "measured_at": {"type": "timestamp", "nullable": False},
        "celsius": {"type": "float", "range": {"min": -50, "max": 80}},
    },
}
BRONZE_COLUMNS = {
    *READINGS["columns"],
    "_extra_keys",
    "_source_file",
    "_line_number",
    "_extracted_at",
    "_source",
    "_run_id",
    "_ingest_date",
}


def reading(reading_id: str, celsius: float = 21.5, day: int = 3, **extra: object) -> dict[str, object]:
    return {
        "reading_id": reading_id,
        "sensor": "bench-1",
        "measured_at": f"2026-11-{day:02d}T08:00:00Z",
        "celsius": celsius,
        **extra,
    }


def readings_contract(folder: Path, **source: str) -> Contract:
    """The readings contract as a user writes it, in a contracts folder of its own."""
    folder.mkdir(parents=True, exist_ok=True)
    raw = {**READINGS, "source": {**READINGS["source"], **source}}
    (folder / "readings.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    [contract] = load_contracts(folder)
    return contract


def land(folder: Path, name: str, lines: list[object], prefix: bytes = b"") -> Path:
    """A landing file of `lines` (objects as JSON, text as it is)."""
    path = folder / "landing" / "readings" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "".join(f"{line if isinstance(line, str) else json.dumps(line)}\n" for line in lines)
    path.write_bytes(prefix + text.encode())
    return path


def materialize(
    contract: Contract,
    folder: Path,
    instance: dg.DagsterInstance | None = None,
    selection: dg.AssetSelection | None = None,
) -> dg.ExecuteInProcessResult:
    return dg.materialize(
        [*bronze_assets([contract]), *silver_assets([contract]), *all_checks([contract])],
        selection=selection,
        resources={
            "source": SourceDatabase(url=f"sqlite:///{folder / 'unused.db'}"),
            "lakehouse": LakehouseStorage(root=str(folder / "lakehouse")),
            "landing": LandingZone(path=str(folder / "landing")),
            "pii": PiiHasher(salt=TEST_SALT),
            "clock": Clock(now="2026-11-03T09:00:00+00:00"),
        },
        instance=instance or dg.DagsterInstance.ephemeral(),
        raise_on_error=False,
    )


def table(folder: Path, layer: str, name: str) -> pl.DataFrame:
    return pl.read_delta(str(folder / "lakehouse" / layer / name))


def reconciled(result: dg.ExecuteInProcessResult) -> dict[str, bool]:
    wanted = ("lines_in_bronze_or_quarantine", "bronze_rows_accounted")
    return {e.check_name: e.passed for e in result.get_asset_check_evaluations() if e.check_name in wanted}


def test_lines_whose_keys_bronze_cannot_store_are_quarantined_and_the_rest_ingested(tmp_path: Path) -> None:
    contract = readings_contract(tmp_path / "contracts")
    many = {f"probe_{number}": number for number in range(2000)}
    first = land(
        tmp_path,
        "readings_1.jsonl",
        [
            reading("r1"),
            reading("r2", _extracted_at="2020-01-01"),
            reading("r3", firmware="1.2"),
            reading("r4", _INGEST_DATE="2020-01-01"),
            reading("r5", Reading_ID="R5"),
            reading("r6", **many),
            reading("r7"),
        ],
    )
    second = land(tmp_path, "readings_2.jsonl", [reading("r8"), reading("r9", _source_file="elsewhere")])

    result = materialize(contract, tmp_path)

    assert reconciled(result) == {"lines_in_bronze_or_quarantine": True, "bronze_rows_accounted": True}
    bronze = table(tmp_path, "bronze", "readings")
    assert set(bronze.columns) == BRONZE_COLUMNS
    assert sorted(bronze.get_column("reading_id")) == ["r1", "r3", "r6", "r7", "r8"]
    extras = dict(bronze.select("reading_id", "_extra_keys").iter_rows())
    assert json.loads(extras["r3"]) == {"firmware": "1.2"}
    assert json.loads(extras["r6"]) == many
    assert extras["r1"] is None
    quarantine = table(tmp_path, "quarantine", "readings_malformed").sort("_source_file", "_line_number")
    assert quarantine.select("_source_file", "_line_number", "_error").rows() == [
        (first.name, 2, "key '_extracted_at' is a column the lakehouse writes itself"),
        (first.name, 4, "key '_INGEST_DATE' is a column the lakehouse writes itself"),
        (first.name, 5, "keys 'reading_id' and 'Reading_ID' differ only in case"),
        (second.name, 2, "key '_source_file' is a column the lakehouse writes itself"),
    ]
    for name, number, raw in quarantine.select("_source_file", "_line_number", "_raw_line").iter_rows():
        assert (tmp_path / "landing" / "readings" / name).read_text().splitlines()[number - 1] == raw
    silver = table(tmp_path, "silver", "readings")
    assert sorted(silver.get_column("reading_id")) == ["r1", "r3", "r6", "r7", "r8"]

    # Another line with thousands of new keys: still no column per key.
    land(tmp_path, "readings_3.jsonl", [reading("r10", **{f"other_{n}": n for n in range(2000)})])
    assert reconciled(materialize(contract, tmp_path)) == {
        "lines_in_bronze_or_quarantine": True,
        "bronze_rows_accounted": True,
    }
    assert set(table(tmp_path, "bronze", "readings").columns) == BRONZE_COLUMNS


def test_a_contract_can_quarantine_lines_with_keys_it_does_not_name(tmp_path: Path) -> None:
    contract = readings_contract(tmp_path / "contracts", extra_keys="quarantine")
    many = {f"probe_{number}": number for number in range(2000)}
    path = land(
        tmp_path, "readings_1.jsonl", [reading("r1"), reading("r2", firmware="1.2"), reading("r3", **many)]
    )

    rows, rejected = parse_file(path.name, path.read_bytes(), contract)

    assert [(row["reading_id"], "_extra_keys" in row) for row in rows] == [("r1", False)]
    assert [(line["_line_number"], line["_error"]) for line in rejected] == [
        (2, "keys not in the contract (extra_keys: quarantine): 'firmware'"),
        (3, "keys not in the contract (extra_keys: quarantine): "
            "'probe_0', 'probe_1', 'probe_2', 'probe_3', 'probe_4' and 1995 more"),
    ]  # fmt: skip


def test_a_byte_order_mark_does_not_cost_the_first_line(tmp_path: Path) -> None:
    contract = readings_contract(tmp_path / "contracts")
    path = land(tmp_path, "readings_1.jsonl", [reading("r1"), reading("r2")], prefix=BYTE_ORDER_MARK)

    rows, rejected = parse_file(path.name, path.read_bytes(), contract)

    assert rejected == []
    assert [(row["reading_id"], row["_line_number"]) for row in rows] == [("r1", 1), ("r2", 2)]


def test_a_repeated_key_with_other_content_is_quarantined_and_counted(tmp_path: Path) -> None:
    contract = readings_contract(tmp_path / "contracts")
    first = land(tmp_path, "readings_1.jsonl", [reading("r1"), reading("r2")])
    materialize(contract, tmp_path)
    # r1 again, corrected and on another day (another silver partition); r2 again unchanged;
    # r3 twice in one file with other content, r4 twice alike.
    second = land(
        tmp_path,
        "readings_2.jsonl",
        [
            reading("r1", celsius=22.0, day=4),
            reading("r2"),
            reading("r3"),
            reading("r3", celsius=30.0),
            reading("r4"),
            reading("r4"),
        ],
    )

    result = materialize(contract, tmp_path)

    assert reconciled(result) == {"lines_in_bronze_or_quarantine": True, "bronze_rows_accounted": True}
    silver = table(tmp_path, "silver", "readings").sort("reading_id")
    assert silver.select("reading_id", "celsius", "_source_file", "_line_number").rows() == [
        ("r1", 21.5, first.name, 1),
        ("r2", 21.5, first.name, 2),
        ("r3", 21.5, second.name, 3),
        ("r4", 21.5, second.name, 5),
    ]
    quarantine = table(tmp_path, "quarantine", "readings").sort("_line_number")
    assert quarantine.select("_source_file", "_line_number", "celsius", "_error").rows() == [
        (second.name, 1, "22.0", f"reading_id repeats with different content (first in {first.name}:1)"),
        (second.name, 4, "30.0", f"reading_id repeats with different content (first in {second.name}:3)"),
    ]
    [metadata] = [
        m.metadata
        for m in result.asset_materializations_for_node("silver_readings")
        if m.asset_key.path == ["silver", "readings"]
    ]
    expected = {
        "rows_read": 6,
        "rows_inserted": 2,
        "duplicates_collapsed": 2,
        "rows_quarantined": 2,
        "conflicting_duplicates": 2,
    }
    assert {name: metadata[name].value for name in expected} == expected

    # Running again reads nothing new and quarantines nothing twice.
    again = materialize(contract, tmp_path)
    assert reconciled(again)["bronze_rows_accounted"]
    assert table(tmp_path, "quarantine", "readings").height == 2


def test_after_a_pass_only_files_changed_or_gaining_lines_are_counted_again(tmp_path: Path) -> None:
    contract = readings_contract(tmp_path / "contracts")
    instance = dg.DagsterInstance.ephemeral()
    bronze = dg.AssetKey(["bronze", "readings"])

    checks = dg.AssetSelection.checks_for_assets(bronze)

    def lines(selection: dg.AssetSelection | None = None, backdated: bool = True) -> dg.AssetCheckEvaluation:
        # Files modified well before a pass, so that its record vouches for them.
        for path in (tmp_path / "landing" / "readings").iterdir():
            if backdated:
                os.utime(path, ns=(time.time_ns() - 2 * CLOCK_SKEW_NS,) * 2)
        result = materialize(contract, tmp_path, instance, selection)
        return evaluations(result, bronze)["lines_in_bronze_or_quarantine"]

    first = land(tmp_path, "readings_1.jsonl", [reading("r1"), reading("r2")])
    second = land(tmp_path, "readings_2.jsonl", [reading("r3")])
    whole = lines()
    assert whole.passed and value(whole, "files_checked") == 2

    # A malformed line too: its quarantine only gains rows (a MERGE that only inserts).
    land(tmp_path, "readings_3.jsonl", [reading("r4"), "{not json"])
    batch = lines()
    assert batch.passed
    assert (value(batch, "files_checked"), value(batch, "files_unchanged_since_last_pass")) == (1, 2)

    # Rewritten after ingestion, the same size: its new modification time has it read again.
    ingested = second.read_bytes()
    second.write_bytes(ingested.replace(b'"r3"', b'"r9"'))
    rewritten = lines(checks, backdated=False)
    assert not rewritten.passed and value(rewritten, "files_changed_after_ingestion") == 1
    second.write_bytes(ingested)
    assert lines(checks).passed

    # A line of an old file stored twice, by hand: bronze gained rows of that file, so it is
    # counted again.
    uri = str(tmp_path / "lakehouse" / "bronze" / "readings")
    delta.write(uri, pl.read_delta(uri).filter(pl.col("reading_id") == "r1"))
    twice = lines(dg.AssetSelection.checks_for_assets(bronze))
    assert not twice.passed and value(twice, "files_checked") == 1
    assert "1 of them more than once" in str(twice.description) and first.name in str(twice.description)
