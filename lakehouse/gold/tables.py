"""The gold tables: which exist, the silver tables and periods each reads, its key and lineage.

Their business logic, the build functions named here, is in lakehouse/gold/transforms.py.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import polars as pl

from lakehouse.gold.transforms import (
    Days,
    Reader,
    daily_revenue,
    dim_customers,
    dim_products,
    event_windows_5m,
    fct_order_items,
    fct_orders,
    funnel_daily,
)


@dataclass(frozen=True)
class GoldTable:
    """A gold table: what it reads and how it is rebuilt when its inputs change.

    `upstream` maps each silver table read to the timestamp column that places a changed row
    in a day; `period` is the output column of that day, by which the table is rebuilt (None:
    rebuilt whole).
    `lineage` names, for the columns taken over from silver, the silver table and column.
    `primary_key` identifies a row; the gold checks hold it unique and not null.
    `partition_by` is the column whose values name the table's folders; a table partitioned by
    its day holds each day in files of its own, so concurrent runs rebuild distinct days
    without a commit conflict (`by_day`). A table partitioned more coarsely (the order facts by
    month) is still rebuilt by day: only the files holding the touched days are rewritten.
    `split_by` is a column every upstream table holds that decides alone which rows one output
    row is built from (an order's facts come from that order and its items): a day too large
    to build at once is built in ranges of it.
    """

    name: str
    description: str
    build: Callable[[Reader, Days], pl.DataFrame]
    primary_key: tuple[str, ...]
    upstream: dict[str, str]
    period: str | None = None
    partition_by: str | None = None
    split_by: str | None = None
    lineage: dict[str, tuple[str, str]] = field(default_factory=dict)

    @property
    def by_day(self) -> bool:
        """Whether each day of the table is rebuilt in files of its own."""
        return self.period is not None and self.partition_by == self.period


def _same_columns(table: str, *columns: str) -> dict[str, tuple[str, str]]:
    return {column: (table, column) for column in columns}


# Order facts change when an order or an item does; a new customer version or product price
# does not rewrite the past (the fact keeps the version valid at order time). An order changes
# within days of its creation, so a run rebuilds the last few days, not their months; months
# name the folders, which keeps the files few.
ORDER_SOURCES = {"orders": "created_at", "order_items": "created_at"}
ORDER_FACT = {
    "upstream": ORDER_SOURCES, "period": "order_date", "partition_by": "order_month", "split_by": "order_id",
}  # fmt: skip
GOLD_TABLES = (
    GoldTable(
        name="dim_customers",
        description="One row per version of a customer (SCD2), with its surrogate key.",
        build=dim_customers,
        primary_key=("customer_key",),
        upstream={"customers_history": "valid_from"},
        lineage=_same_columns(
            "customers_history",
            "customer_id",
            "first_name",
            "last_name",
            "email",
            "phone",
            "street_address",
            "city",
            "country",
            "created_at",
            "valid_from",
            "valid_to",
            "is_current",
        ),
    ),
    GoldTable(
        name="dim_products",
        description="One row per product, with its category and current price.",
        build=dim_products,
        primary_key=("product_id",),
        upstream={"products": "updated_at"},
        lineage=_same_columns("products", "product_id", "sku", "name", "category", "price", "updated_at"),
    ),
    GoldTable(
        name="fct_orders",
        description="One row per order: status, amount, items, and the customer version of its day.",
        build=fct_orders,
        primary_key=("order_id",),
        **ORDER_FACT,
        lineage={
            **_same_columns(
                "orders",
                "order_id",
                "customer_id",
                "status",
                "total_amount",
                "currency",
                "created_at",
                "updated_at",
            ),
            "order_date": ("orders", "created_at"),
            "item_count": ("order_items", "order_item_id"),
            "quantity": ("order_items", "quantity"),
            "customer_key": ("customers_history", "valid_from"),
        },
    ),
    GoldTable(
        name="fct_order_items",
        description="One row per order line: quantity, price, amount, product category, order status.",
        build=fct_order_items,
        primary_key=("order_item_id",),
        **ORDER_FACT,
        lineage={
            **_same_columns(
                "order_items",
                "order_item_id",
                "order_id",
                "product_id",
                "quantity",
                "unit_price",
                "created_at",
            ),
            **_same_columns("orders", "customer_id", "status"),
            "category": ("products", "category"),
            "line_amount": ("order_items", "unit_price"),
        },
    ),
    GoldTable(
        name="daily_revenue",
        description="Per day and product category: orders, items, gross and cancelled revenue, AOV.",
        build=daily_revenue,
        primary_key=("order_date", "category"),
        upstream=ORDER_SOURCES,
        period="order_date",
    ),
    GoldTable(
        name="event_windows_5m",
        description="Per 5-minute window and event type: events and distinct users (by event time).",
        build=event_windows_5m,
        primary_key=("window_start", "event_type"),
        upstream={"events": "timestamp"},
        period="event_date",
        partition_by="event_date",
    ),
    GoldTable(
        name="funnel_daily",
        description="Per day: users who viewed, clicked and purchased, and the conversion rates.",
        build=funnel_daily,
        primary_key=("event_date",),
        upstream={"events": "timestamp"},
        period="event_date",
        partition_by="event_date",
    ),
)
