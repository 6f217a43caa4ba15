"""The shop's products as polars frames: the catalogue by category, and its price changes."""

from __future__ import annotations

from datetime import datetime

import numpy as np
import polars as pl

from lakehouse.demo.clock import as_datetimes, seasonal_times

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
ADJECTIVES = ["Classic", "Smart", "Compact", "Deluxe", "Eco", "Pro", "Mini", "Urban", "Vintage"]


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
