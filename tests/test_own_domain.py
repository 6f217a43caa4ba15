"""A user's own contract set: the definitions hold exactly its bronze, silver and quarantine
assets and their checks (no shop gold tables, no dbt models, no stand-ins for the shop's silver
tables), and the plain `dagster asset materialize --select '*'` builds it. The shop's business
layer attaches as far as the contracts feed it."""

import json
import shutil
from pathlib import Path

import dagster as dg
from conftest import MATERIALIZE_ALL, run_command
from library import Library

from lakehouse.gold.assets import attached_tables, gold_assets
from lakehouse.marts.assets import attached_models
from lakehouse.settings import DEFAULTS
from lakehouse.silver.assets import silver_assets
from lakehouse.sources.contract_files import load_contracts

# What a deployment loads from the environment: its assets, the assets its checks are on, its
# jobs and schedules (validated as a code location would be).
DESCRIBE = """
import json
import dagster as dg
from lakehouse.definitions import defs
dg.Definitions.validate_loadable(defs)
graph = defs.resolve_asset_graph()
print(json.dumps({
    "assets": sorted(key.to_user_string() for key in graph.get_all_asset_keys()),
    "checked": sorted({key.asset_key.to_user_string() for key in graph.asset_check_keys}),
    "checks": sorted(f"{key.asset_key.to_user_string()}:{key.name}" for key in graph.asset_check_keys),
    "jobs": sorted(job.name for job in defs.resolve_all_job_defs()),
    "schedules": sorted(schedule.name for schedule in defs.schedules or []),
}))
"""
OWN_TABLES = [
    f"{layer}/{name}" for layer in ("bronze", "quarantine", "silver") for name in ("loans", "members")
]


def test_a_users_own_contracts_give_exactly_their_tables_and_materialize_all(tmp_path: Path) -> None:
    library = Library(tmp_path, dg.DagsterInstance.ephemeral())
    library.create()
    library.add("members", [(1, "Ada"), (2, "Grace")])
    library.add("loans", [(loan, 1 + loan % 2, "open") for loan in range(1, 11)])
    env = {"LAKEHOUSE_CONTRACTS": str(library.contracts_folder), "LAKEHOUSE_SOURCE_URL": library.source_url}

    described = run_command(["python", "-c", DESCRIBE], tmp_path, **env)
    assert described.returncode == 0, described.stderr
    loaded = json.loads(described.stdout)
    assert loaded["assets"] == sorted(OWN_TABLES)
    assert set(loaded["checked"]) == {"bronze/loans", "bronze/members", "silver/loans", "silver/members"}
    assert {"silver/loans:quarantine_rate", "silver/loans:references"} <= set(loaded["checks"])
    assert {"ingest", "maintenance"} <= set(loaded["jobs"])
    assert "ingest_hourly" in loaded["schedules"]

    built = run_command(MATERIALIZE_ALL, tmp_path, **env)
    assert built.returncode == 0, built.stderr[-3000:]
    assert library.table("silver", "loans").height == 10
    assert library.table("silver", "members").height == 2

    # A batch that quarantines most of its rows fails the command.
    library.add("loans", [(loan, 1, "lost") for loan in range(11, 20)])
    failed = run_command(MATERIALIZE_ALL, tmp_path, **env)
    assert failed.returncode != 0
    logged = failed.stdout + failed.stderr
    assert "Asset check 'quarantine_rate' on 'silver/loans' did not pass" in logged
    assert "9 of the 9 bronze rows of the last load (100.0%)" in logged
    assert "commonest reasons: status not in allowed values (9)" in logged


def test_the_shop_business_layer_attaches_as_far_as_the_contracts_feed_it(tmp_path: Path) -> None:
    shop = Path(DEFAULTS["LAKEHOUSE_CONTRACTS"])
    for name in ("customers", "products"):
        shutil.copy(shop / f"{name}.yaml", tmp_path / f"{name}.yaml")
    dimensions = load_contracts(tmp_path)
    assert [table.name for table in attached_tables(dimensions)] == ["dim_customers", "dim_products"]
    defined = {
        key for assets in [*silver_assets(dimensions), *gold_assets(dimensions)] for key in assets.keys
    }
    assert attached_models(defined) == []  # the marts read the fact tables too

    everything = load_contracts(shop)
    defined = {
        key for assets in [*silver_assets(everything), *gold_assets(everything)] for key in assets.keys
    }
    assert len(attached_tables(everything)) == len(gold_assets(everything)) > 2
    assert len(attached_models(defined)) == 1


def test_an_empty_source_table_leaves_its_silver_unbuilt_and_the_run_green(tmp_path: Path) -> None:
    library = Library(tmp_path, dg.DagsterInstance.ephemeral())
    library.create()
    library.add("members", [(1, "member 1")])  # and no loans yet

    result = library.materialize()

    assert result.success
    assert not (library.folder / "lakehouse" / "silver" / "loans").exists()
    assert library.table("silver", "members").height == 1
