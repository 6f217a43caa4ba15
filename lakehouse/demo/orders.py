"""The shop's orders and their items as polars frames, and each order's life cycle.

Everything is a function of the seed, so the same seed gives the same shop in SQLite and
PostgreSQL. Popularity and order life cycles come from hashes of the ids, which keeps
them stable from one batch to the next without storing any generator state.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import numpy as np
import polars as pl

from lakehouse.demo.clock import as_datetimes, seasonal_times, to_micros

OPEN_STATUSES = ("pending", "confirmed", "shipped")
MINUTE_US = 60_000_000
HOUR_US = 60 * MINUTE_US


def hashed_uniform(ids: np.ndarray, salt: int) -> np.ndarray:
    """A uniform [0, 1) number per id (splitmix64), stable for the same id and salt."""
    with np.errstate(over="ignore"):
        x = ids.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15) + np.uint64(salt)
        x ^= x >> np.uint64(30)
        x *= np.uint64(0xBF58476D1CE4E5B9)
        x ^= x >> np.uint64(27)
        x *= np.uint64(0x94D049BB133111EB)
        x ^= x >> np.uint64(31)
    return (x >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def popularity(ids: np.ndarray, seed: int, salt: int, alpha: float) -> np.ndarray:
    """Pareto-distributed weights: a few ids get most of the orders, as in real shops."""
    u = hashed_uniform(ids, seed * 100 + salt)
    weights = np.minimum((1.0 - u) ** (-1.0 / alpha), 1_000.0)
    return weights / weights.sum()


def order_status_at(
    order_ids: np.ndarray, created_us: np.ndarray, at_us: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Each order's status at a moment and when it took that status.

    pending -> confirmed (5 min-2 h) -> shipped (6-48 h) -> delivered (1-4 days); 5 % are
    cancelled 10 min-24 h after creation, unless they shipped first.
    """

    def u(k: int) -> np.ndarray:
        return hashed_uniform(order_ids, seed * 100 + 50 + k)

    confirm = created_us + (5 * MINUTE_US + u(1) * 115 * MINUTE_US).astype(np.int64)
    ship = confirm + (6 * HOUR_US + u(2) * 42 * HOUR_US).astype(np.int64)
    deliver = ship + (24 * HOUR_US + u(3) * 72 * HOUR_US).astype(np.int64)
    cancel = created_us + (10 * MINUTE_US + u(5) * (24 * HOUR_US - 10 * MINUTE_US)).astype(np.int64)
    will_cancel = (u(4) < 0.05) & (cancel < ship)
    cancelled = will_cancel & (at_us >= cancel)

    status = np.full(len(order_ids), "pending", dtype=object)
    changed = created_us.copy()
    for name, moment in (("confirmed", confirm), ("shipped", ship), ("delivered", deliver)):
        reached = (at_us >= moment) & ~(will_cancel & (moment >= cancel))
        status[reached] = name
        changed[reached] = moment[reached]
    status[cancelled] = "cancelled"
    changed[cancelled] = cancel[cancelled]
    return status, changed


@dataclass(frozen=True)
class Catalogue:
    """What new orders can refer to: existing customers and products with their weights."""

    customer_ids: np.ndarray
    customer_weights: np.ndarray
    product_ids: np.ndarray
    product_prices: np.ndarray
    product_weights: np.ndarray

    @classmethod
    def build(cls, customers: pl.DataFrame, products: pl.DataFrame, seed: int) -> Catalogue:
        customer_ids = customers["customer_id"].to_numpy()
        product_ids = products["product_id"].to_numpy()
        return cls(
            customer_ids=customer_ids,
            customer_weights=popularity(customer_ids, seed, salt=1, alpha=1.6),
            product_ids=product_ids,
            product_prices=products["price"].to_numpy(),
            product_weights=popularity(product_ids, seed, salt=2, alpha=1.2),
        )


@dataclass(frozen=True)
class OrderDefectRates:
    negative_amount: float
    unknown_status: float
    orphan_order_item: float


def order_defect_rates(rates: dict[str, float]) -> OrderDefectRates:
    return OrderDefectRates(rates["negative_amount"], rates["unknown_status"], rates["orphan_order_item"])


def new_orders(
    rng: np.random.Generator,
    catalogue: Catalogue,
    first_order_id: int,
    first_item_id: int,
    n: int,
    start: datetime,
    end: datetime,
    seed: int,
    defects: OrderDefectRates,
    coupon_codes: bool,
) -> tuple[pl.DataFrame, pl.DataFrame, dict[str, int]]:
    """New orders placed in (start, end] with their items, status as of `end`, and defect counts."""
    order_ids = np.arange(first_order_id, first_order_id + n, dtype=np.int64)
    created_us = seasonal_times(rng, start, end, n)
    customer_ids = rng.choice(catalogue.customer_ids, size=n, p=catalogue.customer_weights)

    item_counts = np.minimum(1 + rng.poisson(2.0, n), 8)
    n_items = int(item_counts.sum())
    item_order = np.repeat(np.arange(n), item_counts)
    picks = rng.choice(len(catalogue.product_ids), size=n_items, p=catalogue.product_weights)
    product_ids = catalogue.product_ids[picks].copy()
    unit_price = catalogue.product_prices[picks]
    quantity = rng.choice([1, 2, 3, 4, 5], size=n_items, p=[0.6, 0.22, 0.1, 0.05, 0.03])
    orphans = rng.random(n_items) < defects.orphan_order_item
    product_ids[orphans] = catalogue.product_ids.max() + rng.integers(1_000, 100_000, int(orphans.sum()))

    totals = np.round(np.bincount(item_order, weights=quantity * unit_price, minlength=n), 2)
    status, changed_us = order_status_at(order_ids, created_us, to_micros(end), seed)
    defect = rng.choice(
        3,
        size=n,
        p=[
            defects.negative_amount,
            defects.unknown_status,
            1 - defects.negative_amount - defects.unknown_status,
        ],
    )
    totals[defect == 0] = -totals[defect == 0]
    status[defect == 1] = "on_hold"

    orders = pl.DataFrame(
        {
            "order_id": order_ids,
            "customer_id": customer_ids,
            "status": status.astype(str),
            "total_amount": totals,
            "currency": "EUR",
            "created_at": as_datetimes(created_us),
            "updated_at": as_datetimes(changed_us),
        }
    )
    if coupon_codes:
        codes = np.array(["WELCOME10", "SPRING15", "LOYAL5"])[rng.integers(0, 3, n)]
        has_code = rng.random(n) < 0.2
        orders = orders.with_columns(
            coupon_code=pl.Series(
                [c if h else None for c, h in zip(codes, has_code, strict=True)], dtype=pl.String
            )
        )
    items = pl.DataFrame(
        {
            "order_item_id": np.arange(first_item_id, first_item_id + n_items, dtype=np.int64),
            "order_id": order_ids[item_order],
            "product_id": product_ids,
            "quantity": quantity.astype(np.int64),
            "unit_price": unit_price,
            "created_at": as_datetimes(created_us[item_order]),
            "updated_at": as_datetimes(created_us[item_order]),
        }
    )
    counts = {
        "negative_amount": int((defect == 0).sum()),
        "unknown_status": int((defect == 1).sum()),
        "orphan_order_item": int(orphans.sum()),
    }
    return orders, items, counts


def progressed_orders(open_orders: pl.DataFrame, at: datetime, seed: int) -> pl.DataFrame:
    """Open orders whose status has moved on by `at`: order_id, status, updated_at."""
    ids = open_orders["order_id"].to_numpy()
    created_us = open_orders["created_at"].dt.epoch("us").to_numpy()
    status, changed_us = order_status_at(ids, created_us, to_micros(at), seed)
    moved = status != open_orders["status"].to_numpy()
    return pl.DataFrame(
        {
            "order_id": ids[moved],
            "status": status[moved].astype(str),
            "updated_at": as_datetimes(changed_us[moved]),
        },
        schema={"order_id": pl.Int64, "status": pl.String, "updated_at": pl.Datetime("us", "UTC")},
    )
