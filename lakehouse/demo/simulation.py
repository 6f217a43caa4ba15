"""`demo init` and `demo advance`: build the shop's source and move its clock forward.

The manifest (`<landing>/demo_manifest.json`) records the seed, the clock, the defect rates
and how many of each defect every batch planted, so tests can compare the lakehouse with it.
It describes the demo; the marker inside the database (see `store`) is what lets the demo
change a database, and both carry the same demo id so neither is advanced without the other.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl

from lakehouse.demo import store
from lakehouse.demo.events import EVENT_DEFECTS, event_lines, write_event_file
from lakehouse.demo.shop import (
    CUSTOMER_HISTORY,
    HISTORY,
    OPEN_STATUSES,
    Catalogue,
    OrderDefectRates,
    Volumes,
    changed_customers,
    new_customers,
    new_orders,
    new_products,
    progressed_orders,
    repriced_products,
)
from lakehouse.resources import SourceDatabase

MANIFEST_NAME = "demo_manifest.json"
EVENTS_FOLDER = "events"
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
# A batch covers the time since the previous one, so the demo clock follows the wall clock
# (and stays out of the future) however often `make run` is called.
MIN_BATCH = timedelta(minutes=1)
INITIAL_HOURS = 24  # a new source holds the last day of events (a file an hour) and changes
EVENT_FILES_PER_BATCH = 2


@dataclass
class SchemaDrift:
    """From `from_batch` on, `table` has a new nullable text column `column`."""

    table: str = "orders"
    column: str = "coupon_code"
    from_batch: int = 2
    applied: bool = False


@dataclass
class Manifest:
    seed: int
    scale: float
    anchor: str
    defect_rates: dict[str, float]
    schema_drift: SchemaDrift
    batches: int = 0
    defects: dict[str, int] = field(default_factory=dict)
    event_files: dict[str, int] = field(default_factory=dict)
    log: list[dict] = field(default_factory=list)
    demo_id: str = ""

    @property
    def anchor_time(self) -> datetime:
        return datetime.fromisoformat(self.anchor)

    def record(self, batch: dict) -> None:
        self.log.append(batch)
        for name, count in batch["defects"].items():
            self.defects[name] = self.defects.get(name, 0) + count
        self.event_files.update(batch["event_files"])

    def save(self, landing: Path) -> None:
        landing.mkdir(parents=True, exist_ok=True)
        (landing / MANIFEST_NAME).write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, landing: Path) -> Manifest | None:
        path = landing / MANIFEST_NAME
        if not path.exists():
            return None
        raw = json.loads(path.read_text())
        return cls(**{**raw, "schema_drift": SchemaDrift(**raw["schema_drift"])})


def _order_defects(rates: dict[str, float]) -> OrderDefectRates:
    return OrderDefectRates(rates["negative_amount"], rates["unknown_status"], rates["orphan_order_item"])


def _event_files(
    rng: np.random.Generator,
    landing: Path,
    manifest: Manifest,
    catalogue: Catalogue,
    windows: list[tuple[datetime, datetime]],
    per_file: int,
    batch: int,
) -> tuple[dict[str, int], dict[str, int]]:
    earlier: list[str] = []
    files, defects = {}, dict.fromkeys(EVENT_DEFECTS, 0)
    for number, (start, end) in enumerate(windows):
        lines, counts = event_lines(
            rng,
            per_file,
            start,
            end,
            catalogue.customer_ids,
            catalogue.customer_weights,
            catalogue.product_ids,
            manifest.defect_rates,
            earlier,
        )
        # Names sort by arrival: the window's end, then batch and file number for uniqueness.
        name = f"events_{end:%Y%m%dT%H%M%S}_{batch:05d}_{number:02d}.jsonl"
        write_event_file(landing / EVENTS_FOLDER, name, lines)
        files[name] = len(lines)
        for key, count in counts.items():
            defects[key] += count
    return files, defects


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
        _order_defects(rates),
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
    files, event_defects = _event_files(rng, landing, manifest, catalogue, hours, volumes.events_per_file, 0)
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


def current(source: SourceDatabase, landing: Path) -> Manifest:
    """The manifest of the demo in `source`; `store.NotADemoError` when there is no such demo."""
    known = store.demo_id(source)
    if known is None:
        raise store.NotADemoError(
            f"no demo source in {store.shown_url(source)}: run `lakehouse demo init` first"
        )
    manifest = Manifest.load(landing)
    if manifest is None or manifest.demo_id != known:
        raise store.NotADemoError(
            f"{landing / MANIFEST_NAME} does not describe the demo in {store.shown_url(source)}: "
            "`lakehouse demo init --force` rebuilds both"
        )
    return manifest


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
        _order_defects(manifest.defect_rates),
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
    files, event_defects = _event_files(
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
