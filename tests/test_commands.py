"""The commands a user and CI run: validate, materialise the bronze group, summarise."""

from pathlib import Path

import polars as pl
import pytest
from conftest import Lake, error_line, run_command

from lakehouse.cli.summary import check_results
from lakehouse.settings import DEFAULTS


def test_workspace_definitions_validate(lake: Lake) -> None:
    done = run_command(["dagster", "definitions", "validate", "-w", "workspace.yaml"], lake.folder)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Validation successful" in done.stdout + done.stderr
    assert "leaked" not in done.stderr, done.stderr[-3000:]


def test_ci_materializes_the_bronze_group_and_summarises_it(lake: Lake) -> None:
    done = run_command(
        ["dagster", "asset", "materialize", "-m", "lakehouse.definitions", "--select", "group:bronze"],
        lake.folder,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    for key in ("customers", "products", "orders", "order_items", "events"):
        assert f"Materialized value bronze {key}." in done.stderr
    assert "backfill_policy" not in done.stderr  # a beta chosen knowingly: no warning per asset

    summary = run_command(["lakehouse", "summary"], lake.folder)
    assert summary.returncode == 0, summary.stderr
    lines = [
        line.split() for line in summary.stdout.splitlines() if line.startswith(("bronze/", "quarantine/"))
    ]
    rows = {name: values[:2] for name, *values in lines}
    assert rows["bronze/orders"] == [f"{lake.table('bronze', 'orders').height:,}", "0"]
    assert rows["quarantine/events_malformed"][0] == str(lake.table("quarantine", "events_malformed").height)
    assert set(rows) == {
        f"bronze/{name}" for name in ("customers", "products", "orders", "order_items", "events")
    } | {"quarantine/events_malformed"}


def test_summary_after_a_step_failed_before_its_checks(lake: Lake, monkeypatch: pytest.MonkeyPatch) -> None:
    home = lake.folder / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry: {enabled: false}\n")
    # bronze/products runs; silver/orders then fails before its checks run: its parent silver
    # table is a file, not a Delta table.
    (lake.folder / "lakehouse" / "silver").mkdir(parents=True)
    (lake.folder / "lakehouse" / "silver" / "customers").write_text("not a Delta table")
    failed = run_command(
        [
            *("dagster", "asset", "materialize", "-m", "lakehouse.definitions"),
            *("--select", "bronze/products,bronze/orders,silver/orders,quarantine/orders"),
        ],
        lake.folder,
        DAGSTER_HOME=str(home),
    )
    assert failed.returncode != 0

    summary = run_command(["lakehouse", "summary"], lake.folder, DAGSTER_HOME=str(home))
    assert summary.returncode == 0, summary.stderr
    assert summary.stderr == ""
    products = next(line for line in summary.stdout.splitlines() if line.startswith("bronze/products "))
    assert "/6 passed" in products  # the fixture's pinned clock makes freshness fail here
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    orders = check_results(Path(DEFAULTS["LAKEHOUSE_CONTRACTS"]))["silver/orders"]
    assert orders.startswith("0/") and "not run: " in orders


def test_a_broken_contract_is_one_line_and_exit_2(tmp_path: Path) -> None:
    pl.DataFrame({"id": [1]}).write_delta(tmp_path / "lakehouse" / "bronze" / "readings")
    home = tmp_path / "dagster_home"  # the summary reads contracts to list their checks' results
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry: {enabled: false}\n")
    contracts = tmp_path / "contracts"
    contracts.mkdir()
    valid = (Path(DEFAULTS["LAKEHOUSE_CONTRACTS"]) / "products.yaml").read_text()
    for name, text, reason in (
        ("sensors.yaml", "name: sensors\ncolumns: [unclosed\n", "not valid YAML"),
        ("products.yaml", valid + "colour: red\n", "colour"),
    ):
        for stale in contracts.iterdir():
            stale.unlink()
        (contracts / name).write_text(text)
        for command in (["summary"], ["quality", "report"]):
            done = run_command(
                ["lakehouse", *command], tmp_path, LAKEHOUSE_CONTRACTS=str(contracts), DAGSTER_HOME=str(home)
            )
            line = error_line(done)
            assert line.startswith(f"lakehouse {' '.join(command)}: {contracts / name}") and reason in line
