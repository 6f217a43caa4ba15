"""How much the demo shop holds at a scale, and how much each batch adds, changes and deletes."""

from __future__ import annotations

from dataclasses import dataclass


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
