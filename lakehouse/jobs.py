"""Jobs and their schedules.

- `ingest` (bronze + silver), hourly: the source and landing files into validated tables.
- `transform` (gold + dbt), daily: the business tables and marts, once the day's data is in;
  the event-derived gold tables rebuild yesterday (now complete) and today.
- `ingest_events` (one landing dataset into bronze and silver), launched by the landing sensor.
- `maintenance` (every Delta table: compaction, checkpoints, vacuum), weekly: see maintenance.py.

Schedules start STOPPED: a fresh clone opened with `make dev` must not start polling a source
on its own. Turn them on in the UI (Automation) or with `dagster schedule start`.
"""

from datetime import UTC, timedelta

import dagster as dg
from dagster._core.definitions.unresolved_asset_job_definition import UnresolvedAssetJobDefinition

from lakehouse.contract import Contract
from lakehouse.maintenance import JOB_NAME as MAINTENANCE

INGEST = dg.AssetSelection.groups("bronze", "silver")
TRANSFORM = dg.AssetSelection.groups("gold", "staging", "marts")
HOURLY, DAILY = "0 * * * *", "0 2 * * *"
# Half past: clear of the hourly ingest and the daily transform, whose commits would race it.
WEEKLY = "30 3 * * 0"
# The run tags of a partition range (what `dagster asset materialize --partition-range` sets):
# with single-run backfill policies the range runs as one run.
RANGE_START, RANGE_END = "dagster/asset_partition_range_start", "dagster/asset_partition_range_end"

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
        ("maintenance_weekly", MAINTENANCE, WEEKLY,
         "Every Sunday at 03:30 UTC: compact, checkpoint and vacuum every Delta table."),
    )
]  # fmt: skip


@dg.schedule(
    name="transform_daily",
    job=transform_job,
    cron_schedule=DAILY,
    execution_timezone="UTC",
    description="Every day at 02:00 UTC: gold (event days: yesterday and today) and the dbt marts.",
)
def transform_daily(context: dg.ScheduleEvaluationContext) -> dg.RunRequest:
    today = context.scheduled_execution_time.astimezone(UTC).date()
    return dg.RunRequest(tags={RANGE_START: str(today - timedelta(days=1)), RANGE_END: str(today)})


schedules.append(transform_daily)


def landing_job(contract: Contract) -> UnresolvedAssetJobDefinition:
    """One landing dataset from its files to silver: bronze and silver with their quarantines."""
    name = contract.name
    keys = [["bronze", name], ["quarantine", f"{name}_malformed"], ["silver", name], ["quarantine", name]]
    return dg.define_asset_job(
        f"ingest_{name}",
        selection=dg.AssetSelection.assets(*keys),
        description=f"Ingest new {name} files into bronze and silver (launched by the landing sensor).",
    )
