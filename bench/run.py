"""make bench [SCALE=1] [REPEAT=3]: the pipeline against the physical floor and a dbt alternative.

Each repetition starts from a copy of the demo source built once per scale (cached under
bench/work/, rebuilt when older than a day so the freshness checks see a live source) and
an empty lakehouse, then measures in order:

- floor: every source table and landing file copied into Delta untransformed (bench/floor.py);
- full: `dagster asset materialize --select '*'` from the empty lakehouse;
- alternative (full): the dbt-duckdb incremental MERGE model of orders over the same bronze;
- incremental (1 batch): one `demo advance` batch, then the same command;
- alternative (incremental): the dbt model again over the grown bronze;
- no-op: the same command with no change;
- incremental (5 batches): five batches, then the same command.

Medians over the repetitions go to stdout as markdown and to bench/results/ as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import dagster as dg

from bench.measure import Measured, measure
from bench.step_times import step_times
from lakehouse import delta
from lakehouse.definitions import defs
from lakehouse.delta import LakehouseStorage
from lakehouse.demo.simulation import Manifest
from lakehouse.marts import DBT_EXECUTABLE

BENCH = Path(__file__).resolve().parent
PROJECT = BENCH.parent
BIN = Path(sys.executable).parent
CACHE_AGE = timedelta(days=1)
MIB = 1024 * 1024


def _env(folder: Path) -> dict[str, str]:
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith("LAKEHOUSE_")},
        "LAKEHOUSE_ROOT": str(folder / "lakehouse"),
        "LAKEHOUSE_SOURCE_URL": f"sqlite:///{folder / 'source' / 'shop.db'}",
        "LAKEHOUSE_LANDING": str(folder / "landing"),
        "LAKEHOUSE_WAREHOUSE": str(folder / "warehouse.duckdb"),
        "LAKEHOUSE_ALERTS": str(folder / "alerts.jsonl"),
        "DAGSTER_HOME": str(folder / "dagster"),
    }


def _checked(done: Measured, what: str) -> Measured:
    if done.returncode != 0:
        sys.exit(f"bench: {what} failed (exit {done.returncode}):\n{done.output[-3000:]}")
    return done


def pristine_source(scale: float) -> Path:
    """The demo source at `scale`, built once a day."""
    folder = BENCH / "work" / f"scale-{scale:g}" / "pristine"
    manifest = Manifest.load(folder / "landing")
    if manifest is None or datetime.now(UTC) - manifest.anchor_time > CACHE_AGE:
        shutil.rmtree(folder, ignore_errors=True)
        init = [str(BIN / "lakehouse"), "demo", "init", "--scale", f"{scale:g}", "--force"]
        _checked(measure(init, _env(folder), PROJECT), "demo init")
    return folder


def materialize(folder: Path, first_day: date) -> Measured:
    days = f"{first_day}...{datetime.now(UTC).date()}"
    command = [str(BIN / "dagster"), "asset", "materialize", "-m", "lakehouse.definitions",
               "--select", "*", "--partition-range", days]  # fmt: skip
    return _checked(measure(command, _env(folder), PROJECT), "materialize")


def alternative(folder: Path) -> dict[str, float]:
    """dbt-duckdb's incremental MERGE of bronze orders: dbt's wall time and the model's own."""
    env = {
        **_env(folder),
        "BENCH_WAREHOUSE": str(folder / "alternative.duckdb"),
        "BENCH_BRONZE_ORDERS": str(folder / "lakehouse" / "bronze" / "orders"),
    }
    project = BENCH / "alternative"
    command = [DBT_EXECUTABLE, "run", "--profiles-dir", ".", "--target-path", str(folder / "dbt_target")]
    done = _checked(measure(command, env, project), "dbt alternative")
    results = json.loads((folder / "dbt_target" / "run_results.json").read_text())
    (model,) = (result for result in results["results"] if result["unique_id"].startswith("model."))
    # The model's time includes the delta plugin loading bronze orders (its compile phase).
    return {"wall": done.seconds, "model": model["execution_time"], "rss": done.peak_rss}


def footprint_by_layer(folder: Path) -> dict[str, dict[str, int]]:
    layers: dict[str, dict[str, int]] = {}
    for layer, name in LakehouseStorage(root=str(folder / "lakehouse")).tables():
        table = delta.open_table(str(folder / "lakehouse" / layer / name))
        assert table is not None
        files, size = delta.footprint(table)
        totals = layers.setdefault(layer, {"files": 0, "bytes": 0})
        totals["files"] += files
        totals["bytes"] += size
    return layers


def _steps(folder: Path) -> dict[str, float]:
    with dg.DagsterInstance.from_config(str(folder / "dagster")) as instance:
        _, durations = step_times(instance)
    return dict(durations)


def repetition(scale: float) -> dict:
    pristine = pristine_source(scale)
    folder = pristine.parent / "run"
    shutil.rmtree(folder, ignore_errors=True)
    for part in ("source", "landing"):
        shutil.copytree(pristine / part, folder / part)
    subprocess.run(["make", "-s", "instance", f"DAGSTER_HOME={folder / 'dagster'}"], cwd=PROJECT, check=True)
    manifest = Manifest.load(folder / "landing")
    assert manifest is not None
    first_day = manifest.anchor_time.date() - timedelta(days=2)

    def advance(batches: int) -> None:
        command = [str(BIN / "lakehouse"), "demo", "advance", "--batches", str(batches)]
        _checked(measure(command, _env(folder), PROJECT), "demo advance")

    result: dict = {}
    floor = _checked(
        measure([sys.executable, "-m", "bench.floor", str(folder / "floor")], _env(folder), PROJECT), "floor"
    )
    result["floor"] = {"seconds": floor.seconds, "rss": floor.peak_rss, "rows": int(floor.output.split()[0])}
    for case, batches in (("full", 0), ("incremental_1", 1), ("noop", 0), ("incremental_5", 5)):
        if batches:
            advance(batches)
        done = materialize(folder, first_day)
        result[case] = {"seconds": done.seconds, "rss": done.peak_rss, "steps": _steps(folder)}
        if case == "full":
            result["footprint"] = footprint_by_layer(folder)
        if case in ("full", "incremental_1"):
            result[f"alternative_{case}"] = alternative(folder)
    load = measure(
        [str(BIN / "dagster"), "definitions", "validate", "-m", "lakehouse.definitions"],
        _env(folder),
        PROJECT,
    )
    result["definitions_load"] = {"seconds": _checked(load, "definitions validate").seconds}
    return result


def _median(runs: list[dict], *path: str) -> float:
    values = []
    for run in runs:
        value = run
        for key in path:
            value = value[key]
        values.append(value)
    return statistics.median(values)


def step_of(asset: dg.AssetKey) -> str:
    """The step that materialises `asset`: its op's name in the definitions."""
    return defs.get_assets_def(asset).node_def.name


def report(scale: float, runs: list[dict]) -> tuple[str, dict]:
    """The markdown table and the JSON summary of the repetitions' medians."""
    cases = ("floor", "full", "incremental_1", "incremental_5", "noop")
    summary: dict = {"scale": scale, "repetitions": len(runs), "source_rows": runs[0]["floor"]["rows"]}
    for case in cases:
        summary[case] = {
            "seconds": _median(runs, case, "seconds"),
            "peak_rss_mib": _median(runs, case, "rss") / MIB,
        }
    for case in ("alternative_full", "alternative_incremental_1"):
        summary[case] = {key: _median(runs, case, key) for key in ("wall", "model")}
    silver_orders = step_of(dg.AssetKey(["silver", "orders"]))
    summary["silver_orders_step"] = {
        case: _median(runs, case, "steps", silver_orders) for case in ("full", "incremental_1")
    }
    summary["definitions_load_seconds"] = _median(runs, "definitions_load", "seconds")
    summary["footprint"] = runs[-1]["footprint"]
    steps = sorted(runs[0]["full"]["steps"], key=lambda step: -runs[0]["full"]["steps"][step])
    summary["steps"] = {
        step: {case: _median(runs, case, "steps", step) for case in ("full", "incremental_1", "noop")}
        for step in steps
    }
    full = summary["full"]["seconds"]
    summary["ratios"] = {
        "full / floor": full / summary["floor"]["seconds"],
        "incremental (1 batch) / full": summary["incremental_1"]["seconds"] / full,
        "incremental (5 batches) / full": summary["incremental_5"]["seconds"] / full,
        "no-op / full": summary["noop"]["seconds"] / full,
        "silver/orders step / dbt model (full)": summary["silver_orders_step"]["full"]
        / summary["alternative_full"]["model"],
        "silver/orders step / dbt model (incremental)": summary["silver_orders_step"]["incremental_1"]
        / summary["alternative_incremental_1"]["model"],
    }

    lines = [
        f"# make bench: scale {scale:g} ({summary['source_rows']:,} source rows and lines), "
        f"median of {len(runs)}",
        "",
        "| case | seconds | peak RSS (MiB) |",
        "| --- | ---: | ---: |",
        *(
            f"| {case} | {summary[case]['seconds']:.1f} | {summary[case]['peak_rss_mib']:,.0f} |"
            for case in cases
        ),
        f"| dbt alternative, full: dbt run / model | {summary['alternative_full']['wall']:.1f} / "
        f"{summary['alternative_full']['model']:.2f} | |",
        f"| dbt alternative, 1 batch: dbt run / model | {summary['alternative_incremental_1']['wall']:.1f} / "
        f"{summary['alternative_incremental_1']['model']:.2f} | |",
        f"| our silver/orders step: full / 1 batch | {summary['silver_orders_step']['full']:.2f} / "
        f"{summary['silver_orders_step']['incremental_1']:.2f} | |",
        f"| definitions load (`definitions validate`) | {summary['definitions_load_seconds']:.1f} | |",
        "",
        "| ratio | value |",
        "| --- | ---: |",
        *(f"| {name} | {value:.2f} |" for name, value in summary["ratios"].items()),
        "",
        "| layer | files | MiB |",
        "| --- | ---: | ---: |",
        *(
            f"| {layer} | {totals['files']:,} | {totals['bytes'] / MIB:,.1f} |"
            for layer, totals in sorted(summary["footprint"].items())
        ),
        "",
        "| step (slowest 20 of the full build) | full | 1 batch | no-op |",
        "| --- | ---: | ---: | ---: |",
        *(
            f"| {step} | {times['full']:.2f} | {times['incremental_1']:.2f} | {times['noop']:.2f} |"
            for step, times in list(summary["steps"].items())[:20]
        ),
    ]
    return "\n".join(lines), summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    runs = []
    for number in range(1, args.repeat + 1):
        started = time.perf_counter()
        runs.append(repetition(args.scale))
        print(f"repetition {number}/{args.repeat}: {time.perf_counter() - started:.0f} s", file=sys.stderr)
    markdown, summary = report(args.scale, runs)
    print(markdown)
    results = BENCH / "results"
    results.mkdir(exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    (results / f"{stamp}-scale{args.scale:g}.json").write_text(
        json.dumps({"summary": summary, "runs": runs}, indent=2)
    )


if __name__ == "__main__":
    main()
