"""Runs whose worker died: found, failed, their pool slots freed and alerted, with nobody watching.

A run killed hard (SIGKILL, a crashed machine, an out-of-memory kill) never writes its end: it
stays STARTED, counts against the run queue's limit and keeps the pool slots its steps held (the
dbt step's `duckdb_warehouse`), so every later run waits for it forever. Dagster's own run
monitoring cannot see such runs: the default run launcher has no worker health check, and a
`dagster asset materialize` run has no launcher at all.

So each run records where it runs (host and process id, as run tags) when it starts, and two
sweepers fail the runs whose process is gone: every run's executor before its first step (the
CLI case), and the `fail_dead_runs` sensor in the daemon (the queue case). A run on another host
is never judged from here: its process cannot be seen.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg

from lakehouse.alerts import AlertSink, run_failure_alert
from lakehouse.settings import setting

HOST_TAG = "lakehouse/host"
PID_TAG = "lakehouse/pid"
# Set on a run this module failed: its alert is sent here, the failure sensor leaves it alone.
DEAD_WORKER_TAG = "lakehouse/dead_worker"
IN_PROGRESS = [dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.CANCELING]
# A process that started later than its run by more than this is another process with a reused id.
PID_REUSE_SLACK_SECONDS = 2.0
STEP_ENDS = {
    dg.DagsterEventType.STEP_SUCCESS,
    dg.DagsterEventType.STEP_FAILURE,
    dg.DagsterEventType.STEP_SKIPPED,
}


@dataclass(frozen=True)
class Worker:
    """Where a run executes, from its tags."""

    host: str
    pid: int

    def describe(self) -> str:
        return f"pid {self.pid} on {self.host}"


def worker_of(run: dg.DagsterRun) -> Worker | None:
    host, pid = run.tags.get(HOST_TAG), run.tags.get(PID_TAG)
    return Worker(host, int(pid)) if host and pid and pid.isdigit() else None


def record_worker(instance: dg.DagsterInstance, run_id: str) -> None:
    """Tag the run with this host and process: the process that executes it."""
    instance.add_run_tags(run_id, {HOST_TAG: socket.gethostname(), PID_TAG: str(os.getpid())})


def _process_started_at(pid: int) -> float | None:
    """The process's start as a Unix time (Linux's /proc); None where that cannot be read."""
    try:
        ticks = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
        boot = next(
            float(line.split()[1])
            for line in Path("/proc/stat").read_text().splitlines()
            if line.startswith("btime")
        )
    except (OSError, IndexError, ValueError, StopIteration):
        return None
    return boot + ticks / os.sysconf("SC_CLK_TCK")


def _pid_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process: it exists
    # A zombie has exited and waits for its parent to read its status.
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False  # it ended since
    except (OSError, IndexError):
        return True  # no /proc here: the signal said it exists


def is_alive(worker: Worker, run_started: float | None) -> bool | None:
    """Whether the run's process still runs; None when it runs on another host (unknown here)."""
    if worker.host != socket.gethostname():
        return None
    if not _pid_running(worker.pid):
        return False
    started = _process_started_at(worker.pid)
    # The same id given to a newer process after the run's own one ended.
    return not (
        started is not None and run_started is not None and started > run_started + PID_REUSE_SLACK_SECONDS
    )


def _unfinished_steps(instance: dg.DagsterInstance, run_id: str) -> list[str]:
    records = instance.get_records_for_run(
        run_id, of_type={dg.DagsterEventType.STEP_START, *STEP_ENDS}, limit=10_000
    ).records
    started = {
        r.event_log_entry.step_key
        for r in records
        if r.event_log_entry.dagster_event_type == dg.DagsterEventType.STEP_START
    }
    ended = {r.event_log_entry.step_key for r in records if r.event_log_entry.dagster_event_type in STEP_ENDS}
    return sorted(key for key in started - ended if key is not None)


def fail_dead_runs(instance: dg.DagsterInstance, alerts: AlertSink, log: Any) -> list[str]:
    """Fail every in-progress run of this host whose process is gone, free its pool slots and
    alert it; the ids of the runs failed. `log` is a Dagster or Python logger."""
    failed = []
    for record in instance.get_run_records(dg.RunsFilter(statuses=IN_PROGRESS)):
        run = record.dagster_run
        worker = worker_of(run)
        if worker is None or worker.pid == os.getpid() or is_alive(worker, record.start_time) is not False:
            continue
        # Another sweeper may have got there first.
        current = instance.get_run_by_id(run.run_id)
        if current is None or current.status not in IN_PROGRESS:
            continue
        steps = _unfinished_steps(instance, run.run_id)
        message = (
            f"run {run.run_id} ({run.job_name}) marked failed: its process ({worker.describe()}) is gone, "
            f"killed while running {', '.join(steps) or 'no step'}; its pool slots are freed"
        )
        instance.add_run_tags(run.run_id, {DEAD_WORKER_TAG: "true"})
        instance.report_run_failed(current, message)
        instance.event_log_storage.free_concurrency_slots_for_run(run.run_id)
        log.warning(message)
        alerts.send(run_failure_alert(run, steps, message))
        failed.append(run.run_id)
    return failed


def describe_pool_holders(instance: dg.DagsterInstance, pools: set[str]) -> Iterator[str]:
    """One line per run holding a slot of `pools`: which run and step, and whether it is alive."""
    for pool in sorted(pools):
        info = instance.event_log_storage.get_concurrency_info(pool)
        for slot in info.claimed_slots:
            record = next(iter(instance.get_run_records(dg.RunsFilter(run_ids=[slot.run_id]), limit=1)), None)
            worker = worker_of(record.dagster_run) if record else None
            if record is None:
                state = "a run that no longer exists"
            elif worker is None:
                state = f"status {record.dagster_run.status.value}, process not recorded"
            else:
                alive = is_alive(worker, record.start_time)
                verdict = {True: "alive", False: "gone", None: "on another host, not checked from here"}[
                    alive
                ]
                state = f"status {record.dagster_run.status.value}, process {worker.describe()} {verdict}"
            yield (
                f"pool {pool} ({info.limit} slot(s)) is held by run {slot.run_id} step {slot.step_key} "
                f"({state}): steps of this run in that pool wait for it"
            )


def alert_sink() -> AlertSink:
    """The alerts log and webhook the definitions' `alerts` resource names."""
    return AlertSink(log_path=setting("LAKEHOUSE_ALERTS"), webhook=setting("LAKEHOUSE_ALERT_WEBHOOK"))


class SweepingExecutor(dg.Executor):
    """Another executor, after recording this run's process and failing the dead runs: the check
    every run makes before its first step, CLI runs included (no daemon watches those)."""

    def __init__(self, inner: dg.Executor) -> None:
        self._inner = inner

    # The plan, its context and the retry settings are types Dagster does not export.
    @property
    def retries(self) -> Any:
        return self._inner.retries

    @property
    def step_dependency_config(self) -> Any:
        return self._inner.step_dependency_config

    def execute(self, plan_context: Any, execution_plan: Any) -> Iterator[dg.DagsterEvent]:
        instance = plan_context.instance
        record_worker(instance, plan_context.run_id)
        fail_dead_runs(instance, alert_sink(), plan_context.log)
        pools = {step.pool for step in execution_plan.get_steps_to_execute_in_topo_order() if step.pool}
        for line in describe_pool_holders(instance, pools):
            plan_context.log.warning(line)
        yield from self._inner.execute(plan_context, execution_plan)


@dg.executor(
    name="in_process",
    config_schema=dg.in_process_executor.config_schema,
)
def sweeping_in_process_executor(init_context: dg.InitExecutorContext) -> dg.Executor:
    return SweepingExecutor(dg.in_process_executor.executor_creation_fn(init_context))
