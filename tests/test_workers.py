"""Steps across worker processes: `LAKEHOUSE_EXECUTOR=celery` with a Redis broker on loopback and
two Celery workers (`make worker`), each one process wide. One run's independent steps must
execute in both workers, none in the run's own process, and the lake must hold what the
in-process runs give: each row version once, the ledgers at the newest input, gold equal to a
rebuild and the marts in the lake equal to the warehouse's. A worker killed in the middle of a
step fails its run instead of leaving it waiting, and the next run completes the lake."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest
from conftest import (
    MATERIALIZE_ALL,
    PROJECT,
    SCALEOUT_SECOND_HALF,
    TEST_SALT,
    Lake,
    assert_bronze_holds_each_version_once,
    assert_gold_equals_a_rebuild_in_one_piece,
    assert_marts_in_the_lake_equal_the_warehouse,
    command_environment,
    ledgers,
    local_deployment,
    run_command,
    sqlite_source,
)
from dagster_server import free_port, stop_group, wait_for

from lakehouse.orchestration.executors import step_workers
from lakehouse.orchestration.run_health import PID_TAG

pytestmark = [pytest.mark.scaleout, pytest.mark.slow, SCALEOUT_SECOND_HALF]

WORKERS = ("worker0", "worker1")


def pong(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as connection:
            connection.sendall(b"PING\r\n")
            return connection.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[str]:
    """A Redis server on a free loopback port, keeping nothing on disk, for one test: no task a
    test leaves queued reaches another's workers. Its URL."""
    server = shutil.which("redis-server")
    if server is None:
        if os.environ.get("CI"):
            pytest.fail("redis-server is not installed: .ci/run installs Debian's redis-server")
        pytest.skip("no redis-server (Debian's redis-server; .ci/run installs it)")
    port = free_port()
    with (tmp_path / "redis.log").open("wb") as log:
        process = subprocess.Popen(
            [server, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        wait_for("Redis", lambda: pong(port), 30, every=0.1)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        stop_group(process)


def start_workers(folder: Path, settings: dict[str, str], *names: str) -> dict[str, subprocess.Popen]:
    """`make worker` for each name, one process wide, each in a process group of its own;
    returned once every one takes tasks."""
    environment = command_environment(folder, **settings)
    environment["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{environment['PATH']}"
    workers = {}
    for name in names:
        with (folder / f"{name}.log").open("wb") as output:
            workers[name] = subprocess.Popen(
                ["make", "-s", "worker", f"WORKER_NAME={name}", "WORKER_CONCURRENCY=1"],
                cwd=PROJECT, env=environment, stdout=output, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
    for name, worker in workers.items():
        log = folder / f"{name}.log"
        wait_for(f"worker {name}", lambda log=log, worker=worker: ready(log, worker), 120, every=0.5)
    return workers


def ready(log: Path, worker: subprocess.Popen) -> bool:
    assert worker.poll() is None, log.read_text()[-3000:]
    return " ready." in log.read_text()


def step_processes(home: Path) -> tuple[int, dict[str, int]]:
    """The newest run's own process id and, for each of its steps, the process it started in."""
    with dg.DagsterInstance.from_config(str(home)) as instance:
        run = instance.get_runs(limit=1)[0]
        started = instance.all_logs(run.run_id, of_type=dg.DagsterEventType.STEP_START)
        return int(run.tags[PID_TAG]), {entry.step_key: entry.dagster_event.pid for entry in started}


def celery_deployment(folder: Path, broker: str) -> dict[str, str]:
    return local_deployment(
        folder, LAKEHOUSE_PII_SALT=TEST_SALT, LAKEHOUSE_EXECUTOR="celery", LAKEHOUSE_CELERY_BROKER=broker
    )


def assert_the_lake_is_exact(lake: Lake, settings: dict[str, str]) -> dict[str, int | None]:
    """What every run must leave, wherever its steps ran; returns bronze's watermarks."""
    assert_bronze_holds_each_version_once(lake)
    assert_gold_equals_a_rebuild_in_one_piece(lake)
    watermarks = ledgers(lake)
    warehouse = Path(settings["LAKEHOUSE_WAREHOUSE"])
    assert len(assert_marts_in_the_lake_equal_the_warehouse(lake, warehouse)) == 5
    return watermarks


def assert_the_steps_ran_in(workers: list[subprocess.Popen], home: Path) -> None:
    """Every step of the newest run in the instance at `home` in a worker's process group (the
    worker and its pool process), each worker used, none in the run's own process."""
    run_process, steps = step_processes(home)
    assert {"bronze__orders", "silver_orders", "gold__fct_orders", "dbt_models"} <= set(steps)
    groups = {step: os.getpgid(pid) for step, pid in steps.items()}
    assert set(groups.values()) == {worker.pid for worker in workers}, groups
    assert run_process not in steps.values()


def test_a_worker_killed_mid_step_fails_its_run_and_the_next_run_completes_the_lake_in_both_workers(
    tmp_path: Path, broker: str
) -> None:
    """The first load loses a worker in its dbt step and fails; the worker back, the next run's
    steps execute in both workers and complete the lake, each row version once."""
    settings = celery_deployment(tmp_path, broker)
    lake = Lake(tmp_path, sqlite_source(tmp_path))
    home = Path(settings["DAGSTER_HOME"])
    workers = start_workers(tmp_path, settings, *WORKERS)
    run = None
    try:
        command = [str(Path(sys.executable).parent / "dagster"), *MATERIALIZE_ALL[1:]]
        environment = command_environment(tmp_path, **settings)
        with (tmp_path / "run.log").open("wb") as log:
            run = subprocess.Popen(command, cwd=PROJECT, env=environment, stdout=log, stderr=log)
        with dg.DagsterInstance.from_config(str(home)) as instance:

            def dbt_taken() -> tuple[str, str] | None:
                runs = instance.get_runs(limit=1)
                taken = step_workers(instance, runs[0].run_id) if runs else {}
                return (runs[0].run_id, taken["dbt_models"]) if "dbt_models" in taken else None

            # The longest step, so that the worker is killed in the middle of it.
            run_id, holder = wait_for("a worker to take the dbt step", dbt_taken, 240, every=0.2)
            name = holder.split("@")[0]
            os.killpg(workers[name].pid, signal.SIGKILL)
            workers[name].wait(timeout=30)
            assert run.wait(timeout=120) != 0

            failed = instance.get_run_by_id(run_id)
            assert failed is not None and failed.status == dg.DagsterRunStatus.FAILURE
            (failure,) = instance.all_logs(run_id, of_type=dg.DagsterEventType.RUN_FAILURE)
            assert f"Celery worker {holder} stopped answering while running dbt_models" in failure.message
        assert "Submitting celery task" in (tmp_path / "run.log").read_text()
        alerts = [json.loads(line) for line in Path(settings["LAKEHOUSE_ALERTS"]).read_text().splitlines()]
        assert [alert["run_id"] for alert in alerts] == [run_id]

        # The worker back; the next run finishes what the killed one left, each row once.
        workers |= start_workers(tmp_path, settings, name)
        done = run_command(MATERIALIZE_ALL, tmp_path, **settings)
        assert done.returncode == 0, done.stderr[-3000:]
        assert "Submitting celery task" in done.stderr
        assert_the_steps_ran_in(list(workers.values()), home)
        assert None not in assert_the_lake_is_exact(lake, settings).values()
    finally:
        if run is not None and run.poll() is None:
            run.kill()
        for worker in workers.values():
            if worker.poll() is None:
                stop_group(worker)
