"""Data-quality checks: every check passes on clean data and names exactly the planted bad rows;
blocking checks stop what is built downstream; freshness follows the clock; the quality report
gates CI."""

import json
from datetime import datetime, timedelta
from pathlib import Path

import dagster as dg
import polars as pl
import pytest
from conftest import TEST_SALT, Lake, run_command, shop_contracts, sqlite_source, written_a_while_ago
from library import Library

from asset_checks import rules
from asset_checks.quarantine import load_started_from
from lakehouse.bronze import database
from lakehouse.demo.initial import DEFAULT_DEFECT_RATES
from lakehouse.gold.tables import GOLD_TABLES
from lakehouse.silver.load import BRONZE_VERSION, BRONZE_VERSION_BEFORE
from lakehouse.sources.contract import Contract
from lakehouse.storage import delta

ORDERS = dg.AssetKey(["silver", "orders"])
UTC_TIMESTAMP = pl.Datetime("us", "UTC")


def evaluations(
    result: dg.ExecuteInProcessResult, layer: str, table: str
) -> dict[str, dg.AssetCheckEvaluation]:
    return {
        e.check_name: e for e in result.get_asset_check_evaluations() if e.asset_key.path == [layer, table]
    }


def checks_of(*keys: dg.AssetKey) -> dg.AssetSelection:
    return dg.AssetSelection.checks_for_assets(*keys)


def values(check: dg.AssetCheckEvaluation, name: str) -> int | float | str:
    return check.metadata[name].value  # type: ignore[return-value]


def sample_column(check: dg.AssetCheckEvaluation, column: str) -> list[str]:
    """The values of one column in the check's sample, as the UI shows them."""
    return [str(row[column]) for row in records(check, "sample")]


def records(check: dg.AssetCheckEvaluation, name: str) -> list[dict]:
    """The rows of one of the check's metadata tables."""
    return [record.data for record in check.metadata[name].value.records]  # type: ignore[union-attr]


def plant(lake: Lake, rows: pl.DataFrame) -> None:
    """Append rows to silver/orders behind the pipeline's back, as a faulty writer would."""
    delta.write(lake.uri("silver", "orders"), rows)


def expected_checks(contracts: list[Contract]) -> set[tuple[str, str]]:
    """The checks each contract implies, and gold's: what a user can read off the YAML files."""
    expected = set()
    for contract in contracts:
        bronze, silver = f"bronze/{contract.name}", f"silver/{contract.name}"
        columns = contract.columns.values()
        expected |= {(bronze, "not_null"), (bronze, "unique"), (silver, "not_null"), (silver, "unique")}
        expected |= {(silver, "bronze_rows_accounted"), (silver, "quarantine_rate")}
        expected.add(
            (bronze, "source_rows_in_bronze" if contract.is_database else "lines_in_bronze_or_quarantine")
        )
        if contract.is_database:
            expected.add((silver, "keys_in_source"))
        if any(c.allowed_values or c.range for c in columns):
            expected |= {(bronze, "valid_values"), (silver, "valid_values")}
        if any(c.references for c in columns):
            expected.add((silver, "references"))
        if contract.freshness:
            expected |= {(bronze, "freshness"), (silver, "freshness")}
        if contract.volume:
            expected |= {(bronze, "volume"), (silver, "volume")}
    for table in GOLD_TABLES:
        expected |= {(f"gold/{table.name}", "not_null"), (f"gold/{table.name}", "unique")}
    return expected | {
        ("gold/fct_orders", "orders_match_silver"),
        ("gold/daily_revenue", "revenue_matches_silver"),
    }


def test_every_contract_asset_has_its_checks_in_definitions() -> None:
    from lakehouse.definitions import defs

    contracts = shop_contracts()
    graph = defs.resolve_asset_graph()
    ours = {
        (key.asset_key.to_user_string(), key.name): graph.get_check_spec(key)
        for key in graph.asset_check_keys
        if key.asset_key.path[0] in ("bronze", "silver", "gold")
    }
    assert set(ours) == expected_checks(contracts)
    blocking = {key for key, spec in ours.items() if spec.blocking}
    for contract in contracts:
        assert {(f"silver/{contract.name}", "not_null"), (f"silver/{contract.name}", "unique")} <= blocking
        assert not any(
            key[0] == f"bronze/{contract.name}" and key[1] in ("not_null", "unique") for key in blocking
        )


def test_the_orders_contract_expresses_the_standard_suite() -> None:
    (orders,) = (contract for contract in shop_contracts() if contract.name == "orders")
    columns = orders.columns
    assert orders.primary_key == ["order_id"] and columns["order_id"].unique
    assert not columns["order_id"].nullable and not columns["customer_id"].nullable
    assert not columns["created_at"].nullable  # the order date
    assert (columns["total_amount"].range.min, columns["total_amount"].range.max) == (0, 1_000_000)
    assert set(columns["status"].allowed_values) == {
        "pending",
        "confirmed",
        "shipped",
        "delivered",
        "cancelled",
    }
    assert orders.freshness.column == "updated_at" and orders.freshness.error_after == timedelta(days=1)
    assert columns["customer_id"].references == "customers.customer_id"
    # The SLA: freshness 1 h, completeness >= 99.9 %, duplicate rate <= 0.01 %.
    assert orders.freshness.warn_after == timedelta(hours=1)
    assert (orders.sla.completeness, orders.sla.duplicate_rate) == (0.999, 0.0001)


@pytest.mark.slow
def test_every_check_passes_on_clean_demo_data(tmp_path: Path) -> None:
    clean = Lake(tmp_path, sqlite_source(tmp_path))
    clean.init(defect_rates=dict.fromkeys(DEFAULT_DEFECT_RATES, 0.0))
    for _ in range(2):  # the second run also has earlier row counts to compare volumes with
        result = clean.materialize()
        checked = {
            (e.asset_key.to_user_string(), e.check_name): e for e in result.get_asset_check_evaluations()
        }
        assert set(checked) == expected_checks(clean.contracts)
        failed = {key: e.metadata for key, e in checked.items() if not e.passed}
        assert failed == {}
        clean.advance()
    volume = evaluations(result, "silver", "orders")["volume"]
    assert 0 < values(volume, "change") < 0.5


def test_bronze_checks_warn_with_exactly_the_defects_the_demo_planted(
    lake: Lake, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Row rules validate slices of 1,000 rows here, so the planted rows fall in many slices.
    monkeypatch.setattr(rules, "SLICE_ROWS", 1_000)
    result = lake.materialize()
    assert result.success  # bronze checks warn: bronze keeps what arrived, silver quarantines it
    defects = lake.manifest.defects
    events = evaluations(result, "bronze", "events")
    assert values(events["not_null"], "failing_rows") == defects["missing_event_id"]
    assert values(events["unique"], "failing_rows") == defects["duplicate_event"]
    assert values(events["valid_values"], "failing_rows") == defects["unknown_event_type"]
    assert all(events[name].severity == dg.AssetCheckSeverity.WARN for name in ("not_null", "unique"))

    orders = evaluations(result, "bronze", "orders")["valid_values"]
    assert values(orders, "failing_rows") == defects["negative_amount"] + defects["unknown_status"]
    planted = lake.source_rows("orders").filter(
        (pl.col("total_amount").cast(pl.Float64) < 0)
        | ~pl.col("status").is_in(["pending", "confirmed", "shipped", "delivered", "cancelled"])
    )
    assert set(sample_column(orders, "order_id")) <= {str(i) for i in planted["order_id"]}

    items = evaluations(result, "silver", "order_items")["references"]
    unknown_products = lake.source_rows("order_items").join(
        lake.source_rows("products").select("product_id"), on="product_id", how="anti"
    )
    assert unknown_products.height == defects["orphan_order_item"]
    failures = records(items, "failures_by_check")
    orphans = defects["orphan_order_item"]
    assert {"column": "product_id", "check": "exists in products.product_id", "rows": orphans} in failures

    # Silver's account of the bronze rows it consumed matches what the tables hold.
    for name in ("orders", "events"):
        accounted = {
            measure: values(evaluations(result, "silver", name)["bronze_rows_accounted"], f"rows_{measure}")
            for measure in ("consumed", "merged", "collapsed", "quarantined", "missing")
        }
        assert accounted["consumed"] == lake.table("bronze", name).height
        assert accounted["merged"] == lake.table("silver", name).height
        assert accounted["quarantined"] == lake.table("quarantine", name).height > 0
        assert (
            accounted["consumed"] == accounted["merged"] + accounted["collapsed"] + accounted["quarantined"]
        )
        assert accounted["missing"] == 0


def test_failing_silver_checks_show_exactly_the_planted_rows(loaded_lake: Lake) -> None:
    orders = loaded_lake.table("silver", "orders")
    duplicate = orders.filter(pl.col("order_id") == orders.get_column("order_id")[5])
    nulled = orders.slice(7, 1).with_columns(
        customer_id=pl.lit(None, dtype=pl.Int64), order_id=pl.lit(10**9, dtype=pl.Int64)
    )
    lost = orders.slice(9, 1).with_columns(status=pl.lit("lost"), order_id=pl.lit(10**9 + 1, dtype=pl.Int64))
    stranger = orders.slice(11, 1).with_columns(
        customer_id=pl.lit(10**8, dtype=pl.Int64), order_id=pl.lit(10**9 + 2, dtype=pl.Int64)
    )
    plant(loaded_lake, pl.concat([duplicate, nulled, lost, stranger]))

    result = loaded_lake.materialize(checks_of(ORDERS), raise_on_error=False)

    checks = evaluations(result, "silver", "orders")
    assert {name: check.passed for name, check in checks.items() if name != "volume"} == {
        "not_null": False, "unique": False, "valid_values": False, "references": False,
        "freshness": True, "bronze_rows_accounted": False, "quarantine_rate": True, "keys_in_source": False,
    }  # fmt: skip
    assert values(checks["unique"], "failing_rows") == 1
    assert sample_column(checks["unique"], "order_id") == [str(duplicate["order_id"][0])]
    assert sample_column(checks["not_null"], "order_id") == [str(10**9)]
    assert sample_column(checks["valid_values"], "status") == ["lost"]
    assert values(checks["valid_values"], "failure_rate") == round(1 / (orders.height + 4), 6)
    assert sample_column(checks["references"], "customer_id") == [str(10**8)]
    # Rows no bronze row explains are named too.
    accounted = checks["bronze_rows_accounted"]
    assert values(accounted, "silver_rows_without_bronze") == 3 and values(accounted, "rows_missing") == 0
    # ... and the source does not hold them either.
    assert sorted(map(int, sample_column(checks["keys_in_source"], "order_id"))) == [
        10**9,
        10**9 + 1,
        10**9 + 2,
    ]


def test_bronze_reconciliation_and_gold_key_checks_name_the_planted_rows(
    loaded_lake: Lake, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The source is compared in chunks of 1,000 orders: a row lost in the third, a duplicate of
    # the last row of the first, and one of a row the source does not hold, after the last.
    monkeypatch.setattr(database, "CHUNK_ROWS", 1_000)
    bronze = loaded_lake.table("bronze", "orders").sort("order_id")
    lost_id = bronze.get_column("order_id")[2_500]
    delta.open_table(loaded_lake.uri("bronze", "orders")).delete(f"order_id = {lost_id}")
    stranger = bronze.slice(0, 1).with_columns(order_id=pl.lit(10**9, pl.Int64))
    delta.write(loaded_lake.uri("bronze", "orders"), pl.concat([bronze.slice(999, 1), stranger, stranger]))
    events = loaded_lake.table("bronze", "events")
    file, line = events.get_column("_source_file")[3], events.get_column("_line_number")[3]
    delta.open_table(loaded_lake.uri("bronze", "events")).delete(
        f"_source_file = '{file}' AND _line_number = {line}"
    )
    facts = loaded_lake.table("gold", "fct_orders")
    copied = facts.slice(20, 1)
    nameless = facts.slice(30, 1).with_columns(order_id=pl.lit(None, pl.Int64))
    delta.write(loaded_lake.uri("gold", "fct_orders"), pl.concat([copied, nameless]))

    result = loaded_lake.materialize(
        checks_of(
            dg.AssetKey(["bronze", "orders"]),
            dg.AssetKey(["bronze", "events"]),
            dg.AssetKey(["gold", "fct_orders"]),
        ),
        raise_on_error=False,
    )

    source_rows = evaluations(result, "bronze", "orders")["source_rows_in_bronze"]
    assert (
        not source_rows.passed
        and values(source_rows, "missing_rows") == bronze.filter(pl.col("order_id") == lost_id).height
    )
    assert values(source_rows, "duplicated_rows") == 4
    assert set(sample_column(source_rows, "order_id")) == {
        str(lost_id),
        str(bronze["order_id"][999]),
        str(10**9),
    }
    lines = evaluations(result, "bronze", "events")["lines_in_bronze_or_quarantine"]
    assert not lines.passed and sample_column(lines, "_source_file") == [file]
    gold = evaluations(result, "gold", "fct_orders")
    assert sample_column(gold["unique"], "order_id") == [str(copied["order_id"][0])]
    assert values(gold["not_null"], "failing_rows") == 1 and sample_column(gold["not_null"], "order_id") == [
        "None"
    ]


def test_a_blocking_failure_stops_gold_and_dbt_until_the_data_is_fixed(loaded_lake: Lake) -> None:
    env = {"LAKEHOUSE_WAREHOUSE": str(loaded_lake.warehouse), "LAKEHOUSE_PII_SALT": TEST_SALT}
    materialize = ["dagster", "asset", "materialize", "-m", "lakehouse.definitions", "--select", "*"]
    orders = loaded_lake.table("silver", "orders")
    duplicate_id = orders.get_column("order_id")[3]
    plant(
        loaded_lake,
        orders.filter(pl.col("order_id") == duplicate_id).with_columns(
            _loaded_at=pl.lit(None, UTC_TIMESTAMP)
        ),
    )
    fct_before = delta.open_table(loaded_lake.uri("gold", "fct_orders")).version()

    blocked = run_command(materialize, loaded_lake.folder, **env)

    assert blocked.returncode != 0
    output = blocked.stdout + blocked.stderr
    assert "Asset check 'unique' on 'silver/orders' did not pass" in output
    assert delta.open_table(loaded_lake.uri("gold", "fct_orders")).version() == fct_before
    assert not loaded_lake.warehouse.exists()  # dbt did not build

    delta.open_table(loaded_lake.uri("silver", "orders")).delete(
        f"order_id = {duplicate_id} AND _loaded_at IS NULL"
    )
    fixed = run_command(materialize, loaded_lake.folder, **env)

    assert fixed.returncode == 0, fixed.stderr[-3000:]
    assert loaded_lake.warehouse.exists()


def test_a_check_that_passed_on_the_same_tables_is_reported_again_and_a_change_is_caught(
    lake: Lake, monkeypatch: pytest.MonkeyPatch
) -> None:
    written_a_while_ago(lake.source.sqlite_path)
    first = lake.materialize()
    again = lake.materialize()  # nothing new: no table changed, nor the source

    checked, reported = (evaluations(run, "silver", "orders")["unique"] for run in (first, again))
    assert reported.passed and values(reported, "reused_from_run") == first.run_id
    assert values(reported, "rows_checked") == values(checked, "rows_checked")
    # A failure on the same tables is the same failure: the demo's planted orphans.
    orphans = evaluations(again, "silver", "order_items")["references"]
    assert not orphans.passed and values(orphans, "reused_from_run") == first.run_id
    # So are the comparisons with a source that has not changed; checks that read the clock run.
    for layer, check in (("bronze", "source_rows_in_bronze"), ("silver", "keys_in_source")):
        assert values(evaluations(again, layer, "orders")[check], "reused_from_run") == first.run_id
    assert "reused_from_run" not in evaluations(again, "silver", "orders")["freshness"].metadata
    monkeypatch.setenv("LAKEHOUSE_REUSE_CHECK_PASSES", "false")
    audited = evaluations(lake.materialize(checks_of(ORDERS)), "silver", "orders")["unique"]
    assert audited.passed and "reused_from_run" not in audited.metadata
    monkeypatch.delenv("LAKEHOUSE_REUSE_CHECK_PASSES")

    orders = lake.table("silver", "orders")
    plant(lake, orders.filter(pl.col("order_id") == orders.get_column("order_id")[0]))
    result = lake.materialize(checks_of(ORDERS), raise_on_error=False)
    caught = evaluations(result, "silver", "orders")["unique"]

    assert not caught.passed and "reused_from_run" not in caught.metadata
    assert values(caught, "failing_rows") == 1


def test_freshness_warns_then_errors_as_the_clock_moves(loaded_lake: Lake) -> None:
    newest = loaded_lake.table("silver", "orders").get_column("updated_at").max()
    freshness = dg.AssetSelection.checks(dg.AssetCheckKey(ORDERS, "freshness"))

    seen = []
    for hours in (0.5, 2, 25):  # the contract: WARN after 1 h, ERROR after 1 day
        loaded_lake.clock = newest + timedelta(hours=hours)
        check = evaluations(loaded_lake.materialize(freshness), "silver", "orders")["freshness"]
        seen.append((check.passed, check.severity, values(check, "age_hours")))

    assert seen == [
        (True, dg.AssetCheckSeverity.ERROR, 0.5),
        (False, dg.AssetCheckSeverity.WARN, 2.0),
        (False, dg.AssetCheckSeverity.ERROR, 25.0),
    ]


def test_a_row_count_outside_the_contract_band_warns(lake: Lake) -> None:
    lake.materialize()  # the count the check compares with, in the instance
    delta.open_table(lake.uri("silver", "orders")).delete("order_id % 2 = 0")  # a bad manual fix

    result = lake.materialize(
        dg.AssetSelection.assets(["bronze", "orders"], ORDERS, ["quarantine", "orders"]), raise_on_error=False
    )

    volume = evaluations(result, "silver", "orders")["volume"]
    assert not volume.passed and volume.severity == dg.AssetCheckSeverity.WARN
    assert -0.51 < values(volume, "change") < -0.49


def test_reconciliation_names_wrong_gold_periods_and_lost_silver_rows(loaded_lake: Lake) -> None:
    revenue = loaded_lake.table("gold", "daily_revenue")
    day = revenue.get_column("order_date")[0]
    delta.open_table(loaded_lake.uri("gold", "daily_revenue")).update(
        predicate=f"order_date = '{day}'", updates={"gross_revenue": "gross_revenue + 1"}
    )
    gold = loaded_lake.materialize(checks_of(dg.AssetKey(["gold", "daily_revenue"])), raise_on_error=False)

    daily = evaluations(gold, "gold", "daily_revenue")["revenue_matches_silver"]
    assert not daily.passed and sample_column(daily, "order_date") == [str(day)]
    changed_rows = revenue.filter(pl.col("order_date") == day).height
    difference = values(daily, "gold_gross_revenue") - values(daily, "silver_gross_revenue")
    assert difference == pytest.approx(changed_rows)

    lost_id = loaded_lake.table("silver", "orders").get_column("order_id")[0]
    delta.open_table(loaded_lake.uri("silver", "orders")).delete(f"order_id = {lost_id}")
    lost = loaded_lake.materialize(
        checks_of(ORDERS, dg.AssetKey(["gold", "fct_orders"])), raise_on_error=False
    )

    accounted = evaluations(lost, "silver", "orders")["bronze_rows_accounted"]
    assert not accounted.passed and values(accounted, "rows_missing") == 1
    assert sample_column(accounted, "order_id") == [str(lost_id)]
    # fct_orders still holds the order silver lost: its month no longer matches.
    assert not evaluations(lost, "gold", "fct_orders")["orders_match_silver"].passed


def test_after_a_pass_revenue_is_compared_on_the_days_silver_or_gold_changed(loaded_lake: Lake) -> None:
    daily_revenue = checks_of(dg.AssetKey(["gold", "daily_revenue"]))
    first = evaluations(loaded_lake.materialize(daily_revenue), "gold", "daily_revenue")[
        "revenue_matches_silver"
    ]
    assert first.passed and values(first, "scope") == "every day"

    items = loaded_lake.table("silver", "order_items").with_columns(day=pl.col("created_at").dt.date())
    orders = loaded_lake.table("silver", "orders")
    # Behind gold's back: an order cancelled in silver (its lines unchanged), a line of another
    # day whose quantity changed, and gold's revenue of a third day.
    open_order = orders.filter(pl.col("status") != "cancelled").join(items, on="order_id", how="semi")
    order_id = open_order.get_column("order_id")[0]
    cancelled_days = set(items.filter(pl.col("order_id") == order_id).get_column("day"))
    line = items.filter(~pl.col("day").is_in(cancelled_days) & (pl.col("quantity") < 100)).row(0, named=True)
    gold_day = next(
        day
        for day in loaded_lake.table("gold", "daily_revenue").get_column("order_date").unique().sort()
        if day not in cancelled_days and day != line["day"]
    )
    delta.open_table(loaded_lake.uri("silver", "orders")).update(
        predicate=f"order_id = {order_id}", updates={"status": "'cancelled'"}
    )
    delta.open_table(loaded_lake.uri("silver", "order_items")).update(
        predicate=f"order_item_id = {line['order_item_id']}", updates={"quantity": "quantity + 1"}
    )
    delta.open_table(loaded_lake.uri("gold", "daily_revenue")).update(
        predicate=f"order_date = '{gold_day}'", updates={"gross_revenue": "gross_revenue + 1"}
    )

    result = loaded_lake.materialize(daily_revenue, raise_on_error=False)

    check = evaluations(result, "gold", "daily_revenue")["revenue_matches_silver"]
    changed = sorted({*cancelled_days, line["day"], gold_day})
    assert not check.passed
    assert values(check, "scope").startswith("the days changed since gold version")
    assert values(check, "periods_checked") == len(changed) < values(first, "periods_checked")
    assert sample_column(check, "order_date") == [str(day) for day in changed]


def report(lake: Lake, *args: str) -> tuple[int, str]:
    done = run_command(
        ["lakehouse", "quality", "report", "--now", lake.clock.isoformat(), *args], lake.folder
    )
    return done.returncode, done.stdout + done.stderr


def test_quality_report_passes_clean_tables_and_fails_each_broken_sla(loaded_lake: Lake) -> None:
    code, text = report(loaded_lake, "--format", "json")
    assert code == 0, text
    clean = json.loads(text)
    assert clean["status"] == "pass"
    orders = next(t for t in clean["tables"] if t["table"] == "silver/orders")
    assert orders["row_count"]["value"] == loaded_lake.table("silver", "orders").height
    assert orders["duplicates"] == {
        "key": ["order_id"], "count": 0, "rate": 0.0, "limit_rate": 0.0001, "status": "pass"
    }  # fmt: skip
    assert {c["column"] for c in orders["columns"]} == set(loaded_lake.contract("orders").columns)

    # Two duplicate keys in ~10,000 rows are above the orders SLA's 0.01 %.
    silver = loaded_lake.table("silver", "orders")
    plant(loaded_lake, silver.slice(0, 2))
    code, text = report(loaded_lake, "--table", "orders")
    assert code == 1
    assert f"| silver/orders | fail | {silver.height + 2:,} |" in text
    assert f"2 ({2 / (silver.height + 2):.4%} / 0.0100%, fail)" in text

    # Nulls in a non-nullable column beyond 0.1 % fail completeness; staleness fails freshness.
    nulls = silver.slice(100, 20).with_columns(
        order_id=pl.int_range(10**9, 10**9 + 20), currency=pl.lit(None, pl.String)
    )
    plant(loaded_lake, nulls)
    loaded_lake.clock += timedelta(hours=2)
    code, text = report(loaded_lake, "--table", "orders", "--format", "json")
    orders = json.loads(text)["tables"][0]
    columns = {c["column"]: c for c in orders["columns"]}
    assert code == 1 and columns["currency"]["status"] == "fail" and columns["status"]["status"] == "pass"
    assert orders["freshness"]["status"] == "fail" and orders["freshness"]["hours"] > 2


def test_quality_report_names_the_tables_it_knows(lake: Lake) -> None:
    code, text = report(lake, "--table", "suppliers")
    assert code == 2
    assert "no contract for table 'suppliers'" in text and "orders" in text
    code, text = report(lake)
    assert code == 1 and "the table does not exist" in text


def test_a_load_that_quarantines_most_of_its_rows_fails_naming_its_reasons(tmp_path: Path) -> None:
    library = Library(tmp_path, dg.DagsterInstance.ephemeral())
    library.create()
    library.add("members", [(1, "Ada"), (2, "Grace")])
    library.add("loans", [(loan, 1 + loan % 2, "open") for loan in range(1, 11)])
    first = library.materialize()
    assert first.success
    rate = evaluations(first, "silver", "loans")["quarantine_rate"]
    assert rate.passed and (values(rate, "rows_consumed"), values(rate, "rows_quarantined")) == (10, 0)

    # The next batch: 8 of its 10 loans have a status the contract does not know.
    library.add(
        "loans", [(loan, 1, "lost") for loan in range(11, 19)] + [(19, 2, "open"), (20, 2, "returned")]
    )
    bad = library.materialize()
    assert not bad.success
    rate = evaluations(bad, "silver", "loans")["quarantine_rate"]
    assert not rate.passed and rate.severity == dg.AssetCheckSeverity.ERROR
    # Judged on this load's rows, not on all 20 in bronze.
    assert (values(rate, "rows_consumed"), values(rate, "rows_quarantined")) == (10, 8)
    assert values(rate, "quarantine_rate") == 0.8
    assert rate.description is not None
    assert "8 of the 10 bronze rows of the last load (80.0%)" in rate.description
    assert "sla.max_quarantine_rate 0.2" in rate.description
    assert rate.description.endswith("commonest reasons: status not in allowed values (8)")
    assert records(rate, "reasons") == [{"reason": "status not in allowed values", "rows": 8}]
    assert sorted(row["loan_id"] for row in records(rate, "sample")) == list(range(11, 19))
    assert library.table("silver", "loans").height == 12

    # A run that consumes nothing judges the same load again: still failing.
    again = evaluations(library.materialize(), "silver", "loans")["quarantine_rate"]
    assert not again.passed and values(again, "rows_consumed") == 10

    # A good batch passes, judged on its own rows: over all of bronze, 8 of 30 is above 0.2.
    library.add("loans", [(loan, 2, "returned") for loan in range(21, 31)])
    fixed = library.materialize()
    assert fixed.success
    rate = evaluations(fixed, "silver", "loans")["quarantine_rate"]
    assert rate.passed and (values(rate, "rows_consumed"), values(rate, "rows_quarantined")) == (10, 0)


def test_silver_left_empty_by_a_bronze_with_rows_fails_whatever_the_rate_allows(tmp_path: Path) -> None:
    library = Library(tmp_path, dg.DagsterInstance.ephemeral())
    library.create(loans_sla="sla: {max_quarantine_rate: 1.0}\n")
    library.add("members", [(1, "Ada")])
    library.add("loans", [(1, 1, "lost"), (2, 1, "stolen"), (3, 1, "lost")])
    result = library.materialize()
    assert not result.success
    rate = evaluations(result, "silver", "loans")["quarantine_rate"]
    assert not rate.passed and values(rate, "quarantine_rate") == 1.0
    assert rate.description == (
        "silver/loans is empty while bronze holds 3 rows; commonest reasons: status not in allowed values (3)"
    )
    assert evaluations(result, "silver", "members")["quarantine_rate"].passed


def silver_commits(uri: str, commits: list[tuple[str, str | None] | None]) -> delta.DeltaTable:
    """A table whose commits carry the bronze versions (after, before) a load consumed; None: a
    commit of no load (orphans resolved, maintenance); a None before: written before commits
    named where their load started."""
    for commit in commits:
        metadata = {} if commit is None else {BRONZE_VERSION: commit[0]}
        if commit is not None and commit[1] is not None:
            metadata[BRONZE_VERSION_BEFORE] = commit[1]
        delta.write(uri, pl.DataFrame({"member_id": [1]}), metadata=metadata)
    return delta.DeltaTable(uri)


@pytest.mark.parametrize(
    ("commits", "started_from"),
    [
        ([("3", ""), ("5", "3"), None, ("9", "5")], 5),
        ([("3", None), ("5", None), None, ("9", None)], 5),  # a lake loaded by an earlier version
        ([("3", ""), ("3", "")], None),  # a first load in two slices: all of bronze up to 3
        ([("3", None), ("3", None), None], None),
    ],
)
def test_the_load_judged_starts_where_silver_s_commit_says_or_at_the_previous_load(
    tmp_path: Path, commits: list[tuple[str, str | None] | None], started_from: int | None
) -> None:
    silver = silver_commits(str(tmp_path / "silver"), commits)
    position = max(int(commit[0]) for commit in commits if commit is not None)
    assert load_started_from(silver, position) == started_from


def test_freshness_of_landed_rows_reads_only_the_files_bronze_gained_since(loaded_lake: Lake) -> None:
    events = dg.AssetKey(["bronze", "events"])
    freshness = dg.AssetSelection.checks(dg.AssetCheckKey(events, "freshness"))
    uri = loaded_lake.uri("bronze", "events")
    first = evaluations(loaded_lake.materialize(freshness), "bronze", "events")["freshness"]
    newest = datetime.fromisoformat(str(values(first, "newest")))

    # A later event lands: its file alone tells the check the new newest value.
    later = newest + timedelta(hours=3)
    row = (
        pl.read_delta(uri)
        .head(1)
        .with_columns(
            timestamp=pl.lit(later.strftime("%Y-%m-%dT%H:%M:%S.") + f"{later.microsecond // 1000:03d}Z")
        )
    )
    delta.write(uri, row)
    loaded_lake.clock = later + timedelta(minutes=30)
    landed = evaluations(loaded_lake.materialize(freshness), "bronze", "events")["freshness"]
    assert landed.passed and values(landed, "age_hours") == 0.5

    # Deleted again: bronze no longer only gained rows, so every row is read.
    delta.open_table(uri).delete(f"timestamp = '{row.get_column('timestamp')[0]}'")
    again = evaluations(loaded_lake.materialize(freshness), "bronze", "events")["freshness"]
    assert datetime.fromisoformat(str(values(again, "newest"))) == newest
