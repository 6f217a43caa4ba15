"""Gold: facts, dimensions and aggregates that agree with silver, built incrementally."""

import json
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import polars as pl
import pytest
from conftest import (
    SCALE,
    TEST_SALT,
    Lake,
    assert_gold_equals_a_rebuild_in_one_piece,
    run_command,
    sqlite_source,
)

from lakehouse.demo import store
from lakehouse.gold import assets as gold_assets
from lakehouse.gold import build
from lakehouse.gold.build import silver_reader
from lakehouse.gold.tables import GOLD_TABLES
from lakehouse.storage import delta

EVENT_TABLES = {table.name: table for table in GOLD_TABLES if table.upstream == {"events": "timestamp"}}


def test_incremental_gold_equals_a_full_rebuild(lake: Lake, monkeypatch: pytest.MonkeyPatch) -> None:
    # Builds go a part of 5,000 input rows at a time: about ten days at the test scale, so
    # every month is built in parts, as at a large scale.
    monkeypatch.setattr(build, "PART_ROWS", 5_000)
    result = lake.materialize()
    # The first build of a partitioned table is one commit however many parts it takes.
    first = result.asset_materializations_for_node("gold__fct_order_items")[0].metadata
    assert first["periods_rewritten"].value == "all" and first["delta_version"].value == 0
    assert first["rows_written"].value == first["dagster/row_count"].value > 0
    assert_gold_equals_a_rebuild_in_one_piece(lake)
    # Then parts of 100 input rows: each day a run rebuilds is larger, so the order facts build
    # it in ranges of its orders.
    monkeypatch.setattr(build, "PART_ROWS", 100)
    for _ in range(3):
        lake.advance()
        result = lake.materialize()
    for name in ("fct_orders", *EVENT_TABLES):
        rewritten = result.asset_materializations_for_node(f"gold__{name}")[0].metadata["periods_rewritten"]
        assert rewritten.value not in ("all", "none"), f"gold/{name} should have rebuilt only touched periods"
    facts = next(table for table in GOLD_TABLES if table.name == "fct_order_items")
    today = lake.clock.date().isoformat()
    assert len(build._parts_of(facts, silver_reader(lake.storage), [today])) > 1, "today is split"
    assert_gold_equals_a_rebuild_in_one_piece(lake)


def test_gold_revenue_and_order_counts_equal_silver(loaded_lake: Lake) -> None:
    loaded_lake.advance(batches=2)
    loaded_lake.materialize()
    orders = loaded_lake.table("silver", "orders")
    items = loaded_lake.table("silver", "order_items")
    fct_orders = loaded_lake.table("gold", "fct_orders")

    assert fct_orders.height == orders.height
    assert fct_orders.get_column("total_amount").sum() == orders.get_column("total_amount").sum()
    paid = orders.filter(pl.col("status") != "cancelled").select("order_id", "status")
    expected_revenue = (
        items.join(paid, on="order_id").select((pl.col("unit_price") * pl.col("quantity")).sum()).item()
    )
    revenue = loaded_lake.table("gold", "daily_revenue")
    assert revenue.get_column("gross_revenue").sum() == expected_revenue
    cancelled = orders.filter(pl.col("status") == "cancelled").select("order_id")
    expected_cancelled = items.join(cancelled, on="order_id").select(
        (pl.col("unit_price") * pl.col("quantity")).sum()
    )
    assert revenue.get_column("cancelled_revenue").sum() == expected_cancelled.item()

    lines = loaded_lake.table("gold", "fct_order_items")
    assert lines.height == items.height, "order lines are never joined away"
    assert lines.filter(~pl.col("has_order")).height == items.join(orders, on="order_id", how="anti").height


def test_facts_join_the_customer_version_valid_at_order_time(loaded_lake: Lake) -> None:
    moved_at = loaded_lake.clock + timedelta(hours=1)
    store.update(loaded_lake.source, "customers", "customer_id", pl.DataFrame({
        "customer_id": [1], "city": ["Vienna"], "country": ["AT"], "updated_at": [moved_at],
    }))  # fmt: skip
    late_order = moved_at + timedelta(minutes=30)
    store.insert(loaded_lake.source, "orders", pl.DataFrame({
        "order_id": [10**9], "customer_id": [1], "status": ["pending"], "total_amount": [19.99],
        "currency": ["EUR"], "created_at": [late_order], "updated_at": [late_order],
    }))  # fmt: skip
    loaded_lake.clock = late_order
    loaded_lake.materialize()

    versions = loaded_lake.table("gold", "dim_customers").filter(pl.col("customer_id") == 1).sort("version")
    assert versions.get_column("city").to_list()[-1] == "Vienna"
    facts = loaded_lake.table("gold", "fct_orders").filter(pl.col("customer_id") == 1)
    before = facts.filter(pl.col("created_at") < moved_at).get_column("customer_key").unique().to_list()
    after = facts.filter(pl.col("order_id") == 10**9).get_column("customer_key").to_list()
    assert before == ["1:1"] and after == [f"1:{versions.height}"]


def test_a_late_event_lands_in_its_own_window_and_is_counted_late(loaded_lake: Lake) -> None:
    moment = loaded_lake.clock - timedelta(hours=3, minutes=2)
    event = {"event_id": "late-0001", "user_id": 7, "event_type": "purchase",
             "timestamp": moment.isoformat().replace("+00:00", "Z"), "properties": {}}  # fmt: skip
    (loaded_lake.landing / "events" / "events_20991231T000000_99999_00.jsonl").write_text(
        json.dumps(event) + "\n"
    )
    window = pl.datetime(moment.year, moment.month, moment.day, moment.hour, 55, time_zone="UTC")

    def purchases() -> dict:
        windows = loaded_lake.table("gold", "event_windows_5m")
        row = windows.filter((pl.col("window_start") == window) & (pl.col("event_type") == "purchase"))
        return row.row(0, named=True) if row.height else {"event_count": 0, "late_events": 0}

    before = purchases()
    loaded_lake.materialize()
    after = purchases()

    assert after["event_count"] == before["event_count"] + 1
    assert after["late_events"] == before["late_events"] + 1


def test_gold_reports_periods_and_column_lineage(lake: Lake) -> None:
    result = lake.materialize()
    metadata = result.asset_materializations_for_node("gold__fct_orders")[0].metadata
    assert metadata["periods_rewritten"].value == "all"
    assert metadata["dagster/row_count"].value == lake.table("gold", "fct_orders").height
    lineage = metadata["dagster/column_lineage"].value.deps_by_column
    assert lineage["total_amount"][0].asset_key.path == ["silver", "orders"]
    assert lineage["quantity"][0].column_name == "quantity"
    assert set(lineage) <= set(lake.table("gold", "fct_orders").columns)


# A wrong number a backfill must replace, per event table, as a bug fixed since would have left.
WRONG = {"funnel_daily": "viewers", "event_windows_5m": "event_count"}
# Two days, the second without events: the demo's last day is the clock's.
DAY_RANGE = ["2026-11-02", "2026-11-03"]
RANGE = {"first_day": DAY_RANGE[0], "last_day": DAY_RANGE[-1]}
DAY_RANGE_CONFIG = json.dumps({"ops": {f"gold__{name}": {"config": RANGE} for name in WRONG}})


@pytest.mark.parametrize(
    ("command", "tables", "backfilled"),
    [
        pytest.param(  # the README's "one day of events"
            "dagster asset materialize -m lakehouse.definitions --select gold/funnel_daily "
            """--config-json '{"ops": {"gold__funnel_daily": {"config": {"first_day": "2026-11-01"}}}}'""",
            ["funnel_daily"],
            ["2026-11-01"],
            id="one-day",
        ),
        pytest.param(
            "dagster asset materialize -m lakehouse.definitions "
            f"--select gold/funnel_daily,gold/event_windows_5m --config-json '{DAY_RANGE_CONFIG}'",
            list(WRONG),
            DAY_RANGE,
            id="day-range",
        ),
    ],
)
def test_a_backfill_rebuilds_its_days_and_no_other(
    loaded_lake: Lake, command: str, tables: list[str], backfilled: list[str]
) -> None:
    days = sorted(str(day) for day in loaded_lake.table("gold", "funnel_daily").get_column("event_date"))
    for name in tables:
        table = loaded_lake.table("gold", name).with_columns(pl.lit(-1).alias(WRONG[name]))
        delta.write(loaded_lake.uri("gold", name), table, mode="overwrite")

    backfill = run_command(command, loaded_lake.folder, LAKEHOUSE_PII_SALT=TEST_SALT)

    assert backfill.returncode == 0, backfill.stderr[-2000:]
    for name in tables:
        rebuilt = loaded_lake.table("gold", name)
        days_in = pl.col("event_date").cast(pl.String).is_in(backfilled)
        outside = rebuilt.filter(~days_in)
        assert outside.height > 0 and outside.get_column(WRONG[name]).to_list() == [-1] * outside.height
        inside = rebuilt.filter(days_in)
        expected = (
            EVENT_TABLES[name].build(silver_reader(loaded_lake.storage), backfilled).select(inside.columns)
        )
        assert inside.height > 0 and inside.sort(inside.columns).equals(expected.sort(inside.columns))
    assert sorted({str(day) for day in loaded_lake.table("gold", "funnel_daily")["event_date"]}) == days


def test_what_changed_outside_a_backfill_is_rebuilt_by_the_next_run(loaded_lake: Lake) -> None:
    oldest = str(loaded_lake.table("gold", "funnel_daily").get_column("event_date").min())
    loaded_lake.advance()  # new events, of today
    config = {"first_day": oldest}
    backfilled = loaded_lake.materialize(
        run_config={"ops": {f"gold__{name}": {"config": config} for name in EVENT_TABLES}}
    )
    for name in EVENT_TABLES:
        metadata = backfilled.asset_materializations_for_node(f"gold__{name}")[0].metadata
        assert metadata["periods_rewritten"].value == oldest
    new_day = str(loaded_lake.clock.date())
    stored = loaded_lake.table("gold", "funnel_daily").filter(pl.col("event_date").cast(pl.String) == new_day)
    expected = EVENT_TABLES["funnel_daily"].build(silver_reader(loaded_lake.storage), [new_day])
    assert not stored.equals(expected.select(stored.columns)), "the new events are not in gold yet"

    following = loaded_lake.materialize()

    for name in EVENT_TABLES:
        metadata = following.asset_materializations_for_node(f"gold__{name}")[0].metadata
        assert new_day in metadata["periods_rewritten"].value
    assert_gold_equals_a_rebuild_in_one_piece(loaded_lake)


def test_a_backfill_range_that_names_no_days_fails_and_says_so(lake: Lake) -> None:
    config = {
        "ops": {"gold__funnel_daily": {"config": {"first_day": "2026-11-02", "last_day": "2026-11-01"}}}
    }
    done = run_command(
        ["dagster", "asset", "materialize", "-m", "lakehouse.definitions",
         "--select", "gold/funnel_daily", "--config-json", json.dumps(config)],
        lake.folder, LAKEHOUSE_PII_SALT=TEST_SALT,
    )  # fmt: skip
    assert done.returncode != 0
    assert "backfill: first_day 2026-11-02 to last_day 2026-11-01 is not a range" in done.stdout + done.stderr


def test_the_plain_ci_command_builds_every_event_day_run_after_run(tmp_path: Path) -> None:
    """`dagster asset materialize -m lakehouse.definitions --select '*'` and nothing else, on a
    fresh demo lake and again after a batch of changes."""
    lake = Lake(tmp_path, sqlite_source(tmp_path))
    env = {"LAKEHOUSE_WAREHOUSE": str(lake.warehouse), "LAKEHOUSE_PII_SALT": TEST_SALT}
    init = run_command(["lakehouse", "demo", "init", "--scale", str(SCALE)], tmp_path, **env)
    assert init.returncode == 0, init.stderr[-2000:]
    for _ in range(2):
        done = run_command("dagster asset materialize -m lakehouse.definitions --select '*'", tmp_path, **env)
        assert done.returncode == 0, done.stderr[-3000:]
        assert "Traceback" not in done.stdout + done.stderr
        event_days = lake.table("silver", "events").get_column("timestamp").dt.date().unique().sort()
        for name in EVENT_TABLES:
            built = lake.table("gold", name).get_column("event_date").unique().sort()
            assert built.to_list() == event_days.to_list(), f"gold/{name} misses event days"
        assert_gold_equals_a_rebuild_in_one_piece(lake)
        advanced = run_command(["lakehouse", "demo", "advance"], tmp_path, **env)
        assert advanced.returncode == 0, advanced.stderr[-2000:]


def test_event_tables_written_before_they_were_kept_by_day_are_advanced_in_place(
    lake: Lake, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A lake whose event tables are one unpartitioned table each (as they were written before
    they were kept by day) is advanced as it is: no rebuild, the rows a build from silver gives,
    and a backfill of a day rewrites that day."""
    unpartitioned = tuple(
        replace(table, partition_by=None) if table.name in EVENT_TABLES else table for table in GOLD_TABLES
    )
    with monkeypatch.context() as before:
        before.setattr(gold_assets, "GOLD_TABLES", unpartitioned)
        lake.materialize()
    lake.advance()
    lake.materialize()
    oldest = str(lake.table("gold", "funnel_daily").get_column("event_date").min())
    day = {"config": {"first_day": oldest}}
    lake.materialize(run_config={"ops": {f"gold__{name}": day for name in EVENT_TABLES}})

    for name in EVENT_TABLES:
        table = delta.load_table(lake.uri("gold", name))
        assert table.metadata().partition_columns == [] and table.version() >= 2, name
    assert_gold_equals_a_rebuild_in_one_piece(lake)
