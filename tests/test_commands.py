"""The commands a user and CI run: validate, materialise the bronze group, summarise."""

from conftest import Lake, run_command


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
