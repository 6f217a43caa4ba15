"""Jobs and their schedules.

- `ingest` (bronze + silver), hourly: the source and landing files into validated tables.
- `transform` (gold + dbt), daily: the business tables and marts, once the day's data is in;
  gold rebuilds the periods (order months, order and event days) that silver changed.
- `ingest_events` (one landing dataset into bronze and silver): defined with the landing sensor
  that launches it (sensors.py).
- `maintenance` (every Delta table: compaction, checkpoints, vacuum), weekly: see maintenance.py.

Each schedule's cron expression is a setting (`LAKEHOUSE_*_SCHEDULE`, lakehouse/settings.py).

Schedules start STOPPED: a fresh clone opened with `make dev` must not start polling a source
on its own. Turn them on in the UI (Automation) or with `dagster schedule start`.
"""

import dagster as dg

from lakehouse.monitoring.logs import run_config
from lakehouse.orchestration.maintenance import JOB_NAME as MAINTENANCE
from lakehouse.settings import SettingsError, setting

INGEST = dg.AssetSelection.groups("bronze", "silver")
TRANSFORM = dg.AssetSelection.groups("gold", "staging", "marts")

ingest_job = dg.define_asset_job(
    "ingest",
    selection=INGEST,
    description="Extract the source tables and landing files into bronze and silver.",
    config=run_config(),
)
transform_job = dg.define_asset_job(
    "transform",
    selection=TRANSFORM,
    description="Rebuild the touched gold periods, then the dbt marts.",
    config=run_config(),
)


def schedules() -> list[dg.ScheduleDefinition]:
    """The three schedules, each at the cron expression (UTC) of its setting."""
    made = []
    for name, job, variable, what in (
        ("ingest_hourly", ingest_job.name, "LAKEHOUSE_INGEST_SCHEDULE", "bronze and silver"),
        ("transform_daily", transform_job.name, "LAKEHOUSE_TRANSFORM_SCHEDULE", "gold and the dbt marts"),
        ("maintenance_weekly", MAINTENANCE, "LAKEHOUSE_MAINTENANCE_SCHEDULE",
         "compact, checkpoint and vacuum every Delta table"),
    ):  # fmt: skip
        cron = setting(variable)
        try:
            made.append(
                dg.ScheduleDefinition(
                    name=name,
                    job_name=job,
                    cron_schedule=cron,
                    execution_timezone="UTC",
                    description=f"{what.capitalize()}, at `{cron}` UTC ({variable}).",
                )
            )
        except dg.DagsterInvalidDefinitionError:
            raise SettingsError(
                f"{variable} must be a cron expression such as '0 * * * *', not '{cron}'"
            ) from None
    return made
