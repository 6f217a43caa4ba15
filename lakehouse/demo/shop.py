"""The shop's tables as polars frames: customers, products, orders and their items.

Everything is a function of the seed, so the same seed gives the same shop in SQLite and
PostgreSQL. Popularity and order life cycles come from hashes of the ids, which keeps
them stable from one batch to the next without storing any generator state.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import numpy as np
import polars as pl

from lakehouse.demo.clock import as_datetimes, seasonal_times, to_micros

CATEGORIES = {  # category: (share of catalogue, median price)
    "electronics": (0.12, 180.0),
    "home": (0.16, 45.0),
    "garden": (0.08, 35.0),
    "fashion": (0.20, 40.0),
    "sports": (0.10, 60.0),
    "toys": (0.09, 25.0),
    "books": (0.12, 15.0),
    "beauty": (0.07, 20.0),
    "grocery": (0.06, 8.0),
}
FIRST_NAMES = [
    "Anna",
    "Ben",
    "Clara",
    "David",
    "Elif",
    "Farid",
    "Greta",
    "Hugo",
    "Ines",
    "Jonas",
    "Kemal",
    "Lena",
    "Mia",
    "Noah",
    "Olga",
    "Paul",
    "Rosa",
    "Sami",
    "Tara",
    "Umut",
    "Vera",
    "Wim",
    "Yara",
]
LAST_NAMES = [
    "Schmidt",
    "Meyer",
    "Novak",
    "Rossi",
    "Garcia",
    "Dubois",
    "Jansen",
    "Kowalski",
    "Silva",
    "Nielsen",
    "Horvat",
    "Popescu",
    "Murphy",
    "Costa",
    "Weber",
    "Berg",
    "Lind",
    "Moreau",
]
CITIES = {  # city: country
    "Berlin": "DE",
    "Hamburg": "DE",
    "Munich": "DE",
    "Vienna": "AT",
    "Zurich": "CH",
    "Amsterdam": "NL",
    "Paris": "FR",
    "Lyon": "FR",
    "Madrid": "ES",
    "Milan": "IT",
    "Warsaw": "PL",
}
STREETS = ["Main Street", "Station Road", "Park Lane", "Mill Way", "Church Street", "High Street"]
ADJECTIVES = ["Classic", "Smart", "Compact", "Deluxe", "Eco", "Pro", "Mini", "Urban", "Vintage"]
OPEN_STATUSES = ("pending", "confirmed", "shipped")
MINUTE_US = 60_000_000
HOUR_US = 60 * MINUTE_US


@dataclass(frozen=True)
class Volumes:
    """Row counts for a scale: scale 1 is about 100k customers and 1M orders."""

    customers: int
    products: int
    orders: int
    events_per_file: int

    @classmethod
    def for_scale(cls, scale: float) -> Volumes:
        return cls(
            customers=max(50, round(100_000 * scale)),
            products=max(20, round(10_000 * scale)),
            orders=max(200, round(1_000_000 * scale)),
            events_per_file=max(100, round(20_000 * scale)),
        )

    @property
    def orders_per_batch(self) -> int:
        return max(10, self.orders // 100)

    @property
    def new_customers_per_batch(self) -> int:
        return max(2, self.customers // 500)

    @property
    def customer_changes_per_batch(self) -> int:
        return max(2, self.customers // 200)

    @property
    def price_changes_per_batch(self) -> int:
        return max(1, self.products // 100)

    @property
    def abandoned_orders_per_batch(self) -> int:
        return max(2, self.orders_per_batch // 200)

    @property
    def closed_accounts_per_batch(self) -> int:
        return max(1, self.new_customers_per_batch // 4)


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


def new_customers(
    rng: np.random.Generator, first_id: int, n: int, start: datetime, end: datetime
) -> pl.DataFrame:
    ids = np.arange(first_id, first_id + n, dtype=np.int64)
    first = np.array(FIRST_NAMES)[rng.integers(0, len(FIRST_NAMES), n)]
    last = np.array(LAST_NAMES)[rng.integers(0, len(LAST_NAMES), n)]
    city_names = list(CITIES)
    cities = np.array(city_names)[rng.integers(0, len(city_names), n)]
    created = as_datetimes(seasonal_times(rng, start, end, n))
    has_phone = rng.random(n) < 0.7
    frame = pl.DataFrame(
        {
            "customer_id": ids,
            "first_name": first,
            "last_name": last,
            "email": [f"{f}.{la}.{i}@example.com".lower() for f, la, i in zip(first, last, ids, strict=True)],
            "phone": [
                f"+49 30 {n:07d}" if p else None
                for n, p in zip(rng.integers(0, 10**7, n), has_phone, strict=True)
            ],
            "street_address": _addresses(rng, n),
            "city": cities,
            "country": [CITIES[c] for c in cities],
        }
    )
    return frame.with_columns(created_at=created, updated_at=created)


def _addresses(rng: np.random.Generator, n: int) -> list[str]:
    numbers = rng.integers(1, 200, n)
    streets = np.array(STREETS)[rng.integers(0, len(STREETS), n)]
    return [f"{num} {street}" for num, street in zip(numbers, streets, strict=True)]


def new_products(
    rng: np.random.Generator, first_id: int, n: int, start: datetime, end: datetime
) -> pl.DataFrame:
    ids = np.arange(first_id, first_id + n, dtype=np.int64)
    names = list(CATEGORIES)
    shares = np.array([share for share, _ in CATEGORIES.values()])
    category = rng.choice(len(names), size=n, p=shares / shares.sum())
    medians = np.array([median for _, median in CATEGORIES.values()])[category]
    price = np.round(np.floor(medians * rng.lognormal(0.0, 0.6, n)) + 0.99, 2)
    created = as_datetimes(seasonal_times(rng, start, end, n))
    return pl.DataFrame(
        {
            "product_id": ids,
            "sku": [f"SKU-{i:07d}" for i in ids],
            "name": [
                f"{ADJECTIVES[a]} {names[c].title()} Item {i}"
                for a, c, i in zip(rng.integers(0, len(ADJECTIVES), n), category, ids, strict=True)
            ],
            "category": np.array(names)[category],
            "price": price,
        }
    ).with_columns(created_at=created, updated_at=created)


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


def changed_customers(
    rng: np.random.Generator, customers: pl.DataFrame, n: int, start: datetime, end: datetime
) -> pl.DataFrame:
    """Customers who moved house or changed their e-mail address in (start, end]."""
    picked = customers.sample(n=min(n, customers.height), seed=int(rng.integers(2**31))).sort("customer_id")
    n = picked.height
    moved = rng.random(n) < 0.5
    city_names = list(CITIES)
    new_city = np.array(city_names)[rng.integers(0, len(city_names), n)]
    stamp = rng.integers(100, 999, n)
    return picked.with_columns(
        email=pl.when(pl.Series(~moved))
        .then(pl.col("email").str.replace("@", pl.Series([f".{s}@" for s in stamp])))
        .otherwise(pl.col("email")),
        street_address=pl.when(pl.Series(moved))
        .then(pl.Series(_addresses(rng, n)))
        .otherwise(pl.col("street_address")),
        city=pl.when(pl.Series(moved)).then(pl.Series(new_city)).otherwise(pl.col("city")),
        country=pl.when(pl.Series(moved))
        .then(pl.Series([CITIES[c] for c in new_city]))
        .otherwise(pl.col("country")),
        updated_at=as_datetimes(np.sort(seasonal_times(rng, start, end, n))),
    )


def repriced_products(
    rng: np.random.Generator, products: pl.DataFrame, n: int, start: datetime, end: datetime
) -> pl.DataFrame:
    """Products whose list price changed in (start, end]: product_id, price, updated_at."""
    picked = products.sample(n=min(n, products.height), seed=int(rng.integers(2**31))).sort("product_id")
    factor = rng.uniform(0.85, 1.15, picked.height)
    return picked.select(
        "product_id",
        price=(pl.col("price") * pl.Series(factor)).floor() + 0.99,
        updated_at=as_datetimes(seasonal_times(rng, start, end, picked.height)),
    )


HISTORY = timedelta(days=90)
CUSTOMER_HISTORY = timedelta(days=730)
