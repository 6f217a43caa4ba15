"""`demo advance`: simulate more shop activity, batch by batch, up to the demo clock's new time.

Each batch adds customers and orders, changes addresses, prices and order statuses, deletes
abandoned orders and closed accounts, writes event files and records itself in the manifest.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl

from lakehouse.demo import store
from lakehouse.demo.customers import changed_customers, new_customers
from lakehouse.demo.events import write_event_files
from lakehouse.demo.manifest import Manifest, current
from lakehouse.demo.orders import OPEN_STATUSES, Catalogue, new_orders, order_defect_rates, progressed_orders
from lakehouse.demo.products import repriced_products
from lakehouse.demo.volumes import Volumes
from lakehouse.resources import SourceDatabase

# A batch covers the time since the previous one, so the demo clock follows the wall clock
# (and stays out of the future) however often `make run` is called.
MIN_BATCH = timedelta(minutes=1)
EVENT_FILES_PER_BATCH = 2


def advance(source: SourceDatabase, landing: Path, batches: int = 1, now: datetime | None = None) -> Manifest:
    """Simulate `batches` more periods of shop activity up to `now`, each at least a minute long."""
    manifest = current(source, landing)
    start = manifest.anchor_time
    end = max((now or datetime.now(UTC)).astimezone(UTC), start + batches * MIN_BATCH)
    step = (end - start) / batches
    for i in range(batches):
        _advance_one(source, landing, manifest, start + i * step, start + (i + 1) * step)
    return manifest


def _delete_some(
    source: SourceDatabase,
    rng: np.random.Generator,
    volumes: Volumes,
    abandoned: pl.Series,
    known: pl.Series,
) -> dict[str, int]:
    """Delete what a shop deletes, among the rows there before this batch: some `abandoned`
    orders with their items, and some of the `known` customers who never ordered (closed
    accounts). Returns the rows deleted per table."""
    ordered = store.read(source, "SELECT DISTINCT customer_id FROM orders WHERE customer_id IS NOT NULL")
    idle = known.filter(~known.is_in(ordered.get_column("customer_id").implode()))
    orders = _some(rng, abandoned, volumes.abandoned_orders_per_batch)
    customers = _some(rng, idle, volumes.closed_accounts_per_batch)
    listed = ", ".join(map(str, orders)) or "NULL"
    items = store.read(source, f"SELECT count(*) AS n FROM order_items WHERE order_id IN ({listed})").item()
    store.delete(source, "order_items", "order_id", orders)
    store.delete(source, "orders", "order_id", orders)
    store.delete(source, "customers", "customer_id", customers)
    return {"orders": len(orders), "order_items": int(items), "customers": len(customers)}


def _some(rng: np.random.Generator, ids: pl.Series, count: int) -> list[int]:
    chosen = rng.choice(ids.to_numpy(), size=min(count, ids.len()), replace=False) if ids.len() else []
    return sorted(int(value) for value in chosen)


def _advance_one(
    source: SourceDatabase, landing: Path, manifest: Manifest, start: datetime, end: datetime
) -> None:
    batch = manifest.batches + 1
    rng = np.random.default_rng([manifest.seed, batch])
    volumes = Volumes.for_scale(manifest.scale)
    drift = manifest.schema_drift
    if batch >= drift.from_batch and not drift.applied:
        store.add_column(source, drift.table, drift.column)
        drift.applied = True

    customers = store.read(source, "SELECT * FROM customers ORDER BY customer_id")
    products = store.read(source, "SELECT product_id, price FROM products ORDER BY product_id")
    open_orders = store.read(
        source,
        "SELECT order_id, status, created_at FROM orders WHERE status IN "
        f"({', '.join(repr(s) for s in OPEN_STATUSES)}) ORDER BY order_id",
    )
    last = store.read(
        source,
        "SELECT MAX(order_id) AS orders, (SELECT MAX(order_item_id) FROM order_items) AS items FROM orders",
    )

    joined = new_customers(
        rng, int(customers["customer_id"].max()) + 1, volumes.new_customers_per_batch, start, end
    )
    changed = changed_customers(rng, customers, volumes.customer_changes_per_batch, start, end)
    repriced = repriced_products(rng, products, volumes.price_changes_per_batch, start, end)
    moved = progressed_orders(open_orders, end, manifest.seed)
    catalogue = Catalogue.build(
        pl.concat([customers.select("customer_id"), joined.select("customer_id")]),
        products.update(repriced.select("product_id", "price"), on="product_id"),
        manifest.seed,
    )
    orders, items, order_defects = new_orders(
        rng,
        catalogue,
        int(last["orders"][0]) + 1,
        int(last["items"][0]) + 1,
        volumes.orders_per_batch,
        start,
        end,
        manifest.seed,
        order_defect_rates(manifest.defect_rates),
        coupon_codes=drift.applied and drift.table == "orders",
    )

    store.insert(source, "customers", joined)
    store.update(
        source,
        "customers",
        "customer_id",
        changed.select("customer_id", "email", "street_address", "city", "country", "updated_at"),
    )
    store.update(source, "products", "product_id", repriced)
    store.insert(source, "orders", orders)
    store.insert(source, "order_items", items)
    store.update(source, "orders", "order_id", moved)
    # Abandoned carts: orders pending since before this batch that did not move on in it.
    abandoned = open_orders.filter(pl.col("status") == "pending").join(moved, on="order_id", how="anti")
    deleted = _delete_some(
        source, rng, volumes, abandoned.get_column("order_id"), customers.get_column("customer_id")
    )

    halves = [
        (
            start + (end - start) * k / EVENT_FILES_PER_BATCH,
            start + (end - start) * (k + 1) / EVENT_FILES_PER_BATCH,
        )
        for k in range(EVENT_FILES_PER_BATCH)
    ]
    files, event_defects = write_event_files(
        rng,
        landing,
        manifest,
        catalogue,
        halves,
        volumes.events_per_file // EVENT_FILES_PER_BATCH,
        batch,
    )
    manifest.batches = batch
    manifest.anchor = end.isoformat()
    manifest.record(
        {
            "batch": batch,
            "window": [start.isoformat(), end.isoformat()],
            "rows": {
                "customers": {"inserted": joined.height, "updated": changed.height},
                "products": {"updated": repriced.height},
                "orders": {"inserted": orders.height, "updated": moved.height},
                "order_items": {"inserted": items.height},
            },
            "deleted": deleted,
            "defects": {**order_defects, **event_defects},
            "event_files": files,
        }
    )
    manifest.save(landing)
