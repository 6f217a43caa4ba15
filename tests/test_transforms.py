"""The gold tables' business logic, their incremental build and silver's SCD2 history, on a few
hand-made rows: the fast tier's cover for what the whole-graph tests (tests/test_gold.py,
tests/test_silver.py) check on the demo shop."""

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import dagster as dg
import polars as pl
import pytest
import yaml
from library import MEMBERS

from asset_checks.revenue import revenue_checks
from lakehouse.gold.backfill import Backfill
from lakehouse.gold.build import backfill, build_gold, silver_reader
from lakehouse.gold.tables import GOLD_TABLES
from lakehouse.gold.transforms import (
    UNKNOWN_CATEGORY,
    daily_revenue,
    day_bounds,
    event_windows_5m,
    fct_order_items,
    fct_orders,
    funnel_daily,
)
from lakehouse.resources import LakehouseStorage
from lakehouse.silver.history import (
    IS_CURRENT,
    VALID_FROM,
    VALID_TO,
    close_deleted,
    record_changes,
)
from lakehouse.sources.contract import Contract
from lakehouse.storage import delta
from lakehouse.storage.ledger import LOADED_AT

DAY = datetime(2026, 11, 2, tzinfo=UTC)


def at(hours: float) -> datetime:
    return DAY + timedelta(hours=hours)


def frame(rows: list[dict], **schema: pl.DataType) -> pl.DataFrame:
    return pl.DataFrame(rows, schema_overrides=schema)


MONEY = pl.Decimal(12, 2)
TIME = pl.Datetime("us", "UTC")
# Customer 1 moves to Oslo at 10:00; customer 2 never changes.
HISTORY = frame(
    [
        {"customer_id": 1, "city": "Bergen", "valid_from": at(-48), "valid_to": at(10), "is_current": False},
        {"customer_id": 1, "city": "Oslo", "valid_from": at(10), "valid_to": None, "is_current": True},
        {"customer_id": 2, "city": "Tromsø", "valid_from": at(-24), "valid_to": None, "is_current": True},
    ],
    valid_from=TIME,
    valid_to=TIME,
).with_columns(
    created_at=pl.col("valid_from").min().over("customer_id"),
    **{name: pl.lit(name) for name in ("first_name", "last_name", "email", "phone", "street_address")},
    country=pl.lit("NO"),
)
PRODUCTS = frame(
    [{"product_id": 10, "category": "books"}, {"product_id": 11, "category": "games"}],
).with_columns(
    sku=pl.format("SKU-{}", "product_id"),
    name=pl.col("category"),
    price=pl.lit("9.99").cast(MONEY),
    updated_at=pl.lit(at(-48), dtype=TIME),
)
# Order 100 before the move, 101 after it and cancelled, 102 on the next day; order 103 is not
# in silver (quarantined or not arrived), its item is kept; product 12 is unknown.
ORDERS = frame(
    [
        {
            "order_id": 100,
            "customer_id": 1,
            "status": "delivered",
            "total_amount": "30.00",
            "created_at": at(9),
        },
        {
            "order_id": 101,
            "customer_id": 1,
            "status": "cancelled",
            "total_amount": "5.00",
            "created_at": at(11),
        },
        {
            "order_id": 102,
            "customer_id": 2,
            "status": "pending",
            "total_amount": "7.00",
            "created_at": at(25),
        },
    ],
    created_at=TIME,
).with_columns(
    pl.col("total_amount").cast(MONEY),
    currency=pl.lit("EUR"),
    updated_at=pl.col("created_at"),
    created_at_month=pl.col("created_at").dt.strftime("%Y-%m"),
)
ITEMS = (
    frame(
        [
            {
                "order_item_id": 1,
                "order_id": 100,
                "product_id": 10,
                "quantity": 2,
                "unit_price": "10.00",
                "h": 9,
            },
            {
                "order_item_id": 2,
                "order_id": 100,
                "product_id": 12,
                "quantity": 1,
                "unit_price": "10.00",
                "h": 9,
            },
            {
                "order_item_id": 3,
                "order_id": 101,
                "product_id": 11,
                "quantity": 1,
                "unit_price": "5.00",
                "h": 11,
            },
            {
                "order_item_id": 4,
                "order_id": 102,
                "product_id": 10,
                "quantity": 1,
                "unit_price": "7.00",
                "h": 25,
            },
            {
                "order_item_id": 5,
                "order_id": 103,
                "product_id": 10,
                "quantity": 4,
                "unit_price": "1.00",
                "h": 12,
            },
        ],
    )
    .with_columns(
        pl.col("unit_price").cast(MONEY),
        created_at=pl.lit(DAY, dtype=TIME) + pl.duration(hours=pl.col("h")),
    )
    .with_columns(created_at_month=pl.col("created_at").dt.strftime("%Y-%m"))
    .drop("h")
)
# User 1 views, clicks and buys; user 2 only views; an anonymous click; one event arrived late.
EVENTS = frame(
    [
        {"event_type": "page_view", "user_id": 1, "minute": 1, "arrived": 2},
        {"event_type": "click", "user_id": 1, "minute": 3, "arrived": 4},
        {"event_type": "purchase", "user_id": 1, "minute": 6, "arrived": 30},
        {"event_type": "page_view", "user_id": 2, "minute": 2, "arrived": 3},
        {"event_type": "click", "user_id": None, "minute": 4, "arrived": 5},
    ],
).with_columns(
    timestamp=pl.lit(at(8), dtype=TIME) + pl.duration(minutes=pl.col("minute")),
    _extracted_at=pl.lit(at(8), dtype=TIME) + pl.duration(minutes=pl.col("arrived")),
)
SILVER = {
    "customers_history": HISTORY,
    "products": PRODUCTS,
    "orders": ORDERS,
    "order_items": ITEMS,
    "events": EVENTS,
}


def read(name: str) -> pl.LazyFrame:
    return SILVER[name].lazy()


def test_order_facts_take_the_customer_version_of_their_time_and_count_their_items() -> None:
    facts = fct_orders(read, None)

    assert facts.get_column("order_id").to_list() == [100, 101, 102]
    assert facts.get_column("customer_key").to_list() == ["1:1", "1:2", "2:1"]
    assert facts.get_column("is_cancelled").to_list() == [False, True, False]
    assert facts.get_column("item_count").to_list() == [2, 1, 1]
    assert facts.get_column("quantity").to_list() == [3, 1, 1]
    assert facts.get_column("order_month").unique().to_list() == ["2026-11"]


def test_a_line_without_its_order_or_product_is_kept_and_named() -> None:
    lines = fct_order_items(read, None)

    orphan = lines.filter(pl.col("order_item_id") == 5).row(0, named=True)
    assert (orphan["has_order"], orphan["status"], orphan["customer_key"]) == (False, None, None)
    unknown = lines.filter(pl.col("order_item_id") == 2).row(0, named=True)
    assert unknown["category"] == UNKNOWN_CATEGORY
    assert lines.filter(pl.col("order_item_id") == 1).get_column("line_amount").item() == Decimal("20.00")


def test_daily_revenue_splits_cancelled_money_and_leaves_out_lines_without_an_order() -> None:
    revenue = daily_revenue(read, None)

    by_key = {(row["order_date"].isoformat(), row["category"]): row for row in revenue.iter_rows(named=True)}
    assert set(by_key) == {
        ("2026-11-02", "books"),
        ("2026-11-02", UNKNOWN_CATEGORY),
        ("2026-11-02", "games"),
        ("2026-11-03", "books"),
    }
    books = by_key[("2026-11-02", "books")]  # order 100's line; order 103's is left out
    assert (books["orders"], books["items"], books["gross_revenue"]) == (1, 2, Decimal("20.00"))
    games = by_key[("2026-11-02", "games")]
    assert (games["gross_revenue"], games["cancelled_revenue"], games["paid_orders"]) == (
        0,
        Decimal("5.00"),
        0,
    )
    assert games["average_order_value"] is None
    assert by_key[("2026-11-03", "books")]["average_order_value"] == 7.0


def test_days_select_the_rows_created_on_them() -> None:
    assert day_bounds(["2026-11-03", "2026-11-02"]) == (at(0), at(48))
    assert day_bounds(["2026-12-31"]) == (
        datetime(2026, 12, 31, tzinfo=UTC),
        datetime(2027, 1, 1, tzinfo=UTC),
    )
    assert fct_orders(read, ["2026-11-03"]).get_column("order_id").to_list() == [102]
    assert fct_orders(read, ["2026-11-02", "2026-11-03"]).height == 3
    assert fct_orders(read, ["2026-10-31"]).is_empty()
    assert daily_revenue(read, ["2026-11-03"]).get_column("category").to_list() == ["books"]


def test_event_windows_count_users_and_late_arrivals_by_event_time() -> None:
    windows = event_windows_5m(read, None)

    counts = {
        (row["window_start"].minute, row["event_type"]): (
            row["event_count"],
            row["unique_users"],
            row["late_events"],
        )
        for row in windows.iter_rows(named=True)
    }
    # The purchase at 08:06 arrived at 08:30, after its window (08:05-08:10) closed plus 10 minutes.
    assert counts == {
        (0, "click"): (2, 1, 0),
        (0, "page_view"): (2, 2, 0),
        (5, "purchase"): (1, 1, 1),
    }
    assert event_windows_5m(read, ["2026-11-03"]).is_empty()


def test_the_funnel_counts_known_users_who_went_on_to_each_step() -> None:
    (day,) = funnel_daily(read, None).iter_rows(named=True)

    assert (day["viewers"], day["clickers"], day["purchasers"]) == (2, 1, 1)
    assert (day["view_to_click"], day["click_to_purchase"], day["view_to_purchase"]) == (0.5, 1.0, 0.5)


def members_contract() -> Contract:
    return Contract.model_validate(yaml.safe_load(MEMBERS))


def versions(*rows: tuple[int, str, float]) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "member_id": [row[0] for row in rows],
            "name": [row[1] for row in rows],
            "updated_at": [at(row[2]) for row in rows],
            LOADED_AT: [at(100)] * len(rows),
        },
        schema_overrides={"updated_at": TIME, LOADED_AT: TIME},
    )


def history_of(uri: str) -> list[tuple]:
    rows = pl.read_delta(uri).sort("member_id", VALID_FROM)
    return [
        (row["member_id"], row["name"], row[VALID_FROM], row[VALID_TO], row[IS_CURRENT])
        for row in rows.iter_rows(named=True)
    ]


def test_history_adds_a_version_per_change_and_ignores_replays_and_late_older_versions(
    tmp_path: Path,
) -> None:
    uri, contract = str(tmp_path / "members_history"), members_contract()
    record_changes(uri, versions((1, "Ada", 0), (2, "Bo", 0), (3, "Bo", 0)), contract)
    # Member 1 renamed twice in one load; member 2 touched without a change; member 3, named
    # as member 2, renamed and named back.
    record_changes(
        uri, versions((1, "Ada L", 2), (1, "Ada K", 3), (2, "Bo", 2), (3, "Cy", 2), (3, "Bo", 3)), contract
    )

    expected = [
        (1, "Ada", at(0), at(2), False),
        (1, "Ada L", at(2), at(3), False),
        (1, "Ada K", at(3), None, True),
        (2, "Bo", at(0), None, True),
        (3, "Bo", at(0), at(2), False),
        (3, "Cy", at(2), at(3), False),
        (3, "Bo", at(3), None, True),
    ]
    assert history_of(uri) == expected
    assert record_changes(uri, versions((1, "Ada K", 3)), contract) is None  # a replay
    assert record_changes(uri, versions((1, "Ada old", 1)), contract) is None  # older than current
    assert history_of(uri) == expected


def test_a_delete_closes_the_current_version_once(tmp_path: Path) -> None:
    uri, contract = str(tmp_path / "members_history"), members_contract()
    record_changes(uri, versions((1, "Ada", 0), (2, "Bo", 0)), contract)
    gone = pl.DataFrame({"member_id": [2], "_deleted_at": [at(5)]}, schema_overrides={"_deleted_at": TIME})

    assert close_deleted(uri, gone, contract, at(6)) == 1
    assert close_deleted(uri, gone, contract, at(7)) == 0
    closed = pl.read_delta(uri).filter(pl.col("member_id") == 2).row(0, named=True)
    assert (closed[VALID_TO], closed[IS_CURRENT], closed["_deleted"]) == (at(5), False, True)


def gold_table(name: str):
    return next(table for table in GOLD_TABLES if table.name == name)


def lakehouse_of(root: Path) -> LakehouseStorage:
    """The rows above as silver Delta tables, loaded at 12:00."""
    storage = LakehouseStorage(root=str(root))
    for name, rows in SILVER.items():
        delta.write(
            storage.table_uri("silver", name), rows.with_columns(**{LOADED_AT: pl.lit(at(12), dtype=TIME)})
        )
    return storage


def assert_gold_is_a_rebuild(storage: LakehouseStorage) -> None:
    for table in GOLD_TABLES:
        stored = pl.read_delta(storage.table_uri("gold", table.name))
        rebuilt = table.build(silver_reader(storage), None).select(stored.columns)
        assert stored.sort(stored.columns).equals(rebuilt.sort(rebuilt.columns)), table.name


def test_gold_rebuilds_only_the_days_new_silver_rows_touch(tmp_path: Path) -> None:
    storage = lakehouse_of(tmp_path)
    assert {
        table.name: build_gold(table, storage, "first").rebuilt for table in GOLD_TABLES
    } == dict.fromkeys((table.name for table in GOLD_TABLES), None)
    assert_gold_is_a_rebuild(storage)

    late = ORDERS.filter(pl.col("order_id") == 102).with_columns(
        order_id=pl.lit(104, dtype=pl.Int64),
        updated_at=pl.lit(at(26), dtype=TIME),
        **{LOADED_AT: pl.lit(at(30), dtype=TIME)},
    )
    delta.write(storage.table_uri("silver", "orders"), late)
    rebuilt = {table.name: build_gold(table, storage, "second").rebuilt for table in GOLD_TABLES}

    assert rebuilt == {
        "dim_customers": [],
        "dim_products": [],
        "fct_orders": ["2026-11-03"],
        "fct_order_items": ["2026-11-03"],
        "daily_revenue": ["2026-11-03"],
        "event_windows_5m": [],
        "funnel_daily": [],
    }
    assert_gold_is_a_rebuild(storage)
    assert build_gold(gold_table("daily_revenue"), storage, "third").rebuilt == []


def test_a_backfill_rebuilds_the_days_it_names_changed_or_not(tmp_path: Path) -> None:
    storage = lakehouse_of(tmp_path)
    revenue, orders = gold_table("daily_revenue"), gold_table("fct_orders")
    for table in (revenue, orders):
        build_gold(table, storage, "first")

    assert backfill(revenue, storage, ["2026-11-02"], "backfill").rebuilt == ["2026-11-02"]
    assert backfill(orders, storage, ["2026-11-02", "2026-11-03"], "backfill").rebuilt == [
        "2026-11-02",
        "2026-11-03",
    ]
    assert build_gold(revenue, storage, "next").rebuilt == []  # the positions did not move
    assert Backfill(first_day="2026-11-30", last_day="2026-12-02").days() == [
        "2026-11-30",
        "2026-12-01",
        "2026-12-02",
    ]
    assert Backfill(first_day="2026-11-30").days() == ["2026-11-30"]
    assert Backfill().days() is None
    for wrong, message in (
        (Backfill(last_day="2026-11-30"), "needs a first_day"),
        (Backfill(first_day="2026-12-02", last_day="2026-11-30"), "is not a range of 1 to"),
        (Backfill(first_day="30.11.2026"), "is not a day"),
    ):
        with pytest.raises(dg.Failure, match=message):
            wrong.days()


def test_the_gold_reconciliations_pass_on_a_build_and_name_a_period_gold_got_wrong(tmp_path: Path) -> None:
    storage = lakehouse_of(tmp_path)
    for table in GOLD_TABLES:
        build_gold(table, storage, "first")
    context = dg.build_asset_check_context(resources={"lakehouse": storage})
    checks = {check.name: check for check in revenue_checks(GOLD_TABLES)}
    assert {name: check.evaluate(context).passed for name, check in checks.items()} == {
        "orders_match_silver": True,
        "revenue_matches_silver": True,
    }

    uri = storage.table_uri("gold", "daily_revenue")
    stored = pl.read_delta(uri)
    wrong = stored.head(1).with_columns((pl.col("gross_revenue") + 1).cast(stored.schema["gross_revenue"]))
    delta.write(uri, wrong)
    result = checks["revenue_matches_silver"].evaluate(context)

    assert not result.passed
    assert result.metadata["periods_wrong"].value == 1
    assert "2026-11-02" in str(result.metadata["sample"].value)
