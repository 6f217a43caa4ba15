"""The daemon left alone: schedules and the landing sensor on, the source changing and new files
arriving, run workers killed at random and a CLI run racing the daemon's runs. Afterwards no run
is left in progress, every killed run is failed and alerted once, each health breach is alerted
once until it ends, nothing is lost or duplicated, and the next run's blocking reconciliation
checks pass.

Bounded in time (SOAK_SECONDS of batches, then the queue drains); set SOAK_SECONDS to soak longer.
"""

import contextlib
import json
import math
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest
from conftest import (
    PROJECT,
    Lake,
    assert_bronze_holds_each_version_once,
    assert_gold_equals_a_rebuild_in_one_piece,
    command_environment,
    local_deployment,
    sqlite_source,
)
from dagster_server import DagsterServer, wait_for

from asset_checks import all_checks
from lakehouse.orchestration.run_health import worker_of

pytestmark = pytest.mark.e2e

SOAK_SECONDS = float(os.environ.get("SOAK_SECONDS", "150"))
ADVANCE_SECONDS = 30  # a demo batch (source changes, deletes, event files) this often
POLL_SECONDS = 2
KILL_CHANCE = 0.5  # of each run the daemon starts, killed this long after it was seen running:
KILL_AFTER_SECONDS = (1, 10)
SWITCHES = (
    ("schedule", "ingest_hourly"),
    ("schedule", "transform_daily"),
    ("sensor", "events_landing_files"),
)
DRAIN_SECONDS = 600  # bounds, not expectations
RUN_SECONDS = 300
ALERT_SECONDS = 120  # the run failure sensor ticks every 30 s
RECONCILIATION = {"source_rows_in_bronze", "lines_in_bronze_or_quarantine", "bronze_rows_accounted"}
IN_PROGRESS = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
    dg.DagsterRunStatus.CANCELING,
]


def process_tree(pid: int) -> list[int]:
    """`pid` and every process below it (Linux's /proc)."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parents[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue  # ended while we looked
    tree = [pid]
    for member in tree:
        tree.extend(child for child, parent in parents.items() if parent == member)
    return tree


def kill_tree(pid: int) -> None:
    for member in process_tree(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(member, signal.SIGKILL)


class Soak:
    """The deployment, its `dagster dev`, and what the test did to it."""

    def __init__(self, folder: Path) -> None:
        settings = local_deployment(
            folder,
            LAKEHOUSE_INGEST_SCHEDULE="* * * * *",
            LAKEHOUSE_TRANSFORM_SCHEDULE="*/2 * * * *",
            LAKEHOUSE_LANDING_POLL_SECONDS="5",
            LAKEHOUSE_LANDING_SETTLE_SECONDS="2",
            LAKEHOUSE_HEALTH_POLL_SECONDS="10",
        )
        self.folder = folder
        self.environment = command_environment(folder, **settings)
        self.server = DagsterServer(
            PROJECT, Path(settings["DAGSTER_HOME"]), self.environment, folder / "dagster-dev.log"
        )
        self.rng = random.Random(20261205)
        self.killed: list[str] = []
        self.spared: set[str] = set()
        self.doomed: dict[str, float] = {}  # run id -> when to kill it

    def command(self, *args: str, timeout: float = RUN_SECONDS) -> subprocess.CompletedProcess:
        return self.server.command(list(args), timeout=timeout)

    def sent_alerts(self) -> list[dict]:
        alerts = self.folder / "alerts.jsonl"
        return [json.loads(line) for line in alerts.read_text().splitlines()] if alerts.exists() else []

    def switch(self, verb: str) -> None:
        for kind, name in SWITCHES:
            done = self.command("dagster", kind, verb, name, "-w", "workspace.yaml")
            assert done.returncode == 0, done.stdout + done.stderr[-3000:]

    def kill_some(self, instance: dg.DagsterInstance, cli_pid: int | None, late: bool) -> None:
        """Decide once for each new run of the daemon whether and when to kill it; kill when due.
        Late in the soak with no kill yet, the first running one is killed at once."""
        now, force = time.monotonic(), late and not self.killed
        for run in instance.get_runs(dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED])):
            worker = worker_of(run)
            if worker is None or worker.pid == cli_pid or run.run_id in self.killed:
                continue
            if run.run_id not in self.doomed and run.run_id not in self.spared:
                if self.rng.random() < KILL_CHANCE:
                    self.doomed[run.run_id] = now + self.rng.uniform(*KILL_AFTER_SECONDS)
                else:
                    self.spared.add(run.run_id)
            if force or now >= self.doomed.get(run.run_id, math.inf):
                kill_tree(worker.pid)
                self.killed.append(run.run_id)
                force = False


@pytest.fixture
def soak(tmp_path: Path) -> Iterator[Soak]:
    soaked = Soak(tmp_path)
    try:
        try:
            soaked.server.start()
        except (TimeoutError, RuntimeError) as error:
            pytest.fail(f"{error}\n--- dagster dev log, last lines ---\n{soaked.server.tail()}")
        yield soaked
    finally:
        soaked.server.stop()


def start_cli_run(soak: Soak) -> subprocess.Popen:
    with (soak.folder / "cli-run.log").open("ab") as log:
        return subprocess.Popen(
            [str(Path(sys.executable).parent / "dagster"), "asset", "materialize",
             "-m", "lakehouse.definitions", "--select", "*"],
            cwd=PROJECT, env=soak.environment, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip


def test_the_daemon_left_alone_with_kills_and_a_racing_cli_run_loses_and_duplicates_nothing(
    soak: Soak,
) -> None:
    instance = soak.server.instance()
    soak.switch("start")
    cli: subprocess.Popen | None = None
    started = time.monotonic()
    next_batch = started
    # Soaks on past SOAK_SECONDS (bounded) until a run was killed: on a loaded machine the
    # daemon's runs may all start late.
    while (elapsed := time.monotonic() - started) < SOAK_SECONDS or (
        not soak.killed and elapsed < SOAK_SECONDS + RUN_SECONDS
    ):
        if time.monotonic() >= next_batch:
            advanced = soak.command("lakehouse", "demo", "advance")
            assert advanced.returncode == 0, advanced.stderr
            next_batch += ADVANCE_SECONDS
        daemon_running = instance.get_runs(dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED]))
        if cli is None and elapsed > SOAK_SECONDS / 3 and daemon_running:
            cli = start_cli_run(soak)  # races the run the daemon has going
        soak.kill_some(instance, cli.pid if cli else None, late=elapsed > SOAK_SECONDS * 2 / 3)
        time.sleep(POLL_SECONDS)
    soak.switch("stop")
    assert cli is not None and cli.wait(timeout=RUN_SECONDS) == 0, (soak.folder / "cli-run.log").read_text()[
        -3000:
    ]

    # The queue drains by itself: killed runs are failed, so they hold neither the queue nor a pool.
    wait_for(
        "the daemon's queue to drain",
        lambda: not instance.get_runs(dg.RunsFilter(statuses=IN_PROGRESS)),
        DRAIN_SECONDS,
        every=POLL_SECONDS,
    )
    runs = instance.get_runs()
    launched = {
        tag: [r for r in runs if f"dagster/{tag}" in r.tags] for tag in ("schedule_name", "sensor_name")
    }
    assert len(launched["schedule_name"]) >= 3 and launched["sensor_name"], [r.tags for r in runs]
    assert soak.killed
    for run_id in soak.killed:
        assert instance.get_run_by_id(run_id).status == dg.DagsterRunStatus.FAILURE

    # A killed run the code server failed first is alerted by the run failure sensor at its
    # next tick, which may come after the queue drained.
    def every_killed_run_alerted() -> list[dict] | None:
        sent = soak.sent_alerts()
        alerted = {alert["run_id"] for alert in sent if alert["kind"] == "run_failure"}
        return sent if alerted >= set(soak.killed) else None

    sent = wait_for(
        "every killed run's failure alert", every_killed_run_alerted, ALERT_SECONDS, every=POLL_SECONDS
    )
    alerted = Counter(alert["run_id"] for alert in sent if alert["kind"] == "run_failure")
    assert {run_id: alerted[run_id] for run_id in soak.killed} == dict.fromkeys(soak.killed, 1)
    # The daemon's health sensor alerted the demo's planted defects (bronze's warning checks)
    # without being asked, and each breach at most once until it ended.
    health: dict[str, list[str]] = {}
    for alert in sent:
        if alert["kind"] != "run_failure":
            health.setdefault(alert["breach"], []).append(alert["status"])
    assert any(breach.startswith("check_failed:bronze/") for breach in health), health
    for states in health.values():
        assert states == ["firing", "resolved"] * (len(states) // 2) + ["firing"] * (len(states) % 2), health

    # One more run of everything: its blocking checks pass, and nothing is lost or held twice.
    final = soak.command("dagster", "asset", "materialize", "-m", "lakehouse.definitions", "--select", "*")
    assert final.returncode == 0, final.stderr[-3000:]
    [last] = instance.get_runs(limit=1)
    lake = Lake(soak.folder, sqlite_source(soak.folder))
    for checks in all_checks(lake.contracts):
        for key in checks.check_keys:
            if key.name in RECONCILIATION:
                record = instance.get_latest_asset_check_evaluation_record(key)
                assert record is not None and record.run_id == last.run_id, key
                assert record.evaluation.passed, (key, record.evaluation.description)
    assert_bronze_holds_each_version_once(lake)
    assert_gold_equals_a_rebuild_in_one_piece(lake)
