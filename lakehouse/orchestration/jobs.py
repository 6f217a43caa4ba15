"""Jobs and their schedules.

- `ingest` (bronze + silver), hourly: the source and landing files into validated tables.
- `transform` (gold + dbt), daily: the business tables and marts, once the day's data is in;
  gold rebuilds the periods (order months, order and event days) that silver changed.
- `ingest_events` (one landing dataset into bronze and silver): defined with the landing sensor
  that launches it (sensors.py).
- `maintenance` (every Delta table: compaction, checkpoints, vacuum), weekly: see maintenance.py.
- `backfill_event_days` (the gold tables kept by day), daily-partitioned: a backfill of it over a
  range of days (the UI's "Launch backfill", or `dagster job backfill`) is one run per day, and
  the instance's run queue runs several at once (deploy/dagster.shared.yaml): each day's files
  are the day's own, so the runs commit without conflicts.

Every job's runs carry a lane tag that the run queue limits (lanes.py).

Each schedule's cron expression is a setting (`LAKEHOUSE_*_SCHEDULE`, lakehouse/settings.py).

Schedules start STOPPED: a fresh clone opened with `make dev` must not start polling a source
on its own. Turn them on in the UI (Automation) or with `dagster schedule start`.
"""

from collections.abc import Sequence
from datetime import date, datetime

import dagster as dg

from lakehouse.gold.tables import GoldTable
from lakehouse.marts import MODEL_GROUPS
from lakehouse.monitoring.logs import run_config
from lakehouse.orchestration import lanes
from lakehouse.orchestration.maintenance import JOB_NAME as MAINTENANCE
from lakehouse.settings import SettingsError, setting

INGEST = dg.AssetSelection.groups("bronze", "silver")
TRANSFORM = dg.AssetSelection.groups("gold", *MODEL_GROUPS)
EVENT_DAYS = "backfill_event_days"

ingest_job = dg.define_asset_job(
    "ingest",
    selection=INGEST,
    description="Extract the source tables and landing files into bronze and silver.",
    config=run_config(),
    tags=lanes.LAKE,
)
transform_job = dg.define_asset_job(
    "transform",
    selection=TRANSFORM,
    description="Rebuild the touched gold periods, then the dbt marts.",
    config=run_config(),
    tags=lanes.LAKE,
)


def event_days_jobs(tables: Sequence[GoldTable]) -> list:  # define_asset_job's type is not exported
    """`backfill_event_days` over the gold `tables` kept by day, none when there are none: each
    partition is a day, each run rebuilds its day of every such table from silver."""
    daily = [dg.AssetKey(["gold", table.name]) for table in tables if table.by_day]
    if not daily:
        return []
    first = setting("LAKEHOUSE_BACKFILL_FIRST_DAY")
    try:
        date.fromisoformat(first)
    except ValueError:
        raise SettingsError(
            f"LAKEHOUSE_BACKFILL_FIRST_DAY must be a day (YYYY-MM-DD), not '{first}'"
        ) from None

    @dg.daily_partitioned_config(start_date=first, end_offset=1)
    def one_day(start: datetime, _end: datetime) -> dict:
        day = {"config": {"first_day": start.date().isoformat()}}
        return {**(run_config() or {}), "ops": {key.to_python_identifier(): day for key in daily}}

    return [
        dg.define_asset_job(
            EVENT_DAYS,
            selection=daily,
            description="Rebuild one day of the gold tables kept by day from silver; backfill a "
            "range of days as one run per day, several at once.",
            config=one_day,
            tags=lanes.EVENT_DAYS,
        )
    ]


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
