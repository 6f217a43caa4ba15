"""Where a run's steps execute, chosen by `LAKEHOUSE_EXECUTOR`.

`in_process` (the default): every step in the run's own process. Steps are short and mostly
I/O, so on one machine this avoids importing the definitions again for every step, which would
outweigh most steps.

`celery`: each step is a task on a Celery queue (`LAKEHOUSE_CELERY_BROKER`, Redis), executed by
whichever worker takes it (`make worker` on each worker machine), so the independent steps of one
run go to different processes or machines. The run's own process only coordinates. Workers need
the same settings, the same lake and the same Dagster instance as the run (a shared deployment
across machines); the Delta ledgers keep every step exactly-once wherever it executes.

Either way, the run fails the dead runs before its first step and watches for them while it
executes (`lakehouse/orchestration/run_health.py`). With Celery it also watches the workers
executing its steps: a worker killed in the middle of a step never reports back, and Celery's
step loop would wait for it forever, holding the run queue. A worker that stops answering pings
fails the run instead; the next run starts where the Delta ledgers stand.
"""

from __future__ import annotations

import os

import dagster as dg

from lakehouse.orchestration.run_health import STEP_ENDS, LostSteps, sweeping
from lakehouse.settings import DEFAULTS, SettingsError, setting

EXECUTORS = ("in_process", "celery")
# dagster-celery's engine event as a worker takes a step: the worker's name is in its metadata.
CELERY_WORKER = "Celery worker"
# A worker answers a ping from its main process even while its pool executes steps; a loaded
# machine may still miss one, so only a second missed ping in a row counts as gone.
PING_SECONDS = 2.0
MISSED_PINGS = 2


def step_workers(instance: dg.DagsterInstance, run_id: str) -> dict[str, str]:
    """The run's steps that a Celery worker took and that have not ended, with that worker."""
    records = instance.get_records_for_run(
        run_id, of_type={dg.DagsterEventType.ENGINE_EVENT, *STEP_ENDS}, limit=10_000
    ).records
    taken, ended = {}, set()
    for record in records:
        entry = record.event_log_entry
        event = entry.dagster_event
        if event is None or entry.step_key is None:
            continue
        metadata = getattr(event.event_specific_data, "metadata", None) or {}
        if event.event_type in STEP_ENDS:
            ended.add(entry.step_key)
        elif CELERY_WORKER in metadata:
            taken[entry.step_key] = metadata[CELERY_WORKER].value
    return {step: worker for step, worker in taken.items() if step not in ended}


def lost_celery_steps(broker: str) -> LostSteps:
    """The run watch's check of its Celery workers, through `broker`."""
    from celery import Celery

    control = Celery(broker=broker).control
    missed: dict[str, int] = {}

    def lost(instance: dg.DagsterInstance, run_id: str) -> str | None:
        steps = step_workers(instance, run_id)
        workers = sorted(set(steps.values()))
        if not workers:
            return None
        replies = control.ping(destination=workers, timeout=PING_SECONDS)
        answered = {name for reply in replies for name in reply}
        for worker in workers:
            missed[worker] = 0 if worker in answered else missed.get(worker, 0) + 1
        gone = [worker for worker in workers if missed[worker] >= MISSED_PINGS]
        if not gone:
            return None
        lost_steps = sorted(step for step, worker in steps.items() if worker in gone)
        return (
            f"run {run_id} marked failed: Celery worker {', '.join(gone)} stopped answering while running "
            f"{', '.join(lost_steps)}; its pool slots are freed, and the next run starts where the "
            "Delta ledgers stand"
        )

    return lost


def run_executor() -> dg.ExecutorDefinition:
    """The executor of every job, as `LAKEHOUSE_EXECUTOR` says."""
    kind = setting("LAKEHOUSE_EXECUTOR")
    if kind == "in_process":
        return sweeping(dg.in_process_executor)
    if kind == "celery":
        # Imported only here: one machine never loads Celery.
        from dagster_celery import celery_executor

        # By name when set, so the run's config in the UI never shows a password in the URL.
        name = "LAKEHOUSE_CELERY_BROKER"
        url = {"env": name} if os.environ.get(name) else DEFAULTS[name]
        # The broker holds the results too: one service to run.
        watch = lost_celery_steps(setting(name))
        return sweeping(celery_executor, watch).configured({"broker": url, "backend": url})
    raise SettingsError(f"LAKEHOUSE_EXECUTOR must be one of {', '.join(EXECUTORS)}, not '{kind}'")
