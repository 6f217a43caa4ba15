"""Jobs and their schedules.

- `ingest` (bronze + silver), hourly: the source and landing files into validated tables.
- `transform` (gold + dbt), daily: the business tables and marts, once the day's data is in;
  gold rebuilds the periods (order months, order and event days) that silver changed.
- `ingest_events` (one landing dataset into bronze and silver): defined with the landing sensor
  that launches it (sensors.py).
- `maintenance` (every Delta table: compaction, checkpoints, vacuum), weekly: see maintenance.py.

Schedules start STOPPED: a fresh clone opened with `make dev` must not start polling a source
on its own. Turn them on in the UI (Automation) or with `dagster schedule start`.
"""

import dagster as dg

from lakehouse.maintenance import JOB_NAME as MAINTENANCE

INGEST = dg.AssetSelection.groups("bronze", "silver")
TRANSFORM = dg.AssetSelection.groups("gold", "staging", "marts")
HOURLY, DAILY = "0 * * * *", "0 2 * * *"
# Half past: clear of the hourly ingest and the daily transform, whose commits would race it.
WEEKLY = "30 3 * * 0"

ingest_job = dg.define_asset_job(
    "ingest",
    selection=INGEST,
    description="Extract the source tables and landing files into bronze and silver.",
)
transform_job = dg.define_asset_job(
    "transform", selection=TRANSFORM, description="Rebuild the touched gold periods, then the dbt marts."
)

schedules: list[dg.ScheduleDefinition] = [
    dg.ScheduleDefinition(
        name=name, job_name=job, cron_schedule=cron, execution_timezone="UTC", description=description
    )
    for name, job, cron, description in (
        ("ingest_hourly", ingest_job.name, HOURLY, "Every hour on the hour (UTC): bronze and silver."),
        ("transform_daily", transform_job.name, DAILY, "Every day at 02:00 UTC: gold and the dbt marts."),
        ("maintenance_weekly", MAINTENANCE, WEEKLY,
         "Every Sunday at 03:30 UTC: compact, checkpoint and vacuum every Delta table."),
    )
]  # fmt: skip
