"""`demo init`: build the shop's source from scratch, with the last day of event files.

The first state is 90 days of orders by customers and products up to two years old, as of
the demo clock's start; batch 0 of the manifest records it.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

from lakehouse.demo import store
from lakehouse.demo.customers import changed_customers, new_customers
from lakehouse.demo.events import EVENTS_FOLDER, write_event_files
from lakehouse.demo.manifest import Manifest, SchemaDrift
from lakehouse.demo.orders import Catalogue, new_orders, order_defect_rates
from lakehouse.demo.products import new_products, repriced_products
from lakehouse.demo.volumes import Volumes
from lakehouse.resources import SourceDatabase

DEFAULT_DEFECT_RATES = {
    "malformed_line": 0.002,
    "missing_event_id": 0.002,
    "unknown_event_type": 0.002,
    "bad_timestamp": 0.002,
    "duplicate_event": 0.005,
    "late_event": 0.01,
    "negative_amount": 0.002,
    "unknown_status": 0.002,
    "orphan_order_item": 0.002,
}
INITIAL_HOURS = 24  # a new source holds the last day of events (a file an hour) and changes
HISTORY = timedelta(days=90)
CUSTOMER_HISTORY = timedelta(days=730)


def init(
    source: SourceDatabase,
    landing: Path,
    scale: float = 0.1,
    seed: int = 42,
    now: datetime | None = None,
    defect_rates: dict[str, float] | None = None,
    drift_batch: int = 2,
) -> Manifest:
    """Create the shop database and the last day of event files from scratch, in a database that
    is absent, empty or an earlier demo's (anything else raises `store.NotADemoError`)."""
    anchor = (now or datetime.now(UTC)).astimezone(UTC)
    rates = {**DEFAULT_DEFECT_RATES, **(defect_rates or {})}
    manifest = Manifest(
        seed, scale, anchor.isoformat(), rates, SchemaDrift(from_batch=drift_batch), demo_id=uuid.uuid4().hex
    )
    volumes = Volumes.for_scale(scale)
    rng = np.random.default_rng([seed, 0])

    store.create_schema(source, manifest.demo_id)
    # Only the event files an earlier demo wrote: anything else in the landing folder is not ours.
    earlier = Manifest.load(landing)
    for name in earlier.event_files if earlier else ():
        (landing / EVENTS_FOLDER / name).unlink(missing_ok=True)
    history_start = anchor - HISTORY
    customers = new_customers(rng, 1, volumes.customers, anchor - CUSTOMER_HISTORY, history_start)
    products = new_products(rng, 1, volumes.products, anchor - CUSTOMER_HISTORY, history_start)
    catalogue = Catalogue.build(customers, products, seed)
    orders, items, order_defects = new_orders(
        rng,
        catalogue,
        1,
        1,
        volumes.orders,
        history_start,
        anchor,
        seed,
        order_defect_rates(rates),
        coupon_codes=False,
    )
    # The last day's customer and price changes at the hourly batch rate, like the events: a new
    # source is as fresh as one that has been running, so freshness checks pass on it.
    last_day = (anchor - timedelta(hours=INITIAL_HOURS), anchor)
    changed = changed_customers(rng, customers, volumes.customer_changes_per_batch * INITIAL_HOURS, *last_day)
    repriced = repriced_products(rng, products, volumes.price_changes_per_batch * INITIAL_HOURS, *last_day)
    for table, frame in (
        ("customers", customers.update(changed, on="customer_id")),
        ("products", products.update(repriced, on="product_id")),
        ("orders", orders),
        ("order_items", items),
    ):
        store.insert(source, table, frame)

    hours = [
        (anchor - timedelta(hours=h + 1), anchor - timedelta(hours=h)) for h in reversed(range(INITIAL_HOURS))
    ]
    files, event_defects = write_event_files(
        rng, landing, manifest, catalogue, hours, volumes.events_per_file, 0
    )
    manifest.record(
        {
            "batch": 0,
            "window": [history_start.isoformat(), anchor.isoformat()],
            "rows": {
                "customers": {"inserted": customers.height},
                "products": {"inserted": products.height},
                "orders": {"inserted": orders.height},
                "order_items": {"inserted": items.height},
            },
            "defects": {**order_defects, **event_defects},
            "event_files": files,
        }
    )
    manifest.save(landing)
    return manifest
