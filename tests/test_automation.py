"""Jobs, schedules and sensors: ticks land when the docs say, new landing files launch exactly
one run, and a failed run leaves an alert in the log and at the webhook."""

import json
import shutil
import threading
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import dagster as dg
import pytest
from conftest import Lake

from lakehouse.definitions import defs
from lakehouse.marts import MODEL_GROUPS
from lakehouse.orchestration.jobs import schedules
from lakehouse.orchestration.sensors import alert_on_run_failure, landing_sensor
from lakehouse.resources import AlertSink, LandingZone
from lakehouse.settings import SettingsError

TICK_FORMAT = "%Y-%m-%dT%H:%M%z"
EVENTS = [dg.AssetKey(["bronze", "events"]), dg.AssetKey(["quarantine", "events_malformed"])]


def next_tick(name: str, after: datetime) -> datetime:
    """The schedule's first tick at or after `after`, by Dagster's own cron arithmetic: time
    partitions start at their cron schedule's ticks, the first at the first tick from `start`,
    and `end_offset=1` lists it before it has ended."""
    schedule = defs.get_schedule_def(name)
    ticks = dg.TimeWindowPartitionsDefinition(
        cron_schedule=schedule.cron_schedule,
        timezone=schedule.execution_timezone,
        start=after,
        fmt=TICK_FORMAT,
        end_offset=1,
    )
    return datetime.strptime(ticks.get_partition_keys(current_time=after)[0], TICK_FORMAT)


def test_schedules_tick_when_the_docs_say_and_start_stopped() -> None:
    moment = datetime(2026, 11, 21, 10, 17, tzinfo=UTC)
    assert next_tick("ingest_hourly", moment) == datetime(2026, 11, 21, 11, 0, tzinfo=UTC)
    assert next_tick("transform_daily", moment) == datetime(2026, 11, 22, 2, 0, tzinfo=UTC)
    for name, job, groups in (("ingest_hourly", "ingest", {"bronze", "silver"}),
                              ("transform_daily", "transform", {"gold", *MODEL_GROUPS})):  # fmt: skip
        schedule = defs.get_schedule_def(name)
        assert schedule.job_name == job
        assert schedule.default_status == dg.DefaultScheduleStatus.STOPPED
        selected = defs.resolve_job_def(job).asset_layer.selected_asset_keys
        assert {key.path[0] for key in selected} <= groups | {"quarantine"}
        assert any(key.path[0] in groups for key in selected)


def test_maintenance_runs_weekly_on_sunday_night_and_starts_stopped() -> None:
    moment = datetime(2026, 11, 21, 10, 17, tzinfo=UTC)  # a Saturday
    assert next_tick("maintenance_weekly", moment) == datetime(2026, 11, 22, 3, 30, tzinfo=UTC)
    schedule = defs.get_schedule_def("maintenance_weekly")
    assert schedule.job_name == "maintenance"
    assert schedule.default_status == dg.DefaultScheduleStatus.STOPPED
    assert [node.name for node in defs.resolve_job_def("maintenance").nodes] == ["maintain_tables"]


def test_a_day_of_the_event_days_job_rebuilds_that_day_of_each_daily_gold_table_in_its_lane() -> None:
    job = defs.resolve_job_def("backfill_event_days")
    tables = ["gold__event_windows_5m", "gold__funnel_daily"]
    assert sorted(node.name for node in job.nodes) == sorted([*tables, *(f"{op}_checks" for op in tables)])
    assert job.partitions_def.get_first_partition_key() == "2024-01-01"
    day = {"config": {"first_day": "2026-11-03"}}
    assert job.partitioned_config.get_run_config_for_partition_key("2026-11-03") == {
        "ops": {"gold__event_windows_5m": day, "gold__funnel_daily": day}
    }
    lanes = {
        name: defs.resolve_job_def(name).tags["lakehouse/lane"]
        for name in ("ingest", "transform", "maintenance")
    }
    assert (lanes, job.tags["lakehouse/lane"]) == (dict.fromkeys(lanes, "lake"), "event_days")


def evaluate(
    sensor: dg.SensorDefinition, lake: Lake, cursor: str | None
) -> tuple[list[dg.RunRequest], str | None]:
    context = dg.build_sensor_context(
        cursor=cursor,
        instance=lake.instance,
        resources={"landing": LandingZone(path=str(lake.landing)), "lakehouse": lake.storage},
    )
    result = sensor(context)
    if isinstance(result, dg.SkipReason):
        return [], context.cursor
    return list(result.run_requests or []), result.cursor


def test_new_landing_files_launch_one_run_and_a_file_dropped_again_launches_none(lake: Lake) -> None:
    sensor = landing_sensor(lake.contract("events"))
    assert sensor.default_status == dg.DefaultSensorStatus.STOPPED
    requests, cursor = evaluate(sensor, lake, None)
    assert len(requests) == 1  # the initial day of files, none ingested yet
    lake.materialize(dg.AssetSelection.assets(*EVENTS))
    assert evaluate(sensor, lake, cursor)[0] == []

    before = set(lake.manifest.event_files)
    lake.advance()
    arrived = sorted(set(lake.manifest.event_files) - before)
    requests, cursor = evaluate(sensor, lake, cursor)
    assert len(requests) == 1 and requests[0].run_key
    assert json.loads(cursor) == arrived
    # The next tick, before the run has ingested them: nothing new to launch.
    again, cursor = evaluate(sensor, lake, cursor)
    assert again == []

    lake.materialize(dg.AssetSelection.assets(*EVENTS))
    requests, cursor = evaluate(sensor, lake, cursor)
    assert requests == [] and json.loads(cursor) == []
    # The same file dropped again is in bronze's ledger: it launches nothing.
    folder = lake.landing / "events"
    shutil.copy(folder / arrived[0], folder / f"{arrived[0]}.tmp")
    (folder / f"{arrived[0]}.tmp").replace(folder / arrived[0])
    assert evaluate(sensor, lake, cursor)[0] == []


class Webhook(BaseHTTPRequestHandler):
    """Fails the first `failures` posts with 503, then takes them."""

    failures = 0
    received: ClassVar[list[dict]] = []

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if Webhook.failures > 0:
            Webhook.failures -= 1
            self.send_response(503)
        else:
            Webhook.received.append(body)
            self.send_response(204)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def webhook():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Webhook)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    Webhook.failures, Webhook.received = 1, []
    yield f"http://127.0.0.1:{server.server_address[1]}/alerts"
    server.shutdown()


def failed_run(lake: Lake) -> tuple[dg.DagsterRun, dg.DagsterEvent]:
    """A real failed run: bronze/orders while its source database is away."""
    database = lake.source.sqlite_path
    away = database.rename(database.with_suffix(".away"))
    try:
        result = lake.materialize(dg.AssetSelection.assets(["bronze", "orders"]), raise_on_error=False)
    finally:
        away.rename(database)
    assert not result.success
    run = lake.instance.get_run_by_id(result.run_id)
    failure = lake.instance.get_records_for_run(
        result.run_id, of_type=dg.DagsterEventType.RUN_FAILURE
    ).records
    return run, failure[0].event_log_entry.dagster_event


def alert(lake: Lake, sink: AlertSink) -> None:
    run, event = failed_run(lake)
    context = dg.build_run_status_sensor_context(
        sensor_name="alert_on_run_failure",
        dagster_event=event,
        dagster_instance=lake.instance,
        dagster_run=run,
        resources={"alerts": sink},
    ).for_run_failure()
    alert_on_run_failure(context)


def test_a_failed_run_is_alerted_in_the_log_and_at_the_webhook_after_a_retry(
    lake: Lake, webhook: str
) -> None:
    log = lake.folder / "alerts.jsonl"
    alert(lake, AlertSink(log_path=str(log), webhook=webhook, backoff_seconds=0.01))

    [logged] = [json.loads(line) for line in log.read_text().splitlines()]
    assert logged["kind"] == "run_failure" and logged["failed_steps"] == ["bronze__orders"]
    assert Webhook.received == [logged]  # the first post got a 503, the retry went through
    assert alert_on_run_failure.default_status == dg.DefaultSensorStatus.RUNNING


def test_an_unreachable_webhook_never_crashes_the_sensor(lake: Lake, tmp_path: Path) -> None:
    log = tmp_path / "alerts" / "alerts.jsonl"
    alert(lake, AlertSink(log_path=str(log), webhook="http://127.0.0.1:9/alerts", backoff_seconds=0.01))
    assert len(log.read_text().splitlines()) == 1


def test_gold_and_dbt_follow_their_upstreams_and_silver_is_fresh_per_contract(lake: Lake) -> None:
    graph = defs.resolve_asset_graph()
    downstream = [key for key in graph.get_all_asset_keys() if key.path[0] in ("gold", *MODEL_GROUPS)]
    assert len(downstream) == 7 + 6 + 1 + 5  # gold tables, dbt staging views, intermediate models, marts
    assert all(graph.get(key).automation_condition == dg.AutomationCondition.eager() for key in downstream)
    # No asset is partitioned: `dagster asset materialize --select '*'` needs no other option.
    assert not [key for key in graph.get_all_asset_keys() if graph.get(key).partitions_def is not None]
    for contract in lake.contracts:
        policy = graph.get(dg.AssetKey(["silver", contract.name])).freshness_policy
        assert (policy.warn_window.to_timedelta(), policy.fail_window.to_timedelta()) == (
            contract.freshness.warn_after,
            contract.freshness.error_after,
        )


def test_only_the_alerts_and_the_dead_run_sweep_start_running() -> None:
    statuses = {sensor.name: sensor.default_status for sensor in defs.get_repository_def().sensor_defs}
    running = dg.DefaultSensorStatus.RUNNING
    assert {name for name, status in statuses.items() if status == running} == {
        "alert_on_run_failure",
        "alert_on_health",
        "fail_dead_runs",
    }
    assert set(statuses) == {
        "alert_on_run_failure",
        "alert_on_health",
        "fail_dead_runs",
        "events_landing_files",
        "default_automation_condition_sensor",
    }


def test_each_schedule_runs_at_the_cron_expression_of_its_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LAKEHOUSE_INGEST_SCHEDULE", "*/15 6-18 * * 1-5")
    crons = {schedule.name: schedule.cron_schedule for schedule in schedules()}
    assert crons == {
        "ingest_hourly": "*/15 6-18 * * 1-5",
        "transform_daily": "0 2 * * *",
        "maintenance_weekly": "30 3 * * 0",
    }
    monkeypatch.setenv("LAKEHOUSE_TRANSFORM_SCHEDULE", "daily")
    with pytest.raises(SettingsError) as refused:
        schedules()
    assert str(refused.value) == (
        "LAKEHOUSE_TRANSFORM_SCHEDULE must be a cron expression such as '0 * * * *', not 'daily'"
    )
