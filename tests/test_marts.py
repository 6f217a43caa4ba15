"""dbt marts over the gold Delta tables: one lineage graph, tested, consistent with gold."""

import importlib.util
import inspect
import json
import shutil
import sqlite3
import subprocess
import sys
from datetime import timedelta
from functools import cached_property
from pathlib import Path

import dagster as dg
import duckdb
import polars as pl
import pytest
import yaml
from conftest import BuiltDemo, Lake, assert_marts_in_the_lake_equal_the_warehouse, dbt_outcomes
from dagster_dbt import DbtCliResource
from deltalake import DeltaTable

from lakehouse.definitions import defs
from lakehouse.marts import MODEL_GROUPS
from lakehouse.marts.assets import DBT_EXECUTABLE, DbtCli, dbt_models, dbt_project
from lakehouse.storage import delta

MARTS = (
    "mart_sales_daily",
    "mart_customer_ltv",
    "mart_product_performance",
    "mart_event_funnel",
    "mart_order_status",
)


def warehouse_table(lake: Lake, name: str) -> pl.DataFrame:
    with duckdb.connect(str(lake.warehouse), read_only=True) as connection:
        return connection.sql(f"select * from main.{name}").pl()


def warehouse_types(lake: Lake, name: str) -> dict[str, str]:
    with duckdb.connect(str(lake.warehouse), read_only=True) as connection:
        return {column: dtype for column, dtype, *_ in connection.sql(f"describe main.{name}").fetchall()}


def test_every_materialisation_reports_rows_duration_and_bytes(built_demo: BuiltDemo) -> None:
    result = built_demo.result
    materialised = result.get_asset_materialization_events()
    assert {event.asset_key for event in materialised} == defs.resolve_asset_graph().get_all_asset_keys()
    for event in materialised:
        metadata = event.materialization.metadata
        name = event.asset_key.to_user_string()
        assert metadata["dagster/row_count"].value >= 0, name
        assert metadata["duration_seconds"].value >= 0, name
        # Delta tables, the marts' copies too; the other models live in DuckDB alone.
        if event.asset_key.path[0] not in ("staging", "intermediate"):
            stored = metadata["delta_bytes"].value > 0 and metadata["delta_files"].value > 0
            assert stored == (metadata["dagster/row_count"].value > 0), name
            assert not stored or metadata["delta_version"].value >= 0, name


def test_marts_agree_with_gold(built_demo: BuiltDemo) -> None:
    lake = built_demo.original
    revenue = lake.table("gold", "daily_revenue")
    orders = lake.table("gold", "fct_orders")
    sales = warehouse_table(lake, "mart_sales_daily")

    assert sales.get_column("gross_revenue").sum() == revenue.get_column("gross_revenue").sum()
    assert sales.get_column("cancelled_revenue").sum() == revenue.get_column("cancelled_revenue").sum()
    assert sales.get_column("units").sum() == revenue.get_column("items").sum()
    assert sales.get_column("orders").sum() == orders.height

    paid = orders.filter(~pl.col("is_cancelled"))
    ltv = warehouse_table(lake, "mart_customer_ltv")
    assert ltv.get_column("lifetime_value").sum() == paid.get_column("total_amount").sum()
    assert ltv.height == orders.get_column("customer_id").n_unique()
    # Quintiles of equal size whose ties are split by customer_id: a rebuild scores alike.
    for score, measure in (
        ("recency_score", "last_order_at"),
        ("frequency_score", "orders"),
        ("monetary_score", "lifetime_value"),
    ):
        ranked = ltv.sort(measure, "customer_id").get_column(score)
        assert ranked.diff().drop_nulls().is_in([0, 1]).all(), score
        sizes = ranked.value_counts().get_column("count")
        assert ranked.n_unique() == 5 and sizes.max() - sizes.min() <= 1, score

    known = revenue.filter(pl.col("category") != "unknown").get_column("gross_revenue").sum()
    assert warehouse_table(lake, "mart_product_performance").get_column("revenue").sum() == known
    funnel = warehouse_table(lake, "mart_event_funnel").sort("event_date")
    assert funnel.get_column("purchasers").to_list() == (
        lake.table("gold", "funnel_daily").sort("event_date").get_column("purchasers").to_list()
    )


def test_each_mart_is_in_the_lake_as_a_delta_table_equal_to_the_warehouses(built_demo: BuiltDemo) -> None:
    lake, result = built_demo.original, built_demo.result
    assert assert_marts_in_the_lake_equal_the_warehouse(lake, lake.warehouse) == sorted(MARTS)
    for name in MARTS:
        (event,) = (
            m for m in result.asset_materializations_for_node("dbt_models") if m.asset_key.path[-1] == name
        )
        table = delta.load_table(lake.uri("marts", name))
        assert event.metadata["dagster/uri"].value == table.table_uri
        assert event.metadata["delta_version"].value == table.version()


def test_dbt_tests_are_asset_checks_models_report_rows_and_schema_and_columns_are_documented(
    built_demo: BuiltDemo,
) -> None:
    lake, result = built_demo.original, built_demo.result
    checks = {
        (e.asset_key.path[-1], e.check_name): e.passed
        for e in result.get_asset_check_evaluations()
        if e.asset_key.path[0] in MODEL_GROUPS
    }
    assert checks[
        ("stg_orders", "accepted_values_stg_orders_status__pending__confirmed__shipped__delivered__cancelled")
    ]
    assert checks[("mart_sales_daily", "non_negative_mart_sales_daily_gross_revenue")]
    assert checks[
        ("mart_customer_ltv", "relationships_mart_customer_ltv_customer_id__customer_id__ref_stg_customers_")
    ]
    assert all(checks.values()), [name for name, passed in checks.items() if not passed]

    for yml in sorted((dbt_project.project_dir / "models").rglob("*.yml")):
        for model in yaml.safe_load(yml.read_text()).get("models", []):
            columns = {column["name"]: column for column in model["columns"]}
            built_types = warehouse_types(lake, model["name"])
            assert list(columns) == list(built_types), f"{yml.name} is out of date"
            bare = [name for name, column in columns.items() if not column.get("description")]
            untested = [name for name, column in columns.items() if not column.get("data_tests")]
            assert not bare and not untested, f"{yml.name}: undocumented {bare}, untested {untested}"
            if model["name"] in MARTS:
                assert model["config"]["contract"] == {"enforced": True}, yml.name
                declared = {name: column["data_type"].upper() for name, column in columns.items()}
                assert declared == built_types, yml.name

    for name in MARTS:
        metadata = next(
            m.metadata
            for m in result.asset_materializations_for_node("dbt_models")
            if m.asset_key.path == ["marts", name]
        )
        assert metadata["dagster/row_count"].value == warehouse_table(lake, name).height
        columns = [column.name for column in metadata["dagster/column_schema"].value.columns]
        assert columns == warehouse_table(lake, name).columns


def test_the_marts_unit_tests_pass_in_each_build_and_are_no_asset_checks(built_demo: BuiltDemo) -> None:
    """The first build of the models runs their unit tests before it builds them; dagster-dbt
    reports data tests as asset checks and leaves unit tests to dbt, whose failure fails the step."""
    manifest = json.loads(dbt_project.manifest_path.read_text())
    unit_tests = {unique_id: test["model"] for unique_id, test in manifest["unit_tests"].items()}
    assert set(unit_tests.values()) == {*MARTS, "int_product_sales_daily"}

    outcomes = built_demo.dbt_outcomes
    assert {unique_id: outcomes.get(unique_id) for unique_id in unit_tests} == dict.fromkeys(
        unit_tests, "pass"
    )
    names = {unique_id.split(".")[-1] for unique_id in unit_tests}
    assert not names & {spec.name for spec in dbt_models.check_specs}


@pytest.mark.slow
def test_dbt_has_its_own_environment_with_the_lakehouses_duckdb() -> None:
    """dbt-core stays out of the definitions' environment (dagster-dbt would import it on every
    load); dbt's DuckDB is the one that reads the warehouse back, and its dbt wrote the manifest."""
    assert importlib.util.find_spec("dbt.version") is None
    dbt_python = str(Path(DBT_EXECUTABLE).with_name("python"))
    versions = subprocess.run(
        [dbt_python, "-c", "import dbt.version, duckdb; print(dbt.version.__version__, duckdb.__version__)"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    manifest = json.loads(dbt_project.manifest_path.read_text())
    assert versions == [manifest["metadata"]["dbt_version"], duckdb.__version__]


def test_the_private_dagster_dbt_members_dbtcli_overrides_are_still_there() -> None:
    """`DbtCli` (lakehouse/marts/assets.py) overrides two private members of dagster-dbt's
    `DbtCliResource`, for want of a public way to skip what they do before every dbt invocation.
    A dagster-dbt that renames, reshapes or stops calling either would bring that cost back
    without a word: this test is that word."""
    upstream = "the installed dagster-dbt's DbtCliResource"
    version = inspect.getattr_static(DbtCliResource, "_cli_version", None)
    assert isinstance(version, cached_property), (
        f"{upstream}._cli_version is gone or no longer a cached_property: "
        "DbtCli._cli_version in lakehouse/marts/assets.py no longer replaces it"
    )
    adapter = inspect.getattr_static(DbtCliResource, "_initialize_dbt_core_adapter", None)
    assert inspect.isfunction(adapter), (
        f"{upstream}._initialize_dbt_core_adapter is gone: "
        "DbtCli._initialize_dbt_core_adapter in lakehouse/marts/assets.py no longer replaces it"
    )
    assert (
        inspect.signature(adapter).parameters.keys()
        == inspect.signature(DbtCli._initialize_dbt_core_adapter).parameters.keys()
    ), (
        f"{upstream}._initialize_dbt_core_adapter{inspect.signature(adapter)} changed its signature: "
        "update DbtCli._initialize_dbt_core_adapter in lakehouse/marts/assets.py"
    )
    invocation = inspect.getsource(DbtCliResource.cli)
    for used in ("self._cli_version", "self._initialize_dbt_core_adapter("):
        assert used in invocation, (
            f"{upstream}.cli no longer uses {used.removesuffix('(')}: check what it does before a dbt "
            "invocation now, and what DbtCli in lakehouse/marts/assets.py must override instead"
        )


def test_the_incremental_model_takes_late_updates_and_deletes(tmp_path: Path, built_demo: BuiltDemo) -> None:
    lake = built_demo.copy(tmp_path)
    lake.materialize("*")  # the copy's instance records a build to start from
    old = (
        warehouse_table(lake, "mart_order_status")
        .filter(pl.col("status") == "delivered")
        .sort("order_date")
        .row(0, named=True)
    )
    late = (lake.clock + timedelta(minutes=1)).isoformat(sep=" ", timespec="microseconds")
    held = warehouse_table(lake, "mart_order_status")
    # The newest order's day, every order of which the shop deletes: that day sells nothing.
    erased_day = (
        held.filter(pl.col("order_id") == held.get_column("order_id").max()).get_column("order_date").item()
    )
    erased = held.filter(pl.col("order_date") == erased_day).get_column("order_id").to_list()
    with sqlite3.connect(lake.source.sqlite_path) as connection:  # a return booked weeks later
        connection.execute(
            "UPDATE orders SET status = 'cancelled', updated_at = ? WHERE order_id = ?",
            (late, old["order_id"]),
        )
        # ... and a day's orders the shop deleted with their lines.
        connection.executemany("DELETE FROM order_items WHERE order_id = ?", [(order,) for order in erased])
        connection.executemany("DELETE FROM orders WHERE order_id = ?", [(order,) for order in erased])

    lake.materialize("*")

    status = warehouse_table(lake, "mart_order_status").sort("order_id")
    row = status.filter(pl.col("order_id") == old["order_id"]).row(0, named=True)
    assert (row["status"], row["is_cancelled"]) == ("cancelled", True)
    expected = lake.table("gold", "fct_orders").select("order_id", "status").sort("order_id")
    assert status.select("order_id", "status").equals(expected)
    assert not set(erased) & set(status.get_column("order_id"))
    # dbt took the two days gold rebuilt, the late order's and the deleted ones', not the table.
    with duckdb.connect(str(lake.warehouse), read_only=True) as connection:
        rebuilt = connection.sql("select day from gold.rebuilt_days where table_name = 'fct_orders'")
        days = sorted(day for (day,) in rebuilt.fetchall())
    assert days == sorted({old["order_date"], erased_day})
    # The mart's copy in the lake had those two days replaced, and holds what the warehouse does.
    (replaced,) = delta.load_table(lake.uri("marts", "mart_order_status")).history(1)
    assert all(day.isoformat() in replaced["operationParameters"]["predicate"] for day in days)
    copied = lake.table("marts", "mart_order_status").select("order_id", "status", "order_date")
    assert copied.sort("order_id").equals(status.select("order_id", "status", "order_date"))
    # The products' sales were added up again from the days gold rebuilt in the order lines,
    # the day that sells nothing now taken out: the lines of orders not cancelled, as a build
    # from nothing counts them.
    sold = (
        lake.table("gold", "fct_order_items")
        .filter(pl.col("has_order") & (pl.col("status") != "cancelled"))
        .group_by("product_id")
        .agg(
            units_sold=pl.col("quantity").sum(),
            orders=pl.col("order_id").n_unique(),
            revenue=pl.col("line_amount").sum(),
        )
    )
    performance = warehouse_table(lake, "mart_product_performance")
    expected = sold.join(performance, on="product_id", how="semi").sort("product_id")
    counted = performance.filter(pl.col("units_sold") > 0).select(expected.columns).sort("product_id")
    assert counted.equals(expected.cast(dict(counted.schema)))
    assert erased_day not in warehouse_table(lake, "int_product_sales_daily").get_column("order_date")


READER = """
import sys, time, duckdb
from pathlib import Path
path, stop = sys.argv[1], Path(sys.argv[2])
reads = locked = 0
while not stop.exists():
    try:
        with duckdb.connect(path, read_only=True) as connection:
            connection.sql("select count(*) from information_schema.tables").fetchall()
        reads += 1
    except duckdb.IOException:
        locked += 1  # dbt holds the write lock for a moment; a short-lived reader tries again
    time.sleep(0.02)
print(reads, locked)
"""


def test_dbt_builds_while_another_process_reads_the_warehouse(loaded_lake: Lake) -> None:
    loaded_lake.materialize("*")  # the warehouse file exists from here on
    stop = loaded_lake.folder / "stop-reading"
    reader = subprocess.Popen(
        [sys.executable, "-c", READER, str(loaded_lake.warehouse), str(stop)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        loaded_lake.advance()
        result = loaded_lake.materialize("*")
    finally:  # a failed build must not leave the reader running
        stop.touch()
        output, _ = reader.communicate(timeout=30)

    assert result.success, "dbt failed while another process was reading the warehouse"
    reads, _locked = (int(count) for count in output.split())
    assert reader.returncode == 0 and reads > 0


def test_staging_models_alone_build_on_a_new_warehouse(loaded_lake: Lake) -> None:
    """What the UI's "Materialize selected" runs on the staging models: staging only.
    The marts' `relationships` tests on these models wait for their mart to be selected."""
    staging = dg.AssetSelection.assets(["staging", "stg_products"], ["staging", "stg_customers"])

    result = loaded_lake.materialize(staging, raise_on_error=False)

    assert result.success, "a test of a mart that does not exist yet ran with its staging parent"
    checked = {evaluation.asset_key.path[0] for evaluation in result.get_asset_check_evaluations()}
    assert checked == {"staging"}


def test_dbt_is_not_run_again_until_what_it_reads_changes(loaded_lake: Lake) -> None:
    # A build of its own: what dbt skips follows the runs in the lake's instance and the parse
    # state of its warehouse, which a copied lake has neither of.
    lake = loaded_lake
    lake.advance(batches=2)
    first = lake.materialize("*")
    (recorded,) = {
        event.metadata["built_from"].value for event in first.asset_materializations_for_node("dbt_models")
    }
    sources = {dep.asset_key for spec in dbt_models.specs for dep in spec.deps} - set(dbt_models.keys)
    assert all(f"{source.to_user_string()} v" in recorded for source in sources)
    sales = warehouse_table(lake, "mart_sales_daily")
    funnel = DeltaTable(lake.uri("gold", "funnel_daily"))

    unchanged = lake.materialize("*")

    assert unchanged.success
    assert not unchanged.asset_materializations_for_node("dbt_models"), "dbt rebuilt unchanged marts"
    assert DeltaTable(funnel.table_uri).version() == funnel.version(), "unchanged event days were rewritten"
    assert warehouse_table(lake, "mart_sales_daily").equals(sales)

    lake.warehouse.unlink()  # a lost warehouse is rebuilt though gold did not change
    rebuilt = lake.materialize("*")

    assert {event.asset_key for event in rebuilt.asset_materializations_for_node("dbt_models")} == set(
        dbt_models.keys
    )
    assert warehouse_table(lake, "mart_sales_daily").sort("order_date").equals(sales.sort("order_date"))
    # The first build's parse state is kept, so this one, with the same settings, parses nothing.
    (log,) = (dbt_project.project_dir / "target").glob(f"dbt_models-{rebuilt.run_id[:7]}-*/dbt.log")
    assert "Nothing changed, skipping partial parsing" in log.read_text()
    # The unit tests passed in the first build of this dbt project: their fixed rows would again.
    ran = dbt_outcomes(rebuilt.run_id)
    assert not [unique_id for unique_id in ran if unique_id.startswith("unit_test.")]
    assert ran["model.lakehouse.mart_sales_daily"] == "success"

    # A lake from before the marts were copied into it: the next run builds and copies them.
    shutil.rmtree(Path(lake.storage.root) / "marts")
    upgraded = lake.materialize("*")
    assert {event.asset_key for event in upgraded.asset_materializations_for_node("dbt_models")} == set(
        dbt_models.keys
    )
    assert len(assert_marts_in_the_lake_equal_the_warehouse(lake, lake.warehouse)) == len(MARTS)
