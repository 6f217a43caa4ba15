"""The gold tables' business logic, as polars over the silver tables.

Each build function takes a reader of silver tables and the days to build ('YYYY-MM-DD'; None
builds everything) and returns the rows of those days only.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, date, datetime, time, timedelta

import polars as pl

Reader = Callable[[str], pl.LazyFrame]
Days = list[str] | None

MONTH, DAY = "%Y-%m", "%Y-%m-%d"
LATE_AFTER_MINUTES = 10
UNKNOWN_CATEGORY = "unknown"


def _within(moment: pl.Expr, days: Days) -> pl.Expr:
    return pl.lit(True) if days is None else moment.dt.strftime(DAY).is_in(days)


def day_bounds(days: list[str]) -> tuple[datetime, datetime]:
    """From the start of the first of `days` to the end of the last, in UTC."""
    start, end = date.fromisoformat(min(days)), date.fromisoformat(max(days)) + timedelta(days=1)
    return datetime.combine(start, time(), UTC), datetime.combine(end, time(), UTC)


def created_in(days: Days) -> pl.Expr:
    """Orders or order items created on `days` (of `created_at`, in UTC).

    Filtered first on the month silver partitions them by, so the scan reads only those
    months' files, then by the days' time range, which skips the row groups of other days
    (silver writes rows in the order they were created). An order's items carry its creation
    time, so the same days select an order and its items."""
    if days is None:
        return pl.lit(True)
    if not days:
        return pl.lit(False)
    created = pl.col("created_at")
    return (
        pl.col("created_at_month").is_in(sorted({day[: len("YYYY-MM")] for day in days}))
        & created.is_between(*day_bounds(days), closed="left")
        & created.dt.date().is_in([date.fromisoformat(day) for day in days])
    )


def customer_versions(read: Reader, customers: pl.LazyFrame | None = None) -> pl.LazyFrame:
    """Every version of every customer (or of the `customers`, a frame of customer ids) with
    its surrogate key and effective range.

    The key is `<customer_id>:<version number>`, stable because history only grows at the
    end. The first version is effective from the customer's creation.
    """
    history = read("customers_history")
    if customers is not None:
        history = history.join(customers, on="customer_id", how="semi")
    return (
        history.sort("customer_id", "valid_from")
        .with_columns(version=pl.int_range(1, pl.len() + 1).over("customer_id"))
        .with_columns(
            customer_key=pl.format("{}:{}", "customer_id", "version"),
            effective_from=pl.when(pl.col("version") == 1)
            .then(pl.col("created_at"))
            .otherwise(pl.col("valid_from")),
        )
    )


def dim_customers(read: Reader, days: Days = None) -> pl.DataFrame:
    return (
        customer_versions(read)
        .select(
            "customer_key",
            "customer_id",
            "version",
            "first_name",
            "last_name",
            "email",
            "phone",
            "street_address",
            "city",
            "country",
            "created_at",
            pl.col("effective_from").alias("valid_from"),
            "valid_to",
            "is_current",
        )
        .collect()
    )


def dim_products(read: Reader, days: Days = None) -> pl.DataFrame:
    return read("products").select("product_id", "sku", "name", "category", "price", "updated_at").collect()


def _orders(read: Reader, days: Days) -> pl.LazyFrame:
    return read("orders").filter(created_in(days))


def _with_customer_key(orders: pl.LazyFrame, read: Reader) -> pl.LazyFrame:
    """The customer version valid when the order was placed (SCD2 point-in-time join).

    Only the versions of these orders' customers are numbered: a part of a few days names a
    fraction of them, and numbering every customer's versions would outweigh the part's own
    work."""
    versions = (
        customer_versions(read, orders.select("customer_id").unique())
        .select("customer_id", "customer_key", "effective_from")
        .sort("effective_from")
    )
    return orders.sort("created_at").join_asof(
        versions,
        left_on="created_at",
        right_on="effective_from",
        by="customer_id",
        strategy="backward",
        check_sortedness=False,  # both sides are sorted by time, hence within every customer too
    )


def fct_orders(read: Reader, days: Days) -> pl.DataFrame:
    items = (
        read("order_items")
        .filter(created_in(days))
        .group_by("order_id")
        .agg(item_count=pl.len().cast(pl.Int64), quantity=pl.col("quantity").sum())
    )
    orders = _orders(read, days).join(items, on="order_id", how="left")
    return (
        _with_customer_key(orders, read)
        .select(
            "order_id",
            "customer_key",
            "customer_id",
            "status",
            (pl.col("status") == "cancelled").alias("is_cancelled"),
            "total_amount",
            "currency",
            pl.col("item_count").fill_null(0),
            pl.col("quantity").fill_null(0),
            pl.col("created_at").dt.date().alias("order_date"),
            pl.col("created_at").dt.strftime(MONTH).alias("order_month"),
            "created_at",
            "updated_at",
        )
        .sort("order_id")
        .collect()
    )


def order_lines(read: Reader, days: Days) -> pl.LazyFrame:
    """Order items with their order, customer version and product category.

    Items whose order silver does not hold (not arrived yet, or quarantined) have no status
    or customer: they are kept with `has_order` false and count towards no revenue. Items of
    unknown products get the category 'unknown'.
    """
    orders = _with_customer_key(
        _orders(read, days).select("order_id", "customer_id", "status", "created_at"), read
    ).select("order_id", "customer_id", "customer_key", "status")
    products = read("products").select("product_id", "category")
    return (
        read("order_items")
        .filter(created_in(days))
        .join(orders, on="order_id", how="left")
        .join(products, on="product_id", how="left")
        .select(
            "order_item_id",
            "order_id",
            "product_id",
            "customer_id",
            "customer_key",
            "status",
            pl.col("category").fill_null(UNKNOWN_CATEGORY),
            "quantity",
            "unit_price",
            (pl.col("unit_price") * pl.col("quantity")).alias("line_amount"),
            pl.col("status").is_not_null().alias("has_order"),
            pl.col("created_at").dt.date().alias("order_date"),
            pl.col("created_at").dt.strftime(MONTH).alias("order_month"),
            "created_at",
        )
    )


def fct_order_items(read: Reader, days: Days) -> pl.DataFrame:
    return order_lines(read, days).sort("order_item_id").collect()


def daily_revenue(read: Reader, days: Days) -> pl.DataFrame:
    """Day x product category: orders, items, gross and cancelled revenue, average order value."""
    cancelled = pl.col("status") == "cancelled"
    money = pl.Decimal(14, 2)
    return (
        order_lines(read, days)
        .filter(pl.col("has_order"))
        .group_by("order_date", "category")
        .agg(
            orders=pl.col("order_id").n_unique().cast(pl.Int64),
            items=pl.col("quantity").sum(),
            gross_revenue=pl.col("line_amount").filter(~cancelled).sum().cast(money),
            cancelled_revenue=pl.col("line_amount").filter(cancelled).sum().cast(money),
            paid_orders=pl.col("order_id").filter(~cancelled).n_unique().cast(pl.Int64),
        )
        .with_columns(
            average_order_value=pl.when(pl.col("paid_orders") > 0)
            .then((pl.col("gross_revenue").cast(pl.Float64) / pl.col("paid_orders")).round(2))
            .cast(pl.Float64)
        )
        .sort("order_date", "category")
        .collect()
    )


def _events(read: Reader, days: Days) -> pl.LazyFrame:
    return read("events").filter(_within(pl.col("timestamp"), days))


def event_windows_5m(read: Reader, days: Days) -> pl.DataFrame:
    """5-minute tumbling windows x event type, by event time.

    Windows are rebuilt for every day new events touch, so a late event lands in its own
    window whatever its lateness. `late_events` counts the events that arrived more than
    10 minutes after their window closed: those a streaming job would have had to drop.
    """
    window = pl.col("timestamp").dt.truncate("5m")
    closed = window + pl.duration(minutes=5 + LATE_AFTER_MINUTES)
    return (
        _events(read, days)
        .group_by(window.alias("window_start"), "event_type")
        .agg(
            event_count=pl.len().cast(pl.Int64),
            unique_users=pl.col("user_id").drop_nulls().n_unique().cast(pl.Int64),
            late_events=(pl.col("_extracted_at") > closed).sum().cast(pl.Int64),
        )
        .with_columns(pl.col("window_start").dt.date().alias("event_date"))
        .sort("window_start", "event_type")
        .collect()
    )


def funnel_daily(read: Reader, days: Days) -> pl.DataFrame:
    """Per day, known users who viewed, then also clicked, then also purchased."""
    per_user = (
        _events(read, days)
        .filter(pl.col("user_id").is_not_null())
        .group_by(pl.col("timestamp").dt.date().alias("event_date"), "user_id")
        .agg(**{kind: (pl.col("event_type") == kind).any() for kind in ("page_view", "click", "purchase")})
    )
    return (
        per_user.group_by("event_date")
        .agg(
            viewers=pl.col("page_view").sum().cast(pl.Int64),
            clickers=(pl.col("page_view") & pl.col("click")).sum().cast(pl.Int64),
            purchasers=(pl.col("page_view") & pl.col("click") & pl.col("purchase")).sum().cast(pl.Int64),
        )
        .with_columns(
            view_to_click=(pl.col("clickers") / pl.col("viewers")).round(4),
            click_to_purchase=(pl.col("purchasers") / pl.col("clickers")).round(4),
            view_to_purchase=(pl.col("purchasers") / pl.col("viewers")).round(4),
        )
        .sort("event_date")
        .collect()
    )
