"""Runs whose worker died: found, failed, their pool slots freed and alerted, with nobody watching.

A run killed hard (SIGKILL, a crashed machine, an out-of-memory kill) never writes its end: it
stays STARTED, counts against the run queue's limit and keeps the pool slots its steps held (the
dbt step's `duckdb_warehouse`), so every later run waits for it forever. Dagster's own run
monitoring cannot see such runs: the default run launcher has no worker health check, and a
`dagster asset materialize` run has no launcher at all.

So each run records where it runs (host and process id, as run tags) when it starts, and the
runs whose process is gone are failed by every run, before its first step and every
`LAKEHOUSE_DEAD_RUN_SWEEP_SECONDS` while it executes (the CLI case, and a run waiting for a
slot whose holder died), and by the `fail_dead_runs` sensor in the daemon (the queue case). A
run on another host is never judged from here: its process cannot be seen.

A run interrupted while it waits (for a pool slot, for a retry) would not take the interrupt
until the wait is over, which may be never: it is canceled after STOP_GRACE_SECONDS instead.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg

from lakehouse.orchestration.alerts import run_failure_alert
from lakehouse.resources import AlertSink
from lakehouse.settings import seconds, setting

HOST_TAG = "lakehouse/host"
PID_TAG = "lakehouse/pid"
# Set on a run this module failed: its alert is sent here, the failure sensor leaves it alone.
DEAD_WORKER_TAG = "lakehouse/dead_worker"
IN_PROGRESS = [dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.CANCELING]
# A process that started later than its run by more than this is another process with a reused id.
PID_REUSE_SLACK_SECONDS = 2.0
# After SIGTERM or SIGINT a run ends on its own within this, unless it is waiting (for a pool
# slot, for a retry), where Dagster only takes an interrupt when the wait is over: then it is
# marked canceled and its process exits. Supervisors send SIGKILL 30 s after SIGTERM or later.
STOP_GRACE_SECONDS = 20
# Asked by a run's watch at every sweep: a message naming the run's steps whose worker is gone
# (another process's or machine's, as with Celery), or None while every one of them is alive.
LostSteps = Callable[[dg.DagsterInstance, str], str | None]
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


def unfinished_steps(instance: dg.DagsterInstance, run_id: str) -> list[str]:
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
        steps = unfinished_steps(instance, run.run_id)
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


def sweep_seconds() -> float:
    """How often running runs and the daemon's sensor look for dead runs; at least once a
    second, since a run's watch thread waits this long between sweeps (0 would spin)."""
    return max(seconds("LAKEHOUSE_DEAD_RUN_SWEEP_SECONDS"), 1.0)


def alert_sink() -> AlertSink:
    """The alerts log and webhook the definitions' `alerts` resource names."""
    return AlertSink(log_path=setting("LAKEHOUSE_ALERTS"), webhook=setting("LAKEHOUSE_ALERT_WEBHOOK"))


class Watch:
    """What a run does beside its steps: fail dead runs and look for its own lost steps every
    `sweep_seconds()`, and end the run if it has not ended STOP_GRACE_SECONDS after an interrupt."""

    def __init__(
        self, instance: dg.DagsterInstance, run: dg.DagsterRun, log: Any, lost_steps: LostSteps | None = None
    ) -> None:
        self.instance, self.run, self.log = instance, run, log
        self.lost_steps = lost_steps
        self.interrupted: int | None = None  # the signal's number
        self._passed_on: Any = None  # the handler each interrupt goes on to
        self._wake = threading.Event()  # an interrupt, or the run's end
        self._ended = threading.Event()
        self._thread = threading.Thread(target=self._watch, name=f"watch-{run.run_id[:8]}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def listen(self) -> None:
        """Note interrupts, then pass them on to the handler in place now.

        Dagster swaps the SIGINT handler (SIGTERM follows it) around its execution and each step,
        so this is called again at every event, in the main thread, where handlers are set."""
        current = signal.getsignal(signal.SIGINT)
        if current == self._on_interrupt or threading.current_thread() is not threading.main_thread():
            return
        self._passed_on = current
        signal.signal(signal.SIGINT, self._on_interrupt)
        signal.signal(signal.SIGTERM, self._on_interrupt)

    def end(self) -> None:
        self._ended.set()
        self._wake.set()
        self._thread.join()
        if signal.getsignal(signal.SIGINT) == self._on_interrupt:
            signal.signal(signal.SIGINT, self._passed_on)
            signal.signal(signal.SIGTERM, self._passed_on)

    def _on_interrupt(self, number: int, frame: Any) -> None:
        self.interrupted = number
        self._wake.set()
        if callable(self._passed_on):
            self._passed_on(number, frame)

    def _watch(self) -> None:
        while not self._ended.is_set():
            if self._wake.wait(sweep_seconds()):
                if self.interrupted is not None and not self._ended.wait(STOP_GRACE_SECONDS):
                    self._stop_now()
                return
            fail_dead_runs(self.instance, alert_sink(), self.log)
            lost = self.lost_steps(self.instance, self.run.run_id) if self.lost_steps else None
            if lost is not None:
                self._fail_now(lost)

    def _fail_now(self, message: str) -> None:
        """Fail the run whose steps were lost with their worker: the step loop would wait for them
        forever, holding the run queue and its pool slots."""
        steps = unfinished_steps(self.instance, self.run.run_id)
        self.instance.add_run_tags(self.run.run_id, {DEAD_WORKER_TAG: "true"})
        self.instance.report_run_failed(self.run, message)
        self.instance.event_log_storage.free_concurrency_slots_for_run(self.run.run_id)
        self.log.error(message)
        alert_sink().send(run_failure_alert(self.run, steps, message))
        # The main thread waits inside the executor's step loop, where no exception reaches it.
        os._exit(1)

    def _stop_now(self) -> None:
        steps = unfinished_steps(self.instance, self.run.run_id)
        message = (
            f"run {self.run.run_id} ({self.run.job_name}) canceled: signal {self.interrupted} came "
            f"{STOP_GRACE_SECONDS} s ago while it waited (for a pool slot or a retry), with "
            f"{', '.join(steps) or 'no step'} unfinished; its pool slots are freed"
        )
        self.instance.report_run_canceled(self.run, message)
        self.instance.event_log_storage.free_concurrency_slots_for_run(self.run.run_id)
        self.log.warning(message)
        # The main thread sleeps inside Dagster's wait, where no exception can reach it.
        os._exit(128 + self.interrupted)


class SweepingExecutor(dg.Executor):
    """Another executor, after recording this run's process and failing the dead runs: the check
    every run makes before its first step, CLI runs included (no daemon watches those). While the
    run executes, a Watch goes on sweeping and makes an interrupt end it even while it waits."""

    def __init__(self, inner: dg.Executor, lost_steps: LostSteps | None = None) -> None:
        self._inner = inner
        self._lost_steps = lost_steps

    # The plan, its context and the retry settings are types Dagster does not export.
    @property
    def retries(self) -> Any:
        return self._inner.retries

    @property
    def step_dependency_config(self) -> Any:
        return self._inner.step_dependency_config

    def __getattr__(self, name: str) -> Any:
        # What an executor's own step loop reads of the run's executor (Celery's `app_args`).
        if name in ("_inner", "_lost_steps"):
            raise AttributeError(name)
        return getattr(self._inner, name)

    def execute(self, plan_context: Any, execution_plan: Any) -> Iterator[dg.DagsterEvent]:
        instance = plan_context.instance
        record_worker(instance, plan_context.run_id)
        fail_dead_runs(instance, alert_sink(), plan_context.log)
        pools = {step.pool for step in execution_plan.get_steps_to_execute_in_topo_order() if step.pool}
        for line in describe_pool_holders(instance, pools):
            plan_context.log.warning(line)
        watch = Watch(instance, plan_context.dagster_run, plan_context.log, self._lost_steps)
        watch.start()
        try:
            for event in self._inner.execute(plan_context, execution_plan):
                watch.listen()
                yield event
        finally:
            watch.end()


def sweeping(definition: dg.ExecutorDefinition, lost_steps: LostSteps | None = None) -> dg.ExecutorDefinition:
    """`definition`, its name and config kept, with each run's sweep and Watch around its steps;
    `lost_steps` tells the Watch which steps died with a worker of their own."""

    @dg.executor(
        name=definition.name,
        config_schema=definition.config_schema,
        requirements=definition.get_requirements,
    )
    def sweeping_executor(init_context: dg.InitExecutorContext) -> dg.Executor:
        return SweepingExecutor(definition.executor_creation_fn(init_context), lost_steps)

    return sweeping_executor
