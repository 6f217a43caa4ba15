"""Gold reconciliation: the money in the gold facts equals the money in silver, period by
period, so an incremental rebuild that skipped or doubled a period is caught.

Both sides are summed by polars' streaming engine: only the per-period sums and the join's
smaller side (the orders) are held, not whole tables, so memory does not grow with them.

After a pass, `revenue_matches_silver` compares only the days whose revenue can have changed
since: those of the order lines gold or silver gained or lost, and those of the lines of orders
whose status silver changed (last_pass.py). Each side's changed rows are told from the files
its commits added and removed, independently of how gold decided what to rebuild, so a day
gold skipped is still compared.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import dagster as dg
import polars as pl

from asset_checks import last_pass
from asset_checks.check import Check
from asset_checks.row_checks import scan_columns
from asset_checks.sample import sample
from lakehouse.gold.tables import GoldTable
from lakehouse.gold.transforms import created_in
from lakehouse.resources import LakehouseStorage
from lakehouse.storage import delta, keys

MONEY = pl.Decimal(38, 2)
CANCELLED = pl.col("status") == "cancelled"


def _silver_orders_by_month(lakehouse: LakehouseStorage) -> pl.LazyFrame:
    orders = scan_columns(lakehouse.table_uri("silver", "orders"), ["order_id", "total_amount", "created_at"])
    return orders.group_by(order_month=pl.col("created_at").dt.strftime("%Y-%m")).agg(
        orders=pl.len().cast(pl.Int64), total_amount=pl.col("total_amount").sum().cast(MONEY)
    )


def _gold_orders_by_month(lakehouse: LakehouseStorage) -> pl.LazyFrame:
    facts = scan_columns(lakehouse.table_uri("gold", "fct_orders"), ["order_month", "total_amount"])
    return facts.group_by("order_month").agg(
        orders=pl.len().cast(pl.Int64), total_amount=pl.col("total_amount").sum().cast(MONEY)
    )


def _silver_revenue_by_day(lakehouse: LakehouseStorage, days: pl.Series | None = None) -> pl.LazyFrame:
    """Line amounts of the items whose order silver holds, by the item's day (of `days` only,
    when given), split by whether the order is cancelled: the definition `daily_revenue` must
    keep."""
    # Filtered before its columns are picked: the days' filter prunes by the month partition.
    on_days = None if days is None else created_in([day.isoformat() for day in days])
    items = scan_columns(
        lakehouse.table_uri("silver", "order_items"),
        ["order_id", "quantity", "unit_price", "created_at"],
        on_days,
    )
    orders = scan_columns(lakehouse.table_uri("silver", "orders"), ["order_id", "status"])
    if days is not None:
        lines = items.collect(engine="streaming")
        # Only the orders of those days' lines, by the range of their ids, which prunes files.
        orders = keys.near(orders, lines.select("order_id"))
        items = lines.lazy()
    # The join holds every order: as a flag, not its status text, which took 0.3 GiB more at 10M orders.
    orders = orders.select("order_id", cancelled=CANCELLED)
    line = pl.col("unit_price") * pl.col("quantity")
    return (
        items.join(orders, on="order_id", how="inner")
        .group_by(order_date=pl.col("created_at").dt.date())
        .agg(
            gross_revenue=line.filter(~pl.col("cancelled")).sum().cast(MONEY),
            cancelled_revenue=line.filter(pl.col("cancelled")).sum().cast(MONEY),
        )
    )


def _gold_revenue_by_day(lakehouse: LakehouseStorage, days: pl.Series | None = None) -> pl.LazyFrame:
    revenue = scan_columns(
        lakehouse.table_uri("gold", "daily_revenue"),
        ["order_date", "gross_revenue", "cancelled_revenue"],
        None if days is None else pl.col("order_date").is_in(days.implode()),
    )
    return revenue.group_by("order_date").agg(
        gross_revenue=pl.col("gross_revenue").sum().cast(MONEY),
        cancelled_revenue=pl.col("cancelled_revenue").sum().cast(MONEY),
    )


REVENUE_TABLES = {
    "gold": ("gold", "daily_revenue"),
    "items": ("silver", "order_items"),
    "orders": ("silver", "orders"),
}


def _days_changed(
    lakehouse: LakehouseStorage, tables: dict[str, delta.DeltaTable], last: dict
) -> pl.Series | None:
    """The days whose revenue can differ from what the `last` pass compared; None when its
    record no longer holds (a silver table created again, files vacuumed)."""
    if not all(
        last_pass.still_held(tables[name], last.get(name)) and last.get(name) for name in ("items", "orders")
    ):
        return None
    uri = {name: lakehouse.table_uri(*REVENUE_TABLES[name]) for name in REVENUE_TABLES}
    gold = delta.rows_changed(
        uri["gold"],
        tables["gold"],
        last["version"],
        ["order_date", "category", "gross_revenue", "cancelled_revenue"],
    )
    items = delta.rows_changed(
        uri["items"],
        tables["items"],
        last["items"][1],
        ["order_item_id", "order_id", "quantity", "unit_price", "created_at"],
    )
    orders = delta.rows_changed(uri["orders"], tables["orders"], last["orders"][1], ["order_id", "status"])
    if gold is None or items is None or orders is None:
        return None
    # An order whose status changed moves its lines' amounts between gross and cancelled.
    ids = orders.select("order_id").unique()
    lines_of_orders = (
        keys.near(pl.scan_delta(tables["items"]), ids)
        .join(ids.lazy(), on="order_id", how="semi")
        .select(pl.col("created_at").dt.date())
        .collect()
    )
    days = [
        gold.get_column("order_date"),
        items.get_column("created_at").dt.date(),
        lines_of_orders.get_column("created_at"),
    ]
    return pl.concat(days).drop_nulls().unique().sort()


def _compare(
    gold: pl.LazyFrame, silver: pl.LazyFrame, period: str, measures: list[str]
) -> dg.AssetCheckResult:
    """Per period, each measure in gold against silver (a period missing on one side counts as 0)."""
    gold_sums, silver_sums = pl.collect_all([gold, silver], engine="streaming")
    joined = gold_sums.join(silver_sums, on=period, how="full", coalesce=True, suffix="_silver").fill_null(0)
    wrong = joined.filter(pl.any_horizontal(pl.col(m) != pl.col(f"{m}_silver") for m in measures))
    totals = {}
    for measure in measures:
        totals[f"gold_{measure}"] = float(joined.get_column(measure).sum() or 0)
        totals[f"silver_{measure}"] = float(joined.get_column(f"{measure}_silver").sum() or 0)
    return dg.AssetCheckResult(
        passed=wrong.is_empty(),
        metadata={
            **totals,
            "periods_checked": joined.height,
            "periods_wrong": wrong.height,
            "sample": sample(wrong.sort(period)) if not wrong.is_empty() else "none",
        },
    )


def _orders_match_silver(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
    lakehouse: LakehouseStorage = context.resources.lakehouse
    return _compare(
        _gold_orders_by_month(lakehouse),
        _silver_orders_by_month(lakehouse),
        "order_month",
        ["orders", "total_amount"],
    )


REVENUE = dg.AssetCheckKey(dg.AssetKey(["gold", "daily_revenue"]), "revenue_matches_silver")


def _revenue_matches_silver(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
    lakehouse: LakehouseStorage = context.resources.lakehouse
    measures = ["gross_revenue", "cancelled_revenue"]
    opened = {name: delta.open_table(lakehouse.table_uri(*where)) for name, where in REVENUE_TABLES.items()}
    tables = {name: table for name, table in opened.items() if table is not None}
    if len(tables) < len(opened):
        return _compare(
            _gold_revenue_by_day(lakehouse), _silver_revenue_by_day(lakehouse), "order_date", measures
        )
    last = last_pass.recorded(context, REVENUE, tables["gold"], additive=False)
    days = None if last is None else _days_changed(lakehouse, tables, last)
    result = _compare(
        _gold_revenue_by_day(lakehouse, days), _silver_revenue_by_day(lakehouse, days), "order_date", measures
    )
    scope = "every day" if days is None else f"the days changed since gold version {last['version']}"
    held = {name: last_pass.held(tables[name]) for name in ("items", "orders")}
    return dg.AssetCheckResult(
        passed=result.passed,
        metadata={**result.metadata, "scope": scope, **last_pass.record(tables["gold"], **held)},
    )


def _reconciliation(
    table: str,
    name: str,
    description: str,
    evaluate: Callable[[dg.AssetCheckExecutionContext], dg.AssetCheckResult],
    silver_tables: tuple[str, ...],
) -> Check:
    reads = (("gold", table), *(("silver", name) for name in silver_tables))
    return Check(dg.AssetKey(["gold", table]), name, description, evaluate, blocking=True, reads=reads)


def revenue_checks(tables: Iterable[GoldTable]) -> list[Check]:
    """The reconciliations of those of the gold `tables` that have one."""
    attached = {dg.AssetKey(["gold", table.name]) for table in tables}
    checks = [
        _reconciliation(
            "fct_orders",
            "orders_match_silver",
            "Per month, the order count and total amount equal silver's orders.",
            _orders_match_silver,
            ("orders",),
        ),
        _reconciliation(
            "daily_revenue",
            "revenue_matches_silver",
            "Per day, gross and cancelled revenue equal silver's order lines (items of known orders).",
            _revenue_matches_silver,
            ("order_items", "orders"),
        ),
    ]
    return [check for check in checks if check.asset in attached]
