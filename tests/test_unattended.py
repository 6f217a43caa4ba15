"""Runs killed hard leave nothing that blocks the next run: the dead run is failed, its pool
slots are freed and it is alerted, by the next CLI run or by the daemon, with nobody watching."""

import itertools
import json
import os
import shlex
import signal
import socket
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import dagster as dg
import pytest
from conftest import (
    PROJECT,
    Lake,
    assert_bronze_holds_each_version_once,
    command_environment,
    local_deployment,
    sqlite_source,
)
from dagster_graphql import DagsterGraphQLClient
from dagster_server import DagsterServer, wait_for

from lakehouse.marts.assets import WAREHOUSE_POOL
from lakehouse.orchestration.run_health import (
    DEAD_WORKER_TAG,
    HOST_TAG,
    PID_TAG,
    describe_pool_holders,
    fail_dead_runs,
)
from lakehouse.resources import AlertSink

DBT_STEP = "dbt_models"
INGEST_AGAIN = "dagster asset materialize -m lakehouse.definitions --select 'group:bronze or group:silver'"
# Bounds, not expectations: a run at this scale takes well under a minute on an idle machine.
RUN_SECONDS = 240
# A supervisor's SIGTERM (systemd, Kubernetes) must end a run well before its SIGKILL follows.
STOP_SECONDS = 50


@dataclass
class Deployment:
    """A demo lake with a Dagster instance the Makefile wrote, as `make run` uses them."""

    folder: Path
    home: Path
    environment: dict[str, str]

    @property
    def failure_alerts(self) -> list[dict]:
        """The failed-run alerts sent (the daemon's health sensor sends the demo's breaches too)."""
        log = self.folder / "alerts.jsonl"
        alerts = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
        return [alert for alert in alerts if alert["kind"] == "run_failure"]

    def instance(self) -> dg.DagsterInstance:
        return dg.DagsterInstance.from_config(str(self.home))


@pytest.fixture
def deployment(tmp_path: Path) -> Deployment:
    settings = local_deployment(tmp_path)
    return Deployment(tmp_path, Path(settings["DAGSTER_HOME"]), command_environment(tmp_path, **settings))


def started_step(instance: dg.DagsterInstance, run_id: str, step_key: str) -> bool:
    records = instance.get_records_for_run(run_id, of_type=dg.DagsterEventType.STEP_START).records
    return any(record.event_log_entry.step_key == step_key for record in records)


def only_run(instance: dg.DagsterInstance) -> dg.DagsterRun | None:
    runs = instance.get_runs()
    return runs[0] if len(runs) == 1 else None


def slot_holders(instance: dg.DagsterInstance) -> set[str]:
    return {
        slot.run_id for slot in instance.event_log_storage.get_concurrency_info(WAREHOUSE_POOL).claimed_slots
    }


def started_run(instance: dg.DagsterInstance, job: str, host: str, pid: int, pool: str) -> str:
    """A run recorded as STARTED on `host` by process `pid`, holding a slot of `pool`."""
    run = instance.add_run(
        dg.DagsterRun(
            job_name=job, status=dg.DagsterRunStatus.STARTED, tags={HOST_TAG: host, PID_TAG: str(pid)}
        )
    )
    instance.event_log_storage.initialize_concurrency_limit_to_default(pool)
    assert instance.event_log_storage.claim_concurrency_slot(pool, run.run_id, f"{job}_step").is_claimed
    return run.run_id


def test_only_runs_whose_process_is_gone_here_are_failed_and_holders_are_named(tmp_path: Path) -> None:
    made = subprocess.run(
        ["make", "-s", "instance", f"DAGSTER_HOME={tmp_path}", "LAKEHOUSE_DEPLOYMENT=local"],
        cwd=PROJECT, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    ended = subprocess.Popen(["true"])
    ended.wait()  # reaped: its id names no process
    host = socket.gethostname()
    with dg.DagsterInstance.from_config(str(tmp_path)) as instance:
        # A library's loan ledger, not the shop: the sweep knows nothing of what runs did.
        live = started_run(instance, "loans", host, os.getpid(), "catalogue_db")
        dead = started_run(instance, "returns", host, ended.pid, "loans_db")
        remote = started_run(instance, "fines", "another-host", ended.pid, "fines_db")

        holders = list(describe_pool_holders(instance, {"catalogue_db", "loans_db", "fines_db"}))
        assert [line.split(" (status ")[1].split(")")[0] for line in holders] == [
            f"STARTED, process pid {os.getpid()} on {host} alive",
            f"STARTED, process pid {ended.pid} on another-host on another host, not checked from here",
            f"STARTED, process pid {ended.pid} on {host} gone",
        ]
        assert f"run {dead} step returns_step" in holders[2]

        sink = AlertSink(log_path=str(tmp_path / "alerts.jsonl"))
        assert fail_dead_runs(instance, sink, dg.get_dagster_logger()) == [dead]
        assert fail_dead_runs(instance, sink, dg.get_dagster_logger()) == []  # once only
        statuses = {run_id: instance.get_run_by_id(run_id).status for run_id in (live, dead, remote)}
        assert statuses == {
            live: dg.DagsterRunStatus.STARTED,
            dead: dg.DagsterRunStatus.FAILURE,
            remote: dg.DagsterRunStatus.STARTED,
        }
        assert instance.event_log_storage.get_concurrency_info("loans_db").claimed_slots == []
        assert len(instance.event_log_storage.get_concurrency_info("catalogue_db").claimed_slots) == 1
    [alert] = [json.loads(line) for line in (tmp_path / "alerts.jsonl").read_text().splitlines()]
    assert (alert["run_id"], alert["job"]) == (dead, "returns")


def start_materialize(deployment: Deployment, selection: str) -> subprocess.Popen:
    """`dagster asset materialize` in a process group of its own, as a shell with `set -m` starts it."""
    with (deployment.folder / "runs.log").open("ab") as log:
        return subprocess.Popen(
            [str(Path(sys.executable).parent / "dagster"), "asset", "materialize",
             "-m", "lakehouse.definitions", "--select", selection],
            cwd=PROJECT, env=deployment.environment, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip


def run_log(deployment: Deployment) -> str:
    """What the runs `start_materialize` started printed."""
    return (deployment.folder / "runs.log").read_text(errors="replace")


def kill_group(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=30)


@pytest.fixture
def killed_in_dbt(deployment: Deployment) -> str:
    """`dagster asset materialize --select '*'`, its process group killed while dbt runs: the run id."""
    process = start_materialize(deployment, "*")

    def still_running(check: Callable[[], object]) -> Callable[[], object]:
        """`check`, failing at once with what the run printed if it ended before its dbt step."""

        def checked() -> object:
            assert process.poll() is None, f"the run ended first:\n{run_log(deployment)[-3000:]}"
            return check()

        return checked

    try:
        with deployment.instance() as instance:
            run = wait_for("the run", still_running(lambda: only_run(instance)), RUN_SECONDS, every=0.5)
            wait_for(
                "the dbt step",
                still_running(lambda: started_step(instance, run.run_id, DBT_STEP)),
                RUN_SECONDS,
                every=0.2,
            )
    except TimeoutError as error:
        raise TimeoutError(f"{error}; the run printed:\n{run_log(deployment)[-3000:]}") from None
    finally:
        kill_group(process)
    return run.run_id


def test_a_run_killed_in_dbt_is_failed_freed_and_alerted_by_the_next_cli_run(
    deployment: Deployment, killed_in_dbt: str
) -> None:
    with deployment.instance() as instance:
        # What a kill leaves: the run still STARTED, holding the warehouse pool's one slot.
        assert instance.get_run_by_id(killed_in_dbt).status == dg.DagsterRunStatus.STARTED
        assert slot_holders(instance) == {killed_in_dbt}

    again = subprocess.run(
        [str(Path(sys.executable).parent / "dagster"), "asset", "materialize",
         "-m", "lakehouse.definitions", "--select", "kind:dbt"],
        cwd=PROJECT, env=deployment.environment, capture_output=True, text=True, timeout=RUN_SECONDS,
    )  # fmt: skip
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"run {killed_in_dbt} (__ASSET_JOB) marked failed" in again.stderr

    with deployment.instance() as instance:
        dead = instance.get_run_by_id(killed_in_dbt)
        assert dead.status == dg.DagsterRunStatus.FAILURE
        assert slot_holders(instance) == set()
        [second] = [run for run in instance.get_runs() if run.run_id != killed_in_dbt]
        assert second.status == dg.DagsterRunStatus.SUCCESS
    [alert] = deployment.failure_alerts
    assert (alert["kind"], alert["run_id"], alert["failed_steps"]) == (
        "run_failure",
        killed_in_dbt,
        [DBT_STEP],
    )


def pending_runs(instance: dg.DagsterInstance, pool: str) -> set[str]:
    """The runs with a step waiting for a slot of `pool` (not yet given one)."""
    info = instance.event_log_storage.get_concurrency_info(pool)
    return {step.run_id for step in info.pending_steps if step.assigned_timestamp is None}


@pytest.fixture
def live_holder(deployment: Deployment) -> Iterator[tuple[subprocess.Popen, str]]:
    """A live process recorded as a STARTED run holding the warehouse pool's one slot."""
    holder = subprocess.Popen(["sleep", str(RUN_SECONDS)])
    try:
        with deployment.instance() as instance:
            holding = started_run(
                instance, "catalogue_rebuild", socket.gethostname(), holder.pid, WAREHOUSE_POOL
            )
        yield holder, holding
    finally:
        holder.kill()
        holder.wait()


def test_a_run_waiting_for_the_warehouse_pool_names_the_live_run_holding_it(
    deployment: Deployment, live_holder: tuple[subprocess.Popen, str]
) -> None:
    holder, holding = live_holder
    process = start_materialize(deployment, "kind:dbt")
    try:

        def holder_line() -> str | None:
            lines = run_log(deployment).splitlines()
            return next((line for line in lines if f"held by run {holding}" in line), None)

        line = wait_for("the line naming the holder", holder_line, RUN_SECONDS)
        assert f"pool {WAREHOUSE_POOL} (1 slot(s))" in line
        assert f"process pid {holder.pid} on {socket.gethostname()} alive" in line
        with deployment.instance() as instance:
            # A live holder is waited for, never failed.
            assert instance.get_run_by_id(holding).status == dg.DagsterRunStatus.STARTED
    finally:
        kill_group(process)


@contextmanager
def waiting_for_the_pool(
    deployment: Deployment, selection: str
) -> Iterator[tuple[subprocess.Popen, dg.DagsterInstance, str]]:
    """`dagster asset materialize` of `selection`, once its run waits for the warehouse pool: the
    process, the instance and the run's id."""
    process = start_materialize(deployment, selection)
    try:
        with deployment.instance() as instance:
            [waiting] = wait_for(
                "the run waiting for the pool", lambda: pending_runs(instance, WAREHOUSE_POOL), RUN_SECONDS
            )
            yield process, instance, waiting
    finally:
        kill_group(process)


def test_a_run_waiting_for_a_pool_stops_on_sigterm_and_leaves_the_queue(
    deployment: Deployment, live_holder: tuple[subprocess.Popen, str]
) -> None:
    _holder, holding = live_holder
    with waiting_for_the_pool(deployment, "kind:dbt") as (process, instance, stopped):
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=STOP_SECONDS)
        assert instance.get_run_by_id(stopped).status == dg.DagsterRunStatus.CANCELED
        [canceled] = instance.get_records_for_run(stopped, of_type=dg.DagsterEventType.RUN_CANCELED).records
        assert canceled.event_log_entry.message.startswith(f"run {stopped} (__ASSET_JOB) canceled: signal 15")
        assert pending_runs(instance, WAREHOUSE_POOL) == set()
        assert slot_holders(instance) == {holding}  # the live holder keeps its slot


def test_a_run_waiting_for_a_pool_whose_holder_dies_goes_on_by_itself(
    deployment: Deployment, live_holder: tuple[subprocess.Popen, str]
) -> None:
    holder, holding = live_holder
    with waiting_for_the_pool(deployment, "*") as (process, instance, _waiting):
        holder.kill()  # no daemon runs here: the waiting run itself must notice
        assert process.wait(timeout=RUN_SECONDS) == 0, run_log(deployment)[-3000:]
        dead = instance.get_run_by_id(holding)
        assert dead.status == dg.DagsterRunStatus.FAILURE and dead.tags.get(DEAD_WORKER_TAG)
        assert slot_holders(instance) == set()
    assert [alert["run_id"] for alert in deployment.failure_alerts] == [holding]


@contextmanager
def serving(deployment: Deployment) -> Iterator[DagsterServer]:
    served = DagsterServer(
        PROJECT, deployment.home, deployment.environment, deployment.folder / "dagster-dev.log"
    )
    try:
        try:
            served.start()
        except (TimeoutError, RuntimeError) as error:
            pytest.fail(f"{error}\n--- dagster dev log, last lines ---\n{served.tail()}")
        yield served
    finally:
        served.stop()


@pytest.fixture
def server(deployment: Deployment) -> Iterator[DagsterServer]:
    with serving(deployment) as served:
        yield served


@pytest.fixture
def wide_server(deployment: Deployment) -> Iterator[DagsterServer]:
    """The daemon of an instance whose queue launches three runs at once, as one whose operator
    raised `max_concurrent_runs` has."""
    config = deployment.home / "dagster.yaml"
    config.write_text(config.read_text().replace("max_concurrent_runs: 1", "max_concurrent_runs: 3"))
    with serving(deployment) as served:
        yield served


def test_the_daemon_fails_a_killed_cli_run_and_launches_the_queued_one(
    deployment: Deployment, server: DagsterServer
) -> None:
    # A killed run worker of a live code server is failed by the code server itself; a CLI run
    # has no such parent, and nothing but the sweep fails it.
    client = DagsterGraphQLClient("127.0.0.1", port_number=server.port)
    # A locked source keeps the CLI run in its extraction (retried with backoff) until killed.
    with closing(sqlite3.connect(deployment.folder / "source" / "shop.db", isolation_level=None)) as source:
        source.execute("begin exclusive")
        process = start_materialize(deployment, "bronze/products")
        try:
            with server.instance() as instance:
                killed = wait_for(
                    "the CLI run's process",
                    lambda: (run := only_run(instance)) and run.tags.get(PID_TAG) and run.run_id,
                    RUN_SECONDS,
                    every=0.2,
                )
                kill_group(process)
                source.execute("rollback")
                queued = client.submit_job_execution("ingest")

                def finished() -> dg.DagsterRun | None:
                    run = instance.get_run_by_id(queued)
                    return run if run and run.is_finished else None

                # The queue launches nothing while the dead run counts as in progress.
                assert wait_for("the queued run", finished, RUN_SECONDS).status == dg.DagsterRunStatus.SUCCESS
                dead = instance.get_run_by_id(killed)
                assert dead.status == dg.DagsterRunStatus.FAILURE and dead.tags.get(DEAD_WORKER_TAG)
        finally:
            kill_group(process)
    # One alert for the dead run: the failure sensor leaves it to the sweep that failed it.
    assert [alert["run_id"] for alert in deployment.failure_alerts] == [killed]


def finished(instance: dg.DagsterInstance, run_ids: list[str]) -> list[dg.RunRecord] | None:
    """The runs' records once every one of them has finished."""
    records = instance.get_run_records(dg.RunsFilter(run_ids=run_ids))
    return records if all(record.dagster_run.is_finished for record in records) else None


def test_three_runs_the_daemon_launches_at_once_append_each_row_version_once(
    deployment: Deployment, wide_server: DagsterServer
) -> None:
    client = DagsterGraphQLClient("127.0.0.1", port_number=wide_server.port)
    lake = Lake(deployment.folder, sqlite_source(deployment.folder))
    with wide_server.instance() as instance:
        for batch in range(2):  # a first load, then an incremental batch, each raced
            if batch:
                advanced = wide_server.command(["lakehouse", "demo", "advance", "--batches", "3"])
                assert advanced.returncode == 0, advanced.stderr
            submitted = [client.submit_job_execution("ingest") for _ in range(3)]
            records = wait_for("the three runs", partial(finished, instance, submitted), 2 * RUN_SECONDS)
            assert {record.dagster_run.status for record in records} == {dg.DagsterRunStatus.SUCCESS}
            # They did run at once: one started before another had ended (the queue starts them
            # together; how far they overlap depends on how fast each worker comes up).
            spans = sorted((record.start_time, record.end_time) for record in records)
            assert any(start < end for (_, end), (start, _) in itertools.pairwise(spans)), spans
            assert_bronze_holds_each_version_once(lake)
    # One more run finds nothing new, and its blocking reconciliation checks pass.
    again = wide_server.command(shlex.split(INGEST_AGAIN))
    assert again.returncode == 0, again.stderr[-3000:]
