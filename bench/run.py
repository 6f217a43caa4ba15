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
- incremental (5 batches): five batches, then the same command;
- metrics scrape: what `lakehouse metrics serve` computes for one scrape of the lake and its
  instance as they stand after these runs (the median of three).

Medians over the repetitions go to stdout as markdown and to bench/results/ as JSON: every
case, each run's wall time split by the part of the pipeline its steps belong to, and each
target of the performance work with its verdict.
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
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
from prometheus_client import CollectorRegistry, generate_latest

from bench.measure import Measured, measure
from bench.step_times import step_times
from lakehouse.definitions import check_keys, contracts, defs
from lakehouse.demo.manifest import Manifest
from lakehouse.marts.assets import DBT_EXECUTABLE
from lakehouse.monitoring.metrics import health_collector
from lakehouse.resources import LakehouseStorage, LandingZone, SourceDatabase
from lakehouse.storage import delta

BENCH = Path(__file__).resolve().parent
PROJECT = BENCH.parent
BIN = Path(sys.executable).parent
CACHE_AGE = timedelta(days=1)
MIB = 1024 * 1024
RUNS = ("full", "incremental_1", "incremental_5", "noop")
PARTS = ("bronze", "silver", "gold", "dbt", "checks")
OUTSIDE = "outside the steps"


def _env(folder: Path) -> dict[str, str]:
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith("LAKEHOUSE_")},
        "LAKEHOUSE_ROOT": str(folder / "lakehouse"),
        "LAKEHOUSE_SOURCE_URL": f"sqlite:///{folder / 'source' / 'shop.db'}",
        "LAKEHOUSE_LANDING": str(folder / "landing"),
        "LAKEHOUSE_WAREHOUSE": str(folder / "warehouse.duckdb"),
        "LAKEHOUSE_ALERTS": str(folder / "alerts.jsonl"),
        "DAGSTER_HOME": str(folder / "dagster"),
        # The demo renames its files in whole: no run waits for them to settle.
        "LAKEHOUSE_LANDING_SETTLE_SECONDS": "0",
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


def materialize(folder: Path) -> Measured:
    command = [str(BIN / "dagster"), "asset", "materialize", "-m", "lakehouse.definitions", "--select", "*"]
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


def scrape_seconds(folder: Path) -> float:
    """Seconds one scrape of the metrics takes, rendered as Prometheus reads it: the median of three."""
    registry = CollectorRegistry(auto_describe=False)
    with dg.DagsterInstance.from_config(str(folder / "dagster")) as instance:
        registry.register(
            health_collector(
                instance,
                contracts,
                check_keys,
                LakehouseStorage(root=str(folder / "lakehouse")),
                LandingZone(path=str(folder / "landing")),
                SourceDatabase(url=f"sqlite:///{folder / 'source' / 'shop.db'}"),
            )
        )
        times = []
        for _ in range(3):
            started = time.perf_counter()
            generate_latest(registry)
            times.append(time.perf_counter() - started)
    return statistics.median(times)


def repetition(scale: float) -> dict:
    pristine = pristine_source(scale)
    folder = pristine.parent / "run"
    shutil.rmtree(folder, ignore_errors=True)
    for part in ("source", "landing"):
        shutil.copytree(pristine / part, folder / part)
    subprocess.run(["make", "-s", "instance", f"DAGSTER_HOME={folder / 'dagster'}"], cwd=PROJECT, check=True)

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
        done = materialize(folder)
        result[case] = {"seconds": done.seconds, "rss": done.peak_rss, "steps": _steps(folder)}
        if case == "full":
            result["footprint"] = footprint_by_layer(folder)
        if case in ("full", "incremental_1"):
            result[f"alternative_{case}"] = alternative(folder)
    for key, module in (("definitions_load", "lakehouse.definitions"), ("one_asset_load", "bench.one_asset")):
        load = measure([str(BIN / "dagster"), "definitions", "validate", "-m", module], _env(folder), PROJECT)
        result[key] = {"seconds": _checked(load, f"definitions validate -m {module}").seconds}
    result["metrics_scrape"] = {"seconds": scrape_seconds(folder)}
    return result


def _median(runs: list[dict], *path: str) -> float:
    values = []
    for run in runs:
        value = run
        for key in path:
            value = value[key]
        values.append(value)
    return statistics.median(values)


def _median_run(runs: list[dict], case: str) -> dict:
    """The repetition's run of `case` with the median wall time: a real run, whose parts add up."""
    return sorted((run[case] for run in runs), key=lambda run: run["seconds"])[(len(runs) - 1) // 2]


def step_of(asset: dg.AssetKey) -> str:
    """The step that materialises `asset`: its op's name in the definitions."""
    return defs.get_assets_def(asset).node_def.name


def step_parts() -> dict[str, str]:
    """Each step's part of the pipeline: the layer its assets belong to, the dbt build, or checks."""
    parts = {checks.node_def.name: "checks" for checks in defs.asset_checks}
    for assets in defs.assets:
        spec = next(iter(assets.specs))
        parts[assets.node_def.name] = "dbt" if "dbt" in spec.kinds else spec.group_name
    return parts


def time_split(run: dict, parts: dict[str, str]) -> dict[str, float]:
    """A run's wall time: its step times summed per part, and the rest (starting the CLI, loading
    the definitions, Dagster's run bookkeeping) outside the steps."""
    split = dict.fromkeys(PARTS, 0.0)
    for step, seconds in run["steps"].items():
        split[parts[step]] += seconds
    split[OUTSIDE] = run["seconds"] - sum(split.values())
    return split


def _at_most(name: str, measured: float, limit: float, shown: str) -> tuple[str, str, bool]:
    return name, shown.format(measured), measured <= limit


def targets(summary: dict, peak_rss: float, scale: float) -> list[tuple[str, str, bool]]:
    """The performance targets of `scale` (scale 10 has its own, on how cost follows the
    change; every other scale is judged by scale 1's): (target, measured, met)."""
    ratios, noop = summary["ratios"], summary["noop"]["seconds"]
    scrape = _at_most("metrics scrape <= 1 s", summary["metrics_scrape_seconds"], 1, "{:.2f} s")
    rss = _at_most("peak RSS <= 2 GiB (largest of all runs)", peak_rss / MIB, 2048, "{:,.0f} MiB")
    if scale == 10:
        return [
            _at_most("no-op <= 3 % of full", ratios["no-op / full"], 0.03, "{:.1%}"),
            _at_most(
                "incremental (1 batch) <= 10 % of full",
                ratios["incremental (1 batch) / full"],
                0.10,
                "{:.1%}",
            ),
            _at_most(
                "incremental (5 batches) <= 20 % of full",
                ratios["incremental (5 batches) / full"],
                0.20,
                "{:.1%}",
            ),
            _at_most("full build <= 5 x floor", ratios["full / floor"], 5, "{:.1f} x"),
            rss,
            scrape,
        ]
    return [
        _at_most("full build <= 4 x floor", ratios["full / floor"], 4, "{:.1f} x"),
        _at_most(
            "incremental (1 batch) <= 15 % of full", ratios["incremental (1 batch) / full"], 0.15, "{:.0%}"
        ),
        _at_most("no-op <= 8 s", noop, 8, "{:.1f} s"),
        rss,
        _at_most(
            "silver/orders step <= dbt alternative's model (full)",
            ratios["silver/orders step / dbt model (full)"],
            1,
            "{:.2f} x",
        ),
        _at_most("definitions load <= 2 s", summary["definitions_load_seconds"], 2, "{:.1f} s"),
        scrape,
    ]


def report(scale: float, runs: list[dict]) -> tuple[str, dict]:
    """The markdown table and the JSON summary of the repetitions' medians."""
    cases = ("floor", *RUNS)
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
    summary["one_asset_load_seconds"] = _median(runs, "one_asset_load", "seconds")
    summary["metrics_scrape_seconds"] = _median(runs, "metrics_scrape", "seconds")
    summary["footprint"] = runs[-1]["footprint"]
    steps = sorted(runs[0]["full"]["steps"], key=lambda step: -runs[0]["full"]["steps"][step])
    summary["steps"] = {
        step: {case: _median(runs, case, "steps", step) for case in ("full", "incremental_1", "noop")}
        for step in steps
    }
    parts = step_parts()
    summary["split"] = {case: time_split(_median_run(runs, case), parts) for case in RUNS}
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
    peak_rss = max(run[case]["rss"] for run in runs for case in cases)
    verdicts = targets(summary, peak_rss, scale)
    judged = 10 if scale == 10 else 1  # the scale whose targets these are
    summary["targets"] = [{"target": name, "measured": value, "met": met} for name, value, met in verdicts]

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
        f"| the same of one asset alone (`bench/one_asset.py`) | {summary['one_asset_load_seconds']:.1f} | |",
        f"| metrics scrape (`lakehouse metrics serve`) | {summary['metrics_scrape_seconds']:.2f} | |",
        "",
        "| ratio | value |",
        "| --- | ---: |",
        *(f"| {name} | {value:.2f} |" for name, value in summary["ratios"].items()),
        "",
        f"| target (scale {judged}) | measured{'' if scale == judged else f' at {scale:g}'} | verdict |",
        "| --- | ---: | --- |",
        *(f"| {name} | {value} | {'met' if met else '**not met**'} |" for name, value, met in verdicts),
        "",
        f"| run of median wall time: seconds | {' | '.join((*PARTS, OUTSIDE))} | wall |",
        f"| --- |{' ---: |' * (len(PARTS) + 2)}",
        *(
            f"| {case} | {' | '.join(f'{seconds:.1f}' for seconds in split.values())} | "
            f"{sum(split.values()):.1f} |"
            for case, split in summary["split"].items()
        ),
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
