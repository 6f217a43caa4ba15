"""Step durations of the latest run in the Dagster instance (DAGSTER_HOME), slowest first.

python bench/step_times.py [--match TEXT]
"""

from __future__ import annotations

import argparse

import dagster as dg


def step_times(instance: dg.DagsterInstance) -> tuple[str, list[tuple[str, float]]]:
    """(run id, [(step key, seconds)]) of the newest run, from its STEP_START/STEP_SUCCESS events."""
    run = instance.get_runs(limit=1)[0]
    started: dict[str, float] = {}
    durations = []
    for record in instance.all_logs(run.run_id):
        event = record.dagster_event
        if event is None or event.step_key is None:
            continue
        if event.event_type == dg.DagsterEventType.STEP_START:
            started[event.step_key] = record.timestamp
        elif event.event_type in (dg.DagsterEventType.STEP_SUCCESS, dg.DagsterEventType.STEP_FAILURE):
            durations.append((event.step_key, record.timestamp - started[event.step_key]))
    return run.run_id, sorted(durations, key=lambda item: -item[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--match", default="", help="only steps whose key contains this text")
    args = parser.parse_args()
    with dg.DagsterInstance.get() as instance:
        run_id, durations = step_times(instance)
    print(f"run {run_id}\n\n| step | seconds |\n| --- | ---: |")
    for step, seconds in durations:
        if args.match in step:
            print(f"| {step} | {seconds:.2f} |")


if __name__ == "__main__":
    main()
