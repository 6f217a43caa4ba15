"""Sensors: new landing files launch their ingestion; a failed run raises an alert; so does a
breach of the pipeline's health (a stale or unreadable table, a failed check, a slow run,
landing files left waiting); a run whose process died is failed.

The landing sensors start STOPPED like the schedules (turn them on in the UI or with
`dagster sensor start`); the alert and dead-run sensors start RUNNING, since a failure nobody
hears of, or a dead run that holds the queue, is the one thing a deployment must never have.
"""

import json
import math
from datetime import UTC, datetime
from hashlib import sha256

import dagster as dg

from lakehouse.bronze.assets import LISTED_FILES
from lakehouse.bronze.landing import pending_files, settle_seconds, split_settled
from lakehouse.monitoring.breaches import breaches, changes
from lakehouse.monitoring.health import landing_wait_limit, observe
from lakehouse.monitoring.logs import run_config
from lakehouse.orchestration import lanes, run_health
from lakehouse.orchestration.alerts import run_failure_alert
from lakehouse.resources import AlertSink, Clock, LakehouseStorage, LandingZone, SourceDatabase
from lakehouse.settings import seconds, setting
from lakehouse.sources.contract import Contract
from lakehouse.storage import delta


def waiting_files(
    contract: Contract, landing: LandingZone, lakehouse: LakehouseStorage
) -> tuple[list[str], list[str]]:
    """Landing files bronze's ledger has not ingested yet, in name order: those complete, and
    those still settling (changed within the settle time), which no run is launched for yet."""
    table = delta.open_table(lakehouse.table_uri("bronze", contract.name))
    pending = pending_files(contract, landing.location, table)
    settled, settling = split_settled(pending, settle_seconds())
    return [seen.name for seen in settled], [seen.name for seen in settling]


def landing_sensor(contract: Contract) -> dg.SensorDefinition:
    """Requests one run of the dataset's own job, `ingest_<dataset>` (bronze and silver with their
    quarantines), for each set of new files.

    The cursor holds the files already requested that bronze has not ingested yet, so a file
    is requested once whatever its name, however long its run takes; the run key (a hash of
    the new names) keeps a re-evaluated tick from launching twice. A file dropped again after
    its ingestion is in the ledger and launches nothing. A file still settling is requested by
    a later tick, once it is complete.
    """
    dataset = contract.name
    keys = [
        ["bronze", dataset],
        ["quarantine", f"{dataset}_malformed"],
        ["silver", dataset],
        ["quarantine", dataset],
    ]
    ingest = dg.define_asset_job(
        f"ingest_{dataset}",
        selection=dg.AssetSelection.assets(*keys),
        description=f"Ingest new {dataset} files into bronze and silver (launched by the landing sensor).",
        config=run_config(),
        tags=lanes.LAKE,
    )

    @dg.sensor(
        name=f"{dataset}_landing_files",
        job=ingest,
        minimum_interval_seconds=int(setting("LAKEHOUSE_LANDING_POLL_SECONDS")),
        description=f"Launches {ingest.name} when new {contract.source.glob} files arrive.",
    )
    def watch(
        context: dg.SensorEvaluationContext, landing: LandingZone, lakehouse: LakehouseStorage
    ) -> dg.SensorResult | dg.SkipReason:
        waiting, settling = waiting_files(contract, landing, lakehouse)
        requested = set(json.loads(context.cursor)) if context.cursor else set()
        new = [name for name in waiting if name not in requested]
        cursor = json.dumps(sorted(requested.intersection(waiting) | set(new)))
        if not new:
            context.update_cursor(cursor)
            return dg.SkipReason(
                f"no new complete files ({len(waiting)} requested, waiting for their run; "
                f"{len(settling)} still settling)"
            )
        listed = ", ".join(new[:LISTED_FILES]) + (
            f" and {len(new) - LISTED_FILES} more" if len(new) > LISTED_FILES else ""
        )
        run_key = sha256("\n".join(new).encode()).hexdigest()[:16]
        context.log.info(f"{len(new)} new {contract.name} files: {listed}")
        return dg.SensorResult(
            run_requests=[dg.RunRequest(run_key=run_key, tags={"lakehouse/new_files": str(len(new))})],
            cursor=cursor,
        )

    return watch


@dg.run_failure_sensor(
    name="alert_on_run_failure",
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Writes every failed run to the alerts log and posts it to LAKEHOUSE_ALERT_WEBHOOK when set.",
)
def alert_on_run_failure(context: dg.RunFailureSensorContext, alerts: AlertSink) -> None:
    run = context.dagster_run
    if run.tags.get(run_health.DEAD_WORKER_TAG):
        return  # failed by the dead-run sweep, which sent its alert
    failed_steps = sorted(
        {event.step_key for event in context.get_step_failure_events() if event.step_key is not None}
    )
    alert = run_failure_alert(run, failed_steps, context.failure_event.message or "")
    if not alerts.send(alert):
        context.log.error(f"alert for run {run.run_id} was not delivered everywhere: see the log above")


def dead_run_sensor() -> dg.SensorDefinition:
    """The daemon's sweep: the queued runs' case, where no running run sweeps."""

    @dg.sensor(
        name="fail_dead_runs",
        minimum_interval_seconds=math.ceil(run_health.sweep_seconds()),
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Fails the runs whose process is gone, frees their pool slots and alerts them.",
    )
    def fail_dead_runs(context: dg.SensorEvaluationContext, alerts: AlertSink) -> dg.SkipReason:
        # The daemon's own run monitoring cannot check the default launcher's run workers.
        failed = run_health.fail_dead_runs(context.instance, alerts, context.log)
        return dg.SkipReason(
            f"failed {len(failed)} dead run(s): {', '.join(failed)}" if failed else "no dead runs"
        )

    return fail_dead_runs


def health_sensor(contracts: list[Contract], check_keys: list[dg.AssetCheckKey]) -> dg.SensorDefinition:
    """The health alerts: each breach of a rule in `lakehouse.monitoring.breaches` alerted once
    when it starts and once when it ends. The cursor holds the breaches alerted and open."""

    @dg.sensor(
        name="alert_on_health",
        minimum_interval_seconds=math.ceil(seconds("LAKEHOUSE_HEALTH_POLL_SECONDS")),
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Alerts a table past its freshness SLA or with an unreadable log, a failed check, a run "
        "three times slower than usual and landing files left waiting, once when each starts and ends.",
    )
    def alert_on_health(
        context: dg.SensorEvaluationContext,
        alerts: AlertSink,
        lakehouse: LakehouseStorage,
        landing: LandingZone,
        source: SourceDatabase,
        clock: Clock,
    ) -> dg.SkipReason:
        health = observe(context.instance, contracts, check_keys, lakehouse, landing, source, clock.current())
        alerted = json.loads(context.cursor) if context.cursor else {}
        sent, still = changes(alerted, breaches(health, landing_wait_limit()), datetime.now(UTC))
        for alert in sent:
            if not alerts.send(alert):
                context.log.error(f"alert {alert['breach']} was not delivered everywhere: see the log above")
        context.update_cursor(json.dumps(still, sort_keys=True))
        return dg.SkipReason(f"{len(still)} open breach(es); {len(sent)} alert(s) sent")

    return alert_on_health


def sensors(contracts: list[Contract], check_keys: list[dg.AssetCheckKey]) -> list[dg.SensorDefinition]:
    landing = [landing_sensor(contract) for contract in contracts if not contract.is_database]
    return [*landing, alert_on_run_failure, health_sensor(contracts, check_keys), dead_run_sensor()]
