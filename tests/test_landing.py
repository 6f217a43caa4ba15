"""Landing files: every line ingested exactly once, into bronze or into quarantine."""

import json
from pathlib import Path

import dagster as dg
import polars as pl
import pytest
from conftest import THROUGH_SILVER, Lake

from lakehouse.bronze import landing
from lakehouse.bronze.landing import matching_files
from lakehouse.bronze.landing_lines import parse_file
from lakehouse.demo.events import EVENT_TYPES
from lakehouse.sources.contract import Contract
from lakehouse.storage import delta, files

EVENT_ASSETS = dg.AssetSelection.assets(["bronze", "events"], ["quarantine", "events_malformed"])


def landing_lines(lake: Lake) -> int:
    return sum(lake.manifest.event_files.values())


def test_every_line_is_in_bronze_or_quarantine_as_the_manifest_says(lake: Lake) -> None:
    lake.advance(batches=2)
    result = lake.materialize(THROUGH_SILVER)
    manifest = lake.manifest
    bronze = lake.table("bronze", "events")
    quarantine = lake.table("quarantine", "events_malformed")

    assert bronze.height + quarantine.height == landing_lines(lake)
    assert quarantine.height == manifest.defects["malformed_line"]
    assert (
        quarantine.get_column("_error").str.starts_with("not a JSON object").sum()
        + quarantine.get_column("_error").str.starts_with("not JSON").sum()
        == quarantine.height
    )
    assert (
        quarantine.select(pl.col("_source_file", "_line_number", "_raw_line"))
        .null_count()
        .sum_horizontal()[0]
        == 0
    )
    for row in quarantine.iter_rows(named=True):
        lines = (lake.landing / "events" / row["_source_file"]).read_text().splitlines()
        assert lines[row["_line_number"] - 1] == row["_raw_line"]

    assert bronze.get_column("event_id").null_count() == manifest.defects["missing_event_id"]
    unknown = bronze.filter(~pl.col("event_type").is_in(EVENT_TYPES)).height
    assert unknown == manifest.defects["unknown_event_type"]
    unparseable = bronze.get_column("timestamp").str.to_datetime(strict=False, time_zone="UTC").null_count()
    assert unparseable == manifest.defects["bad_timestamp"]
    repeated = bronze.drop_nulls("event_id").height - bronze.get_column("event_id").drop_nulls().n_unique()
    assert repeated == manifest.defects["duplicate_event"]

    # init writes one file per hour, named by the hour's end: a late event is 2-8 hours older.
    # Duplicates repeat earlier events (from older files too), so each event counts once.
    first_seen = bronze.sort("_source_file", "_line_number").unique(
        "event_id", keep="first", maintain_order=True
    )
    hourly = first_seen.filter(pl.col("_source_file").str.contains(r"_00000_")).with_columns(
        window_start=pl.col("_source_file")
        .str.extract(r"events_(\d{8}T\d{6})")
        .str.to_datetime("%Y%m%dT%H%M%S", time_zone="UTC")
        - pl.duration(hours=1),
        moment=pl.col("timestamp").str.to_datetime(strict=False, time_zone="UTC"),
    )
    late = hourly.filter(pl.col("moment") < pl.col("window_start") - pl.duration(hours=2)).height
    assert late == manifest.log[0]["defects"]["late_event"] > 0

    properties = json.loads(bronze.filter(pl.col("event_type") == "click").get_column("properties")[0])
    assert set(properties) == {"element", "product_id"}
    metadata = result.asset_materializations_for_node("bronze_events")
    counts = {m.asset_key.path[0]: m.metadata for m in metadata}
    assert counts["bronze"]["files_ingested"].value == len(manifest.event_files)
    assert counts["bronze"]["rows_quarantined"].value == quarantine.height
    assert counts["quarantine"]["dagster/row_count"].value == quarantine.height


def test_each_file_is_ingested_once(loaded_lake: Lake) -> None:
    versions = (delta.open_table(loaded_lake.uri("bronze", "events")).version(),
                delta.open_table(loaded_lake.uri("quarantine", "events_malformed")).version())  # fmt: skip

    again = loaded_lake.materialize(THROUGH_SILVER)

    bronze_metadata = again.asset_materializations_for_node("bronze_events")[0].metadata
    assert bronze_metadata["files_ingested"].value == 0
    bronze = delta.open_table(loaded_lake.uri("bronze", "events"))
    quarantine = delta.open_table(loaded_lake.uri("quarantine", "events_malformed"))
    assert (bronze.version(), quarantine.version()) == versions

    loaded_lake.advance()
    loaded_lake.materialize(THROUGH_SILVER)
    assert loaded_lake.table("bronze", "events").height + loaded_lake.table(
        "quarantine", "events_malformed"
    ).height == (landing_lines(loaded_lake))


def test_crash_between_quarantine_and_bronze_commits_duplicates_nothing(lake: Lake, monkeypatch) -> None:
    original = delta.write

    def crash_on_bronze(uri: str, *args, **kwargs):
        if "/bronze/" in uri:
            raise OSError("killed before the bronze commit")
        return original(uri, *args, **kwargs)

    monkeypatch.setattr(delta, "write", crash_on_bronze)
    assert not lake.materialize(EVENT_ASSETS, raise_on_error=False).success
    assert lake.table("quarantine", "events_malformed").height == lake.manifest.defects["malformed_line"]
    monkeypatch.undo()

    assert lake.materialize(EVENT_ASSETS).success
    quarantine = lake.table("quarantine", "events_malformed")
    assert quarantine.height == lake.manifest.defects["malformed_line"]
    assert lake.table("bronze", "events").height + quarantine.height == landing_lines(lake)


def test_files_past_one_commits_bytes_are_committed_apart_and_a_crash_between_duplicates_nothing(
    lake: Lake, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(landing, "COMMIT_BYTES", 1)  # a commit for each file
    original, commits = delta.write, []

    def crash_on_second_bronze_commit(uri: str, *args, **kwargs):
        if "/bronze/" in uri:
            commits.append(uri)
            if len(commits) == 2:
                raise OSError("killed before the second bronze commit")
        return original(uri, *args, **kwargs)

    monkeypatch.setattr(delta, "write", crash_on_second_bronze_commit)
    # The step's own retry takes the files the first attempt left: no manual step.
    result = lake.materialize(EVENT_ASSETS)

    files = len(lake.manifest.event_files)
    assert any(event.event_type == dg.DagsterEventType.STEP_UP_FOR_RETRY for event in result.all_events)
    assert len(commits) == files + 1  # one a file, and the one the crash stopped
    metadata = result.asset_materializations_for_node("bronze_events")[0].metadata
    assert metadata["files_ingested"].value == files - 1  # the first was committed before the crash
    bronze, quarantine = lake.table("bronze", "events"), lake.table("quarantine", "events_malformed")
    assert bronze.height + quarantine.height == landing_lines(lake)
    assert bronze.select("_source_file", "_line_number").is_duplicated().sum() == 0
    assert quarantine.height == lake.manifest.defects["malformed_line"]
    assert delta.open_table(lake.uri("bronze", "events")).version() == files - 1


def test_lines_that_are_not_json_objects_are_quarantined_with_reasons(lake: Lake) -> None:
    odd = lake.landing / "events" / "events_20991231T000000_99999_00.jsonl"
    odd.write_bytes(b'{"event_id": "a", "event_type": "click"}\n\n[1, 2]\n{"broken": \n\xff\xfe\n"text"\n')

    lake.materialize(THROUGH_SILVER)

    rows = (
        lake.table("quarantine", "events_malformed")
        .filter(pl.col("_source_file") == odd.name)
        .sort("_line_number")
    )
    assert rows.get_column("_line_number").to_list() == [2, 3, 4, 5, 6]
    reasons = rows.get_column("_error").to_list()
    assert reasons[0] == "empty line"
    assert reasons[1] == "not a JSON object: a JSON list"
    assert reasons[2].startswith("not JSON: Expecting value at column")
    assert reasons[3].startswith("not UTF-8")
    assert reasons[4] == "not a JSON object: a JSON str"
    bronze = lake.table("bronze", "events").filter(pl.col("_source_file") == odd.name)
    assert bronze.select("event_id", "_line_number").rows() == [("a", 1)]


def test_each_field_is_kept_as_the_json_text_it_holds(tmp_path: Path) -> None:
    """Fields become text as `json.loads` then compact `json.dumps` give it, whichever parser
    reads the file: NaN, exponents, escapes and integers beyond 64 bits (which orjson, the fast
    parser, would turn into floats) come out the same."""
    plain = tmp_path / "plain.jsonl"
    plain.write_bytes(
        b'{"n": NaN, "f": 1e16, "g": 0.10, "t": true, "z": null, "i": -42, '
        b'"nested": {"\xc3\xa9": "caf\xc3\xa9", "l": [1, 2.50]}}\n'
    )
    huge = tmp_path / "huge.jsonl"
    huge.write_bytes(b'{"big": 123456789012345678901234567890, "low": -9223372036854775809}\n')
    fields = ("n", "f", "g", "t", "z", "i", "nested", "big", "low")
    contract = Contract.model_validate(
        {
            "name": "fields",
            "description": "Every kind of JSON value.",
            "source": {"kind": "landing", "glob": "*.jsonl"},
            "primary_key": ["i"],
            "columns": {name: {"type": "string"} for name in fields},
        }
    )

    [row], rejected = parse_file(plain.name, plain.read_bytes(), contract)
    assert rejected == []
    assert row == {
        "n": "NaN", "f": "1e+16", "g": "0.1", "t": "true", "z": None, "i": "-42",
        "nested": '{"\\u00e9":"caf\\u00e9","l":[1,2.5]}', "_source_file": "plain.jsonl", "_line_number": 1,
    }  # fmt: skip
    [row], _ = parse_file(huge.name, huge.read_bytes(), contract)
    assert (row["big"], row["low"]) == ("123456789012345678901234567890", "-9223372036854775809")


def test_a_glob_takes_the_files_it_names_and_no_others(tmp_path: Path) -> None:
    for name in ("events/a.jsonl", "events/b.jsonl", "events/.c.jsonl.partial", "events/old/d.jsonl",
                 "other/e.jsonl", "f.jsonl", "deep/x/y/g.jsonl"):  # fmt: skip
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("{}\n")

    def names(glob: str) -> list[str]:
        return [seen.name for seen in matching_files(str(tmp_path), glob)]

    assert names("events/*.jsonl") == ["a.jsonl", "b.jsonl"]
    assert names("*.jsonl") == ["f.jsonl"]
    assert names("deep/**/*.jsonl") == ["g.jsonl"]
    assert names("missing/*.jsonl") == []
    assert names("events/a.jsonl") == ["a.jsonl"]


def test_an_s3_location_gets_the_region_delta_rs_uses(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    # No lookup of the bucket's region at AWS (which another S3 server never answers): the
    # tests on the S3 server reach it through the endpoint.
    filesystem, path = files.filesystem("s3://bucket/landing/")
    assert (filesystem.type_name, filesystem.region, path) == ("s3", "eu-west-1", "bucket/landing")
