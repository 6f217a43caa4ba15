"""Pipeline health a team can watch, on the library (not the shop): `lakehouse metrics serve`
scraped by a real Prometheus, which evaluates deploy/prometheus/rules.yml against it; the
daemon's health alerts sent once per breach and once when it ends; the dashboard's queries
against a scrape; JSON log lines with the run as correlation id."""

import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import polars as pl
import pytest
from conftest import PROJECT, command_environment, error_line, run_command
from dagster_server import free_port, stop_group, wait_for
from deltalake import DeltaTable
from library import Library

from asset_checks import all_checks
from lakehouse.monitoring.health import observe
from lakehouse.monitoring.metrics import families
from lakehouse.orchestration.sensors import health_sensor
from lakehouse.resources import AlertSink, Clock, LandingZone, SourceDatabase

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("test_monitoring")]

FRESHNESS = "freshness: {column: updated_at, warn_after: 1h, error_after: 1d}\n"
VISITS = """\
name: visits
description: Visits to the library's reading room, one JSON line each.
source: {kind: landing, glob: "visits/*.jsonl"}
primary_key: [visit_id]
history: append
columns:
  visit_id: {type: int, nullable: false, unique: true}
  member_id: {type: int, nullable: true}
  at: {type: timestamp, nullable: false}
"""
LOANS = [(1, 1, "open"), (2, 2, "open"), (3, 1, "returned"), (4, 2, "lost")]  # "lost": not allowed
WAIT_LIMIT = 3600
WAITED = 2 * 3600


def _visits(path: Path, first: int, age_seconds: float) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [{"visit_id": first + n, "member_id": 1, "at": "2026-11-02T12:00:00+00:00"} for n in range(3)]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    moment = time.time() - age_seconds
    os.utime(path, (moment, moment))


@dataclass
class Monitored:
    """The library loaded once, with a file left waiting in its landing zone, in an instance on
    disk that other processes read."""

    library: Library
    home: Path
    failed_checks: set[tuple[str, str]]  # (table, check) of the checks the load failed

    @property
    def settings(self) -> dict[str, str]:
        return {
            "DAGSTER_HOME": str(self.home),
            "LAKEHOUSE_ROOT": str(self.library.folder / "lakehouse"),
            "LAKEHOUSE_LANDING": str(self.landing),
            "LAKEHOUSE_SOURCE_URL": self.library.source_url,
            "LAKEHOUSE_CONTRACTS": str(self.library.contracts_folder),
            "LAKEHOUSE_LANDING_MAX_WAIT_SECONDS": str(WAIT_LIMIT),
        }

    @property
    def landing(self) -> Path:
        return self.library.folder / "landing"


@pytest.fixture(scope="module")
def monitored(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Monitored]:
    folder = tmp_path_factory.mktemp("monitored")
    home = folder / "dagster_home"
    home.mkdir()
    with dg.DagsterInstance.from_config(str(home)) as instance:
        library = Library(folder, instance)
        library.create()
        for name in ("members", "loans"):
            with (library.contracts_folder / f"{name}.yaml").open("a") as contract:
                contract.write(FRESHNESS)
        (library.contracts_folder / "visits.yaml").write_text(VISITS)
        library.add("members", [(1, "Ada"), (2, "Grace")])
        library.add("loans", LOANS)
        landing = folder / "landing" / "visits"
        _visits(landing / "1.jsonl", 1, 0)
        loaded = library.materialize()
        assert not loaded.success  # the "lost" loan fails a blocking check
        failed = {
            (evaluation.asset_key.to_user_string(), evaluation.check_name)
            for evaluation in loaded.get_asset_check_evaluations()
            if not evaluation.passed
        }
        _visits(landing / "2.jsonl", 10, WAITED)
        yield Monitored(library, home, failed)


@pytest.fixture(scope="module")
def metrics_url(monitored: Monitored, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`lakehouse metrics serve` on a free loopback port, in a process group of its own."""
    port = free_port()
    log = tmp_path_factory.mktemp("metrics") / "metrics.log"
    with log.open("wb") as output:
        server = subprocess.Popen(
            [str(Path(sys.executable).parent / "lakehouse"), "metrics", "serve", "--port", str(port)],
            cwd=PROJECT, env=command_environment(monitored.library.folder, **monitored.settings),
            stdout=output, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}/metrics"
    try:
        wait_for("the metrics endpoint", lambda: _get(url), 60, every=0.5)
        yield url
    finally:
        stop_group(server)
        print(log.read_text()[-3000:])


def _get(url: str) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.read().decode()
    except OSError:
        return None


@pytest.fixture(scope="module")
def prometheus(metrics_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Debian's Prometheus on a free loopback port, scraping the endpoint every second and
    evaluating the project's alert rules as often. Its query API's base URL."""
    binary = shutil.which("prometheus")
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("prometheus is not installed: .ci/run installs Debian's prometheus")
        pytest.skip("no prometheus (Debian's prometheus package; .ci/run installs it)")
    folder = tmp_path_factory.mktemp("prometheus")
    target = urllib.parse.urlparse(metrics_url).netloc
    (folder / "prometheus.yml").write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        f"rule_files: [{PROJECT / 'deploy' / 'prometheus' / 'rules.yml'}]\n"
        f"scrape_configs: [{{job_name: lakehouse, static_configs: [{{targets: ['{target}']}}]}}]\n"
    )
    port = free_port()
    with (folder / "prometheus.log").open("wb") as log:
        server = subprocess.Popen(
            [binary, f"--config.file={folder / 'prometheus.yml'}", f"--storage.tsdb.path={folder / 'data'}",
             f"--web.listen-address=127.0.0.1:{port}"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    api = f"http://127.0.0.1:{port}/api/v1"
    try:
        wait_for("a successful scrape", lambda: [s for s in _query(api, 'up{job="lakehouse"} == 1')], 90)
        yield api
    finally:
        stop_group(server)


def _query(api: str, expression: str) -> list[dict]:
    """The instant vector Prometheus returns for `expression` (empty while it is not up)."""
    answer = _get(f"{api}/query?{urllib.parse.urlencode({'query': expression})}")
    return json.loads(answer)["data"]["result"] if answer else []


def _values(api: str, metric: str, *labels: str) -> dict[tuple[str, ...], float]:
    return {
        tuple(sample["metric"].get(label, "") for label in labels): float(sample["value"][1])
        for sample in _query(api, metric)
    }


def test_prometheus_scrapes_what_the_lake_and_the_instance_hold(
    monitored: Monitored, prometheus: str
) -> None:
    library = monitored.library
    storage = library.storage
    tables = {(layer, name): storage.table_uri(layer, name) for layer, name in storage.tables()}
    assert ("silver", "loans") in tables and ("bronze", "visits") in tables

    rows = _values(prometheus, "lakehouse_table_rows", "layer", "table")
    versions = _values(prometheus, "lakehouse_table_version", "layer", "table")
    assert rows == {table: pl.read_delta(uri).height for table, uri in tables.items()}
    assert versions == {table: DeltaTable(uri).version() for table, uri in tables.items()}

    # Freshness: the newest updated_at in silver, against the clock at the scrape.
    freshness = _values(prometheus, "lakehouse_table_freshness_seconds", "layer", "table")
    newest = library.table("silver", "loans").get_column("updated_at").max()
    expected = (datetime.now(UTC) - newest).total_seconds()
    assert abs(freshness["silver", "loans"] - expected) < 60
    assert _values(prometheus, "lakehouse_table_freshness_sla_seconds", "table", "level") == {
        (table, level): seconds
        for table in ("loans", "members")
        for level, seconds in (("warn", 3600.0), ("error", 86400.0))
    }

    # The last materialisation's rows, the quarantine share, the checks.
    changed = _values(prometheus, "lakehouse_rows_changed", "layer", "table", "kind")
    assert changed["silver", "loans", "inserted"] == 3
    assert changed["silver", "loans", "quarantined"] == 1
    assert changed["bronze", "visits", "appended"] == 3
    assert _values(prometheus, "lakehouse_quarantine_ratio", "table")[("loans",)] == pytest.approx(1 / 4)
    checks = _values(prometheus, "lakehouse_check_failed", "layer", "table", "check", "severity")
    assert checks["silver", "loans", "quarantine_rate", "error"] == 1
    assert checks["silver", "loans", "unique", "error"] == 0
    assert checks["bronze", "loans", "valid_values", "warn"] == 1

    # The run, from the instance; the landing file left waiting two hours.
    (record,) = library.instance.get_run_records()
    durations = _values(prometheus, "lakehouse_run_duration_seconds", "dagster_job", "status")
    assert durations == {
        (record.dagster_run.job_name, "failure"): pytest.approx(record.end_time - record.start_time, abs=0.01)
    }
    assert _values(prometheus, "lakehouse_landing_files_waiting", "dataset") == {("visits",): 1}
    (waited,) = _values(prometheus, "lakehouse_landing_oldest_waiting_seconds", "dataset").values()
    assert WAITED <= waited < WAITED + 120


def test_the_prometheus_rules_fire_on_the_breaches_of_the_lake(prometheus: str) -> None:
    def firing() -> set[tuple[str, ...]]:
        alerts = _query(prometheus, 'ALERTS{alertstate="firing"}')
        return {
            tuple(alert["metric"].get(label, "") for label in ("alertname", "severity", "table", "dataset"))
            for alert in alerts
        }

    expected = {
        ("LakehouseTableStale", "warn", "loans", ""),
        ("LakehouseTableStale", "error", "loans", ""),
        ("LakehouseCheckFailed", "error", "loans", ""),
        ("LakehouseLandingFilesWaiting", "warn", "", "visits"),
    }
    found = wait_for("the alerts", lambda: firing() if expected <= firing() else None, 60)
    assert not any(name == "LakehouseRunSlow" for name, *_ in found)


def test_the_promtool_checks_and_unit_tests_of_the_rules_pass() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        if os.environ.get("CI"):
            pytest.fail("promtool is not installed: .ci/run installs Debian's prometheus")
        pytest.skip("no promtool (Debian's prometheus package)")
    folder = PROJECT / "deploy" / "prometheus"
    checks = (
        ["check", "rules", "rules.yml"],
        ["check", "config", "prometheus.yml"],
        ["test", "rules", "rules.test.yml"],
    )
    for args in checks:
        done = subprocess.run([promtool, *args], cwd=folder, capture_output=True, text=True, check=False)
        assert done.returncode == 0, done.stdout + done.stderr


def test_every_dashboard_query_uses_only_metrics_the_endpoint_exposes(metrics_url: str) -> None:
    scraped = {
        line.split()[2] for line in (_get(metrics_url) or "").splitlines() if line.startswith("# TYPE")
    }
    dashboard = json.loads((PROJECT / "deploy" / "grafana" / "lakehouse.json").read_text())
    expressions = [
        target["expr"]
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])
        if "expr" in target
    ]
    assert expressions
    used = {name for expr in expressions for name in re.findall(r"\b(lakehouse_[a-z_]+)", expr)}
    assert used and used <= scraped, used - scraped


def _sensor_tick(monitored: Monitored, cursor: str | None, alerts: Path) -> tuple[str, list[dict]]:
    """One evaluation of the daemon's health sensor on the library: its cursor and what it sent."""
    library = monitored.library
    sent_before = alerts.read_text().count("\n") if alerts.exists() else 0
    contracts = library.contracts
    keys = [spec.key for checks in all_checks(contracts) for spec in checks.check_specs]
    sensor = health_sensor(contracts, keys)
    context = dg.build_sensor_context(
        instance=library.instance,
        cursor=cursor,
        resources={
            "alerts": AlertSink(log_path=str(alerts)),
            "lakehouse": library.storage,
            "landing": LandingZone(path=str(monitored.landing)),
            "source": SourceDatabase(url=library.source_url),
            "clock": Clock(),
        },
    )
    sensor(context)
    lines = alerts.read_text().splitlines() if alerts.exists() else []
    return context.cursor, [json.loads(line) for line in lines[sent_before:]]


@dg.op
def _sleep(context: dg.OpExecutionContext) -> None:
    time.sleep(float(context.run.tags["seconds"]))


@dg.job
def reading_room_report() -> None:
    """A job of the library's own, whose runs take as long as their tag says."""
    _sleep()


def test_the_health_sensor_alerts_each_breach_once_and_its_end_once(
    monitored: Monitored, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    alerts = tmp_path / "alerts.jsonl"
    monkeypatch.setenv("LAKEHOUSE_LANDING_MAX_WAIT_SECONDS", str(WAIT_LIMIT))
    cursor, sent = _sensor_tick(monitored, None, alerts)
    stale = {f"{layer}/{name}" for layer in ("bronze", "silver") for name in ("loans", "members")}
    assert sorted((alert["kind"], alert["status"], alert.get("level", "")) for alert in sent) == sorted(
        [("table_stale", "firing", level) for _table in stale for level in ("warn", "error")]
        + [("check_failed", "firing", "")] * len(monitored.failed_checks)
        + [("landing_waiting", "firing", "")]
    )
    assert {alert["table"] for alert in sent if alert["kind"] == "table_stale"} == stale
    assert {(alert["table"], alert["check"]) for alert in sent if alert["kind"] == "check_failed"} == (
        monitored.failed_checks
    )
    # Nothing changed: nothing is sent again.
    cursor, sent = _sensor_tick(monitored, cursor, alerts)
    assert sent == []

    # The waiting file is ingested: its breach ends, once.
    assert monitored.library.materialize(["bronze/visits"]).success
    cursor, sent = _sensor_tick(monitored, cursor, alerts)
    assert [(alert["kind"], alert["status"], alert["dataset"]) for alert in sent] == [
        ("landing_waiting", "resolved", "visits")
    ]

    # A job that usually takes 0.2 s takes 4 s (more than SLOW_RUN_FACTOR times): slow, once;
    # back to usual: resolved.
    instance = monitored.library.instance
    for seconds in ("0.2", "0.2", "0.2", "4"):
        assert reading_room_report.execute_in_process(instance=instance, tags={"seconds": seconds}).success
    cursor, sent = _sensor_tick(monitored, cursor, alerts)
    assert [(alert["kind"], alert["status"], alert["job"]) for alert in sent] == [
        ("run_slow", "firing", "reading_room_report")
    ]
    assert reading_room_report.execute_in_process(instance=instance, tags={"seconds": "0.2"}).success
    cursor, sent = _sensor_tick(monitored, cursor, alerts)
    assert [(alert["kind"], alert["status"]) for alert in sent] == [("run_slow", "resolved")]

    # Runs of asset selections (Dagster's implicit job) run different things each: however many
    # succeed, they have no usual duration to be slow against.
    for _ in range(3):
        assert monitored.library.materialize(["bronze/visits"]).success
    health = observe(
        instance,
        monitored.library.contracts,
        [],
        monitored.library.storage,
        LandingZone(path=str(monitored.landing)),
        SourceDatabase(url=monitored.library.source_url),
        datetime.now(UTC),
    )
    usual = {job.job: (len(job.last), job.baseline is not None) for job in health.jobs}
    assert usual == {"__ephemeral_asset_job__": (2, False), "reading_room_report": (1, True)}


JSON_LOGGER = '{"loggers": {"console": {}}}'


@pytest.mark.parametrize(
    ("command", "job"),
    [
        (["dagster", "job", "execute", "-m", "lakehouse.definitions", "-j", "ingest"], "ingest"),
        (
            ["dagster", "asset", "materialize", "-m", "lakehouse.definitions", "--select", "*",
             "--config-json", JSON_LOGGER],
            "__ASSET_JOB",
        ),
    ],
    ids=["a job of the lakehouse", "an asset selection given the logger"],
)  # fmt: skip
def test_json_log_lines_carry_the_run_step_table_rows_and_duration(
    tmp_path: Path, command: list[str], job: str
) -> None:
    library = Library(tmp_path, dg.DagsterInstance.ephemeral())
    library.create()
    library.add("members", [(1, "Ada"), (2, "Grace")])
    library.add("loans", LOANS[:3])
    settings = {
        "LAKEHOUSE_CONTRACTS": str(library.contracts_folder),
        "LAKEHOUSE_SOURCE_URL": library.source_url,
        "LAKEHOUSE_LOG_FORMAT": "json",
        "PYTHONWARNINGS": "ignore",  # Dagster's notes on its own CLI commands, not the run's lines
    }
    done = run_command(command, tmp_path, **settings)
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stderr.splitlines()]
    (run_id,) = {line["run_id"] for line in lines}
    assert {line["job"] for line in lines} == {job}
    assert all(line["step"] for line in lines if line.get("event", "").startswith("STEP_"))
    materialized = {line["table"]: line for line in lines if line.get("event") == "ASSET_MATERIALIZATION"}
    assert materialized["silver/loans"]["rows"] == 3
    assert materialized["silver/loans"]["rows_inserted"] == 3
    assert materialized["silver/loans"]["duration_seconds"] >= 0
    assert any(line.get("event") == "STEP_SUCCESS" and line["duration_seconds"] >= 0 for line in lines)
    # What the lakehouse's own code logs (bronze's summary of its load) is among them.
    assert any(line["message"].startswith("bronze/loans: read 3 rows") for line in lines), run_id


def test_the_metrics_server_refuses_what_it_cannot_serve_in_one_line(tmp_path: Path) -> None:
    assert "set DAGSTER_HOME" in error_line(run_command("lakehouse metrics serve", tmp_path))
    bad_port = run_command(
        "lakehouse metrics serve", tmp_path, DAGSTER_HOME=str(tmp_path), LAKEHOUSE_METRICS_PORT="x"
    )
    assert "LAKEHOUSE_METRICS_PORT must be a port number" in error_line(bad_port)


def test_a_table_whose_log_is_torn_is_reported_and_every_other_table_still_is(tmp_path: Path) -> None:
    library = Library(tmp_path, dg.DagsterInstance.ephemeral())
    library.create()
    library.add("members", [(1, "Ada")])
    library.add("loans", LOANS[:1])
    assert library.materialize().success
    log = tmp_path / "lakehouse" / "bronze" / "loans" / "_delta_log" / "00000000000000000000.json"
    whole = log.read_bytes()
    log.write_bytes(whole[: len(whole) // 2])  # a commit torn by a crash mid-write

    health = observe(
        library.instance,
        library.contracts,
        [],
        library.storage,
        LandingZone(path=str(tmp_path / "landing")),
        SourceDatabase(url=library.source_url),
        datetime.now(UTC),
    )
    assert list(health.unreadable) == [("bronze", "loans")]
    assert "bronze/loans: the Delta log cannot be read" in health.unreadable["bronze", "loans"]
    assert {(table.layer, table.name) for table in health.tables} == set(library.storage.tables()) - {
        ("bronze", "loans")
    }
    (reported,) = [
        family for family in families(health, WAIT_LIMIT, 0) if family.name == "lakehouse_table_unreadable"
    ]
    assert [(sample.labels, sample.value) for sample in reported.samples] == [
        ({"layer": "bronze", "table": "loans"}, 1)
    ]
