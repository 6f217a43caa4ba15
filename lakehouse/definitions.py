"""The lakehouse's one Dagster `Definitions`: every asset, check and resource."""

from pathlib import Path

import dagster as dg

from asset_checks import Clock, all_checks
from lakehouse.alerts import AlertSink
from lakehouse.bronze.assets import LandingZone, bronze_assets
from lakehouse.contract import load_contracts
from lakehouse.delta import LakehouseStorage
from lakehouse.gold.assets import gold_assets
from lakehouse.jobs import ingest_job, schedules, transform_job
from lakehouse.maintenance import maintenance_job
from lakehouse.marts import DBT_EXECUTABLE, DbtCli, attached_models, dbt_project
from lakehouse.owners import with_owners
from lakehouse.run_health import sweeping_in_process_executor
from lakehouse.sensors import sensors
from lakehouse.settings import check_deployment, resource_value, setting
from lakehouse.silver.assets import silver_assets
from lakehouse.silver.pii import PiiHasher
from lakehouse.source import SourceDatabase
from lakehouse.warehouse import Warehouse

check_deployment()
contracts = load_contracts(Path(setting("LAKEHOUSE_CONTRACTS")))
# The shop's business layer (gold tables, then the dbt models over them) attaches only where
# the contracts feed it: a user's own contract set gives exactly its bronze and silver assets.
tables = [*bronze_assets(contracts), *silver_assets(contracts), *gold_assets(contracts)]

defs = dg.Definitions(
    assets=with_owners([*tables, *attached_models({key for assets in tables for key in assets.keys})]),
    asset_checks=all_checks(contracts),
    jobs=[ingest_job, transform_job, maintenance_job(contracts)],
    schedules=schedules(),
    sensors=sensors(contracts),
    resources={
        "source": SourceDatabase(url=resource_value("LAKEHOUSE_SOURCE_URL")),
        "lakehouse": LakehouseStorage(root=resource_value("LAKEHOUSE_ROOT")),
        "landing": LandingZone(path=resource_value("LAKEHOUSE_LANDING")),
        "pii": PiiHasher(salt=resource_value("LAKEHOUSE_PII_SALT")),
        "warehouse": Warehouse(path=resource_value("LAKEHOUSE_WAREHOUSE")),
        "clock": Clock(),
        "alerts": AlertSink(
            log_path=resource_value("LAKEHOUSE_ALERTS"), webhook=resource_value("LAKEHOUSE_ALERT_WEBHOOK")
        ),
        "dbt": DbtCli(project_dir=dbt_project, dbt_executable=DBT_EXECUTABLE),
    },
    # Steps are short and mostly I/O: running them in one process avoids re-importing the
    # definitions for every step, which would outweigh most steps (docs/architecture.md).
    # Before the first step it fails the runs whose process died (lakehouse/run_health.py).
    executor=sweeping_in_process_executor,
)
