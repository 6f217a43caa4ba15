"""The demo source: deterministic, realistic in shape, and defective exactly as documented."""

from pathlib import Path

import polars as pl
from conftest import CLOCK, Lake, postgres_source, run_command, sqlite_source

from lakehouse.demo.simulation import DEFAULT_DEFECT_RATES

TABLES = ("customers", "products", "orders", "order_items")
STATUS_ORDER = {"pending": 0, "confirmed": 1, "shipped": 2, "delivered": 3, "cancelled": 3}


def contents(lake: Lake) -> dict[str, pl.DataFrame]:
    frames = {table: lake.source_rows(table).sort(pl.first()) for table in TABLES}
    for path in sorted((lake.landing / "events").glob("*.jsonl")):
        frames[path.name] = pl.DataFrame({"line": path.read_text().splitlines()})
    return frames


def assert_same(left: dict[str, pl.DataFrame], right: dict[str, pl.DataFrame]) -> None:
    assert left.keys() == right.keys()
    for name, frame in left.items():
        assert frame.equals(right[name]), f"{name} differs"


def test_same_seed_gives_the_same_source(lake: Lake, tmp_path: Path) -> None:
    twin = Lake(tmp_path / "twin", sqlite_source(tmp_path / "twin"))
    twin.init()
    lake.advance(batches=3)
    twin.advance(batches=3)
    assert_same(contents(lake), contents(twin))


def test_postgresql_gets_the_same_data_as_sqlite(lake: Lake, tmp_path: Path) -> None:
    other = Lake(tmp_path / "pg", postgres_source())
    other.init()
    lake.advance(batches=2)
    other.advance(batches=2)
    assert_same(contents(lake), contents(other))


def test_database_defects_match_the_manifest(lake: Lake) -> None:
    lake.advance(batches=2)
    defects = lake.manifest.defects
    orders = lake.source_rows("orders")
    products = lake.source_rows("products").get_column("product_id")
    items = lake.source_rows("order_items")

    assert orders.filter(pl.col("total_amount") < 0).height == defects["negative_amount"] > 0
    assert orders.filter(~pl.col("status").is_in(list(STATUS_ORDER))).height == defects["unknown_status"] > 0
    assert (
        items.filter(~pl.col("product_id").is_in(products.implode())).height
        == defects["orphan_order_item"]
        > 0
    )


def test_defect_rates_are_configurable(tmp_path: Path) -> None:
    clean = Lake(tmp_path, sqlite_source(tmp_path))
    clean.init(defect_rates=dict.fromkeys(DEFAULT_DEFECT_RATES, 0.0))
    assert sum(clean.manifest.defects.values()) == 0
    orders = clean.source_rows("orders")
    assert orders.filter(pl.col("total_amount") < 0).is_empty()


def test_the_shop_looks_like_a_real_shop(lake: Lake) -> None:
    orders = lake.source_rows("orders")
    items = lake.source_rows("order_items")
    products = lake.source_rows("products")

    per_customer = orders.group_by("customer_id").len().sort("len", descending=True).get_column("len")
    top_tenth = per_customer.head(max(1, per_customer.len() // 10)).sum() / per_customer.sum()
    assert top_tenth > 0.3, "popular customers should place a large share of orders"
    assert products.get_column("category").n_unique() >= 6
    assert 2.0 < items.height / orders.height < 4.0
    assert items.get_column("quantity").min() >= 1

    hours = orders.get_column("created_at").dt.hour().value_counts().sort("created_at")
    busiest, quietest = hours.get_column("count").max(), hours.get_column("count").min()
    assert busiest > 4 * quietest, "evenings should be far busier than nights"
    weekday = orders.get_column("created_at").dt.weekday()
    assert (weekday >= 6).mean() > 2 / 7, "weekends should sell more than an average day"

    clean = orders.filter(pl.col("total_amount") >= 0)
    line_totals = items.group_by("order_id").agg(total=(pl.col("quantity") * pl.col("unit_price")).sum())
    joined = clean.join(line_totals, on="order_id")
    assert (joined.get_column("total_amount") - joined.get_column("total").round(2)).abs().max() < 0.01


def test_advancing_moves_orders_forward_and_changes_customers(lake: Lake) -> None:
    before = lake.source_rows("orders")
    customers_before = lake.source_rows("customers")
    lake.advance()
    after = lake.source_rows("orders")
    batch = lake.manifest.log[-1]

    assert after.height == before.height + batch["rows"]["orders"]["inserted"]
    moved = before.join(after, on="order_id", suffix="_now").filter(pl.col("status") != pl.col("status_now"))
    assert moved.height == batch["rows"]["orders"]["updated"] > 0
    assert (moved.get_column("updated_at_now") > moved.get_column("updated_at")).all()
    ranks = moved.select(
        pl.col("status").replace_strict(STATUS_ORDER), pl.col("status_now").replace_strict(STATUS_ORDER)
    )
    assert (ranks.get_column("status_now") > ranks.get_column("status")).all(), "no status goes backwards"

    changed = customers_before.join(lake.source_rows("customers"), on="customer_id", suffix="_now").filter(
        (pl.col("email") != pl.col("email_now")) | (pl.col("street_address") != pl.col("street_address_now"))
    )
    assert changed.height == batch["rows"]["customers"]["updated"]
    assert (changed.get_column("updated_at_now") > lake.clock.replace(hour=lake.clock.hour - 1)).all()


def test_timestamps_follow_the_demo_clock(lake: Lake) -> None:
    orders = lake.source_rows("orders")
    assert orders.get_column("updated_at").max() <= CLOCK
    assert orders.get_column("created_at").min() >= CLOCK.replace(month=8)


def test_cli_builds_and_advances_the_source(tmp_path: Path) -> None:
    built = run_command(
        ["lakehouse", "demo", "init", "--scale", "0.01", "--now", "2026-11-01T12:00:00Z"], tmp_path
    )
    assert built.returncode == 0, built.stderr
    assert "demo batch 0" in built.stdout and "orders {'inserted': 10000}" in built.stdout
    again = run_command(["lakehouse", "demo", "init"], tmp_path)
    assert again.returncode == 0 and "demo source exists" in again.stdout
    moved = run_command(
        ["lakehouse", "demo", "advance", "--batches", "2", "--now", "2026-11-01T14:00:00Z"], tmp_path
    )
    assert moved.returncode == 0, moved.stderr
    assert "demo batch 2 at 2026-11-01T14:00:00+00:00" in moved.stdout
    wrong = run_command(["lakehouse", "demo", "init", "--force", "--defect", "typo=0.1"], tmp_path)
    assert wrong.returncode == 2 and "use NAME=RATE with NAME one of" in wrong.stderr
