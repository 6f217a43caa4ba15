"""The lakehouse's one Dagster `Definitions`: every asset, check and resource."""

from pathlib import Path

import dagster as dg

from asset_checks import all_checks
from lakehouse.bronze.assets import bronze_assets
from lakehouse.gold.assets import attached_tables, gold_assets
from lakehouse.marts.assets import DBT_EXECUTABLE, DbtCli, attached_models, dbt_project
from lakehouse.monitoring.logs import run_loggers
from lakehouse.orchestration.executors import run_executor
from lakehouse.orchestration.jobs import event_days_jobs, ingest_job, schedules, transform_job
from lakehouse.orchestration.maintenance import maintenance_job
from lakehouse.orchestration.owners import with_owners
from lakehouse.orchestration.sensors import sensors
from lakehouse.resources import (
    AlertSink,
    Clock,
    LakehouseStorage,
    LandingZone,
    PiiHasher,
    SourceDatabase,
    Warehouse,
)
from lakehouse.settings import check_deployment, resource_value, setting
from lakehouse.silver.assets import silver_assets
from lakehouse.sources.contract_files import load_contracts
from lakehouse.storage import files

check_deployment()
contracts = load_contracts(Path(setting("LAKEHOUSE_CONTRACTS")))
# The shop's business layer (gold tables, then the dbt models over them) attaches only where
# the contracts feed it: a user's own contract set gives exactly its bronze and silver assets.
tables = [*bronze_assets(contracts), *silver_assets(contracts), *gold_assets(contracts)]
assets = with_owners([*tables, *attached_models({key for assets in tables for key in assets.keys})])
checks = all_checks(contracts)
# Every check's key, the dbt models' tests among them: what the health alerts and metrics watch.
check_keys = [spec.key for definition in [*assets, *checks] for spec in definition.check_specs]
# The object store's typed configuration, its secrets as the names of their variables.
root, landing = (files.from_environment(setting(name)) for name in ("LAKEHOUSE_ROOT", "LAKEHOUSE_LANDING"))

defs = dg.Definitions(
    assets=assets,
    asset_checks=checks,
    jobs=[
        ingest_job,
        transform_job,
        maintenance_job(contracts),
        *event_days_jobs(attached_tables(contracts)),
    ],
    schedules=schedules(),
    sensors=sensors(contracts, check_keys),
    resources={
        "source": SourceDatabase(url=resource_value("LAKEHOUSE_SOURCE_URL")),
        "lakehouse": LakehouseStorage(
            root=resource_value("LAKEHOUSE_ROOT"), storage=root[0], allow_http=root[1]
        ),
        "landing": LandingZone(
            path=resource_value("LAKEHOUSE_LANDING"), storage=landing[0], allow_http=landing[1]
        ),
        "pii": PiiHasher(salt=resource_value("LAKEHOUSE_PII_SALT")),
        "warehouse": Warehouse(path=resource_value("LAKEHOUSE_WAREHOUSE")),
        "clock": Clock(),
        "alerts": AlertSink(
            log_path=resource_value("LAKEHOUSE_ALERTS"), webhook=resource_value("LAKEHOUSE_ALERT_WEBHOOK")
        ),
        "dbt": DbtCli(project_dir=dbt_project, dbt_executable=DBT_EXECUTABLE),
    },
    executor=run_executor(),
    loggers=run_loggers(),
)
