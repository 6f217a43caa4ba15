"""Contract checks on silver: they pass on clean data, name exactly the planted bad rows, and
the blocking ones stop gold from building on bad data."""

from datetime import UTC, datetime

import dagster as dg
import polars as pl
from conftest import Lake

from lakehouse import delta

ORDERS_CHECKS = dg.AssetSelection.checks_for_assets(dg.AssetKey(["silver", "orders"]))


def evaluations(result: dg.ExecuteInProcessResult, table: str) -> dict[str, dg.AssetCheckEvaluation]:
    return {
        e.check_name: e for e in result.get_asset_check_evaluations() if e.asset_key.path == ["silver", table]
    }


def plant(lake: Lake, rows: pl.DataFrame) -> None:
    """Append rows to silver/orders behind the pipeline's back, as a faulty writer would."""
    delta.write(lake.uri("silver", "orders"), rows)


def test_contract_checks_pass_on_clean_silver(lake: Lake) -> None:
    result = lake.materialize()
    for table in ("customers", "products", "orders", "order_items", "events"):
        checks = evaluations(result, table)
        assert set(checks) == {"not_null", "unique", "valid_values"}, table
        assert all(check.passed for check in checks.values()), table
        assert checks["not_null"].metadata["rows_checked"].value == lake.table("silver", table).height


def test_failing_checks_show_exactly_the_planted_rows(lake: Lake) -> None:
    lake.materialize()
    orders = lake.table("silver", "orders")
    duplicate = orders.filter(pl.col("order_id") == orders.get_column("order_id")[5])
    nulled = orders.slice(7, 1).with_columns(
        customer_id=pl.lit(None, dtype=pl.Int64), order_id=pl.lit(10**9, dtype=pl.Int64)
    )
    lost = orders.slice(9, 1).with_columns(status=pl.lit("lost"), order_id=pl.lit(10**9 + 1, dtype=pl.Int64))
    plant(lake, pl.concat([duplicate, nulled, lost]))

    result = lake.materialize(ORDERS_CHECKS, raise_on_error=False)

    checks = evaluations(result, "orders")
    assert {name: check.passed for name, check in checks.items()} == {
        "not_null": False, "unique": False, "valid_values": False
    }  # fmt: skip
    duplicated_id = str(duplicate.get_column("order_id")[0])
    unique = checks["unique"].metadata
    assert unique["failing_rows"].value == 2
    assert unique["sample"].value.count(f"| {duplicated_id} |") == 2
    not_null = checks["not_null"].metadata
    assert not_null["failing_rows"].value == 1 and f"| {10**9} |" in not_null["sample"].value
    valid = checks["valid_values"].metadata
    assert valid["failing_rows"].value == 1 and "lost" in valid["sample"].value
    assert valid["failure_rate"].value == round(1 / (orders.height + 3), 6)


def test_a_blocking_failure_stops_gold_until_the_data_is_fixed(lake: Lake) -> None:
    lake.materialize()
    orders = lake.table("silver", "orders")
    planted_at = datetime.now(UTC)
    duplicate = orders.filter(pl.col("order_id") == orders.get_column("order_id")[3])
    plant(lake, duplicate.with_columns(_loaded_at=pl.lit(planted_at, dtype=pl.Datetime("us", "UTC"))))
    fct_before = delta.open_table(lake.uri("gold", "fct_orders")).version()

    blocked = lake.materialize(raise_on_error=False)

    assert not blocked.success
    assert not evaluations(blocked, "orders")["unique"].passed
    materialized = {m.asset_key.path[-1] for m in blocked.get_asset_materialization_events() if m.asset_key}
    assert "fct_orders" not in materialized and "daily_revenue" not in materialized
    assert delta.open_table(lake.uri("gold", "fct_orders")).version() == fct_before

    duplicate_id = orders.get_column("order_id")[3]
    table = delta.open_table(lake.uri("silver", "orders"))
    newest = table.version()
    table.delete(f"order_id = {duplicate_id} AND _loaded_at = '{planted_at.isoformat()}'")
    assert delta.open_table(lake.uri("silver", "orders")).version() == newest + 1

    fixed = lake.materialize()
    assert fixed.success and evaluations(fixed, "orders")["unique"].passed
