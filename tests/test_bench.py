"""`make bench` copies the source whole for its floor, splits each run's wall time by the part of
the pipeline its steps belong to, and judges the targets of the scale it measures."""

from pathlib import Path

import polars as pl
import pytest
from conftest import DemoLake

from bench.floor import copy_in
from bench.run import MIB, PARTS, step_parts, targets
from lakehouse.definitions import defs


def test_the_floor_copies_every_source_row_and_landing_line(
    tmp_path: Path, demo_lake: DemoLake, monkeypatch: pytest.MonkeyPatch
) -> None:
    lake = demo_lake(tmp_path)
    monkeypatch.setenv("LAKEHOUSE_SOURCE_URL", lake.source.url)
    monkeypatch.setenv("LAKEHOUSE_LANDING", str(lake.landing))
    copied = copy_in(tmp_path / "floor")
    tables = {
        table: lake.source_rows(table).height for table in ("customers", "products", "orders", "order_items")
    }
    lines = sum(len(path.read_bytes().splitlines()) for path in lake.landing.rglob("*.jsonl"))
    for table, rows in {**tables, "events": lines}.items():
        assert pl.read_delta(str(tmp_path / "floor" / table)).height == rows, table
    assert copied == sum(tables.values()) + lines


def test_every_step_of_the_pipeline_is_in_one_part_of_the_benchs_split() -> None:
    parts = step_parts()
    steps = {assets.node_def.name for assets in [*defs.assets, *defs.asset_checks]}
    assert steps <= set(parts) and set(parts.values()) <= set(PARTS)
    assert parts["dbt_models"] == "dbt"


def test_scale_10_is_judged_by_how_cost_follows_the_change_and_other_scales_by_scale_1() -> None:
    summary = {
        "ratios": {
            "full / floor": 4.5,
            "incremental (1 batch) / full": 0.08,
            "incremental (5 batches) / full": 0.25,
            "no-op / full": 0.02,
            "silver/orders step / dbt model (full)": 0.9,
        },
        "noop": {"seconds": 9.0},
        "definitions_load_seconds": 1.5,
        "metrics_scrape_seconds": 0.3,
    }
    at_10 = {name: (measured, met) for name, measured, met in targets(summary, 1024 * MIB, 10)}
    assert at_10["no-op <= 3 % of full"] == ("2.0%", True)
    assert at_10["incremental (5 batches) <= 20 % of full"] == ("25.0%", False)
    assert at_10["full build <= 5 x floor"] == ("4.5 x", True)
    at_3 = {name: met for name, _, met in targets(summary, 1024 * MIB, 3)}
    assert at_3 == {
        "full build <= 4 x floor": False,
        "incremental (1 batch) <= 15 % of full": True,
        "no-op <= 8 s": False,
        "peak RSS <= 2 GiB (largest of all runs)": True,
        "silver/orders step <= dbt alternative's model (full)": True,
        "definitions load <= 2 s": True,
        "metrics scrape <= 1 s": True,
    }
