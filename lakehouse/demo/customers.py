"""The shop's customers as polars frames: the first ones, those who join, and those who move
house or change their e-mail address."""

from __future__ import annotations

from datetime import datetime

import numpy as np
import polars as pl

from lakehouse.demo.clock import as_datetimes, seasonal_times

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
