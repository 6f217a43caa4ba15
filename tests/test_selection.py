"""Picking what to build: every asset alone, the selections people use, and the `dg` command line.

One demo lake (scale 0.01) is built once for the module with a full run, as a user's lake is
after `make run`; each test then selects from it what a user would.
"""

import json
import sys
from pathlib import Path

import dagster as dg
import pytest
from conftest import TEST_SALT, BuiltDemo, Lake, run_command
from library import Library

from lakehouse.definitions import defs
from lakehouse.marts import MODEL_GROUPS

# Its tests share a module's built lake: under pytest-xdist one worker runs them all.
pytestmark = pytest.mark.xdist_group("test_selection")

ALL_KEYS = sorted(key.to_user_string() for key in defs.resolve_asset_graph().get_all_asset_keys())
# One key of each kind of step, through the real command line (the loop below covers the rest).
ONE_OF_EACH_KIND = [
    "bronze/orders",  # a database extract
    "bronze/events",  # a landing ingestion with its malformed-lines quarantine
    "silver/orders",  # a silver load, without its quarantine
    "quarantine/orders",  # the quarantine of a silver load, without silver
    "silver/customers_history",  # the SCD2 history of a silver load
    "gold/daily_revenue",
    "marts/mart_sales_daily",  # a dbt model
]
ORDERS_DOWNSTREAM = {
    "silver/orders",
    "silver/order_items",
    "gold/fct_orders",
    "gold/fct_order_items",
    "gold/daily_revenue",
    "staging/stg_orders",
    "staging/stg_order_items",
    "staging/stg_daily_revenue",
    "intermediate/int_product_sales_daily",
    "marts/mart_customer_ltv",
    "marts/mart_order_status",
    "marts/mart_product_performance",
    "marts/mart_sales_daily",
}
SALES_DAILY_UPSTREAM = {
    "marts/mart_sales_daily",
    "staging/stg_orders",
    "staging/stg_daily_revenue",
    "gold/fct_orders",
    "gold/daily_revenue",
    "silver/orders",
    "silver/order_items",
    "silver/customers",
    "silver/products",
    "bronze/orders",
    "bronze/order_items",
    "bronze/customers",
    "bronze/products",
}
SILVER_GROUP = {
    *(f"{layer}/{name}" for layer in ("silver", "quarantine") for name in
      ("customers", "products", "orders", "order_items", "events")),
    "silver/customers_history",
}  # fmt: skip
SELECTIONS = {
    "*": set(ALL_KEYS),
    "group:silver": SILVER_GROUP,
    # Every Delta table the Python steps write; the dbt models are DuckDB tables.
    "kind:deltalake": {
        key for key in ALL_KEYS if key.split("/")[0] in ("bronze", "silver", "quarantine", "gold")
    },
    "kind:dbt": {key for key in ALL_KEYS if key.split("/")[0] in MODEL_GROUPS},
    "tag:lakehouse/source=landing": {"bronze/events"},
    'key:"silver/orders"+': ORDERS_DOWNSTREAM,
    '+key:"marts/mart_sales_daily"': SALES_DAILY_UPSTREAM,
    "silver/orders,gold/fct_orders": {"silver/orders", "gold/fct_orders"},
    'owner:"team:analytics"': {key for key in ALL_KEYS if key.split("/")[0] in ("gold", *MODEL_GROUPS)},
}


def lake_environment(lake: Lake) -> dict[str, str]:
    """What a command needs beyond `run_command`'s defaults to act on the same lake as the
    in-process runs: its warehouse, its salt (the same hashed PII) and its alerts log."""
    return {
        "LAKEHOUSE_WAREHOUSE": str(lake.warehouse),
        "LAKEHOUSE_PII_SALT": TEST_SALT,
        "LAKEHOUSE_ALERTS": str(lake.folder / "alerts.jsonl"),
        # `dg` warns when the project's virtualenv is not the active one: it is, here.
        "VIRTUAL_ENV": str(Path(sys.executable).parent.parent),
    }


def materialize_alone(lake: Lake, key: str) -> dg.ExecuteInProcessResult:
    """One key of the project's `Definitions` alone, with its checks, as the UI's Materialize runs it."""
    return dg.materialize(
        [*defs.assets, *defs.asset_checks],
        selection=[key],
        resources=lake.resources,
        instance=lake.instance,
        raise_on_error=False,
    )


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, built_demo: BuiltDemo) -> Lake:
    """A copy of the built demo lake, for this module's tests to go on from."""
    return built_demo.copy(tmp_path_factory.mktemp("selection"))


def alone_in_turn() -> list[str]:
    """Every key, upstream first, but of the dbt models one per group: each alone is the same
    `dbt build --select <model>`, a dbt process of seconds."""
    graph = defs.resolve_asset_graph()
    keys, groups = [], set()
    for key in graph.toposorted_asset_keys:
        node = graph.get(key)
        if "dbt" in node.kinds:
            if node.group_name in groups:
                continue
            groups.add(node.group_name)
        keys.append(key.to_user_string())
    return keys


def test_every_asset_key_materialises_alone(built: Lake) -> None:
    # The keys come from the loaded Definitions: an asset added later is covered too. Upstream
    # first, after a new batch, so each step has new input to process (dbt, given unchanged
    # gold tables, would rightly not run at all).
    keys = alone_in_turn()
    assert len(ALL_KEYS) > 30 and {"staging", "marts"} <= {key.split("/")[0] for key in keys}
    built.advance()
    failed = {}
    for key in keys:
        result = materialize_alone(built, key)
        materialized = {
            event.asset_key.to_user_string() for event in result.get_asset_materialization_events()
        }
        if not result.success or materialized != {key}:
            failed[key] = materialized
    assert not failed, failed


@pytest.mark.parametrize("key", ONE_OF_EACH_KIND)
def test_one_asset_alone_from_the_command_line(built: Lake, key: str) -> None:
    done = run_command(
        ["dagster", "asset", "materialize", "-m", "lakehouse.definitions", "--select", key],
        built.folder,
        **lake_environment(built),
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    assert f"Materialized value {key.replace('/', ' ')}." in done.stderr


def test_a_silver_table_alone_still_writes_and_reports_its_quarantine(tmp_path: Path) -> None:
    library = Library(tmp_path, dg.DagsterInstance.ephemeral())
    library.create()
    library.add("members", [(1, "Ada"), (2, "Grace")])
    library.add("loans", [(loan, 1, "lost" if loan == 1 else "open") for loan in range(1, 11)])
    assert library.materialize(["bronze/members", "bronze/loans", "silver/members"]).success

    loans = library.materialize(["silver/loans"])
    assert loans.success
    (event,) = loans.get_asset_materialization_events()
    assert event.asset_key == dg.AssetKey(["silver", "loans"])
    assert event.materialization.metadata["rows_quarantined"].value == 1
    assert library.table("quarantine", "loans").height == 1
    assert library.table("silver", "loans").height == 9
    # The silver table's checks run with it, the blocking quarantine rate among them.
    checked = {evaluation.check_name for evaluation in loans.get_asset_check_evaluations()}
    assert "quarantine_rate" in checked

    # The quarantine alone runs the same load: the new rows reach silver too.
    library.add("loans", [(11, 2, "lost"), (12, 2, "open")])
    assert library.materialize(["bronze/loans"]).success
    quarantine = library.materialize(["quarantine/loans"])
    assert quarantine.success
    (event,) = quarantine.get_asset_materialization_events()
    assert event.asset_key == dg.AssetKey(["quarantine", "loans"])
    assert event.materialization.metadata["rows_quarantined"].value == 1
    assert library.table("quarantine", "loans").height == 2
    assert library.table("silver", "loans").height == 10


@pytest.mark.parametrize("selection", SELECTIONS)
def test_a_selection_resolves_to_the_assets_a_user_means(built: Lake, selection: str) -> None:
    done = run_command(
        ["dagster", "asset", "list", "-m", "lakehouse.definitions", "--select", selection],
        built.folder,
        **lake_environment(built),
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert set(done.stdout.split()) == SELECTIONS[selection]


def test_a_table_and_everything_downstream_from_the_command_line(built: Lake) -> None:
    done = run_command(
        """dagster asset materialize -m lakehouse.definitions --select 'key:"silver/orders"+'""",
        built.folder,
        **lake_environment(built),
    )
    assert done.returncode == 0, done.stderr[-3000:]
    for key in ORDERS_DOWNSTREAM:
        assert f"Materialized value {key.replace('/', ' ')}." in done.stderr, key


def test_dg_checks_and_lists_the_definitions(built: Lake) -> None:
    checked = run_command(["dg", "check", "defs"], built.folder, **lake_environment(built))
    assert checked.returncode == 0, checked.stderr[-3000:] + checked.stdout[-3000:]
    assert "All definitions loaded successfully" in checked.stdout + checked.stderr
    assert "does not match" not in checked.stderr  # the project's environment is the active one

    listed = run_command(["dg", "list", "defs", "--json"], built.folder, **lake_environment(built))
    assert listed.returncode == 0, listed.stderr[-3000:]
    found = json.loads(listed.stdout)
    assert {asset["asset_key"] for asset in found["assets"]} == set(ALL_KEYS)
    checks = {(check["asset_key"], check["name"]) for check in found["asset_checks"]}
    assert ("silver/orders", "quarantine_rate") in checks
    assert {job["name"] for job in found["jobs"]} >= {"ingest", "transform", "maintenance"}
    assert {schedule["name"] for schedule in found["schedules"]} >= {"ingest_hourly", "transform_daily"}
    assert found["sensors"]


def test_dg_launches_one_asset(built: Lake) -> None:
    done = run_command(
        ["dg", "launch", "--assets", "silver/products"], built.folder, **lake_environment(built)
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    assert "Materialized value silver products." in done.stderr
