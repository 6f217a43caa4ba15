"""End to end: `dagster dev` (webserver and daemon) on a loopback port, driven by Chromium
through Playwright (everything, one table, one day of events) and by a landing file dropped
while the sensor is on.

Select them with `pytest -m e2e` (or leave them out with `-m "not e2e"`); `make test` runs them.
"""

import json
import os
import re
import shutil
import time
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import dagster as dg
import duckdb
import polars as pl
import pytest
from conftest import PROJECT, command_environment, local_deployment
from dagster_server import DagsterServer, wait_for
from playwright.sync_api import Locator, Page, expect, sync_playwright

from lakehouse.definitions import defs
from lakehouse.demo.events import EVENTS_FOLDER, write_event_file
from lakehouse.gold.build import silver_reader
from lakehouse.gold.tables import GOLD_TABLES
from lakehouse.resources import LakehouseStorage
from lakehouse.storage import delta

# One deployment serves the module's tests: under pytest-xdist one worker runs them all.
pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("test_e2e")]

CHROMIUM = Path("/usr/bin/chromium")  # Debian's package: `.ci/run` installs it when missing
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = PROJECT / "tests" / "artifacts"  # git-ignored
SENSOR = "events_landing_files"
# The tag Dagster puts on the runs a sensor launches.
SENSOR_NAME_TAG = "dagster/sensor_name"
# The sensor's ticks, from the webserver's GraphQL API (what the UI's sensor page shows).
SENSOR_TICKS = """
query ($sensor: SensorSelector!, $after: Float) {
  sensorOrError(sensorSelector: $sensor) {
    __typename
    ... on Sensor { sensorState { ticks(afterTimestamp: $after) { status timestamp } } }
  }
}
"""
# Upper bounds, not expectations. One run of everything takes about a minute here.
UI_MS = 60_000
OUTCOME_MS = 480_000
POLL_SECONDS = 5  # the landing sensor's interval here (30 s by default)
SENSOR_TICK_SECONDS = 60
SENSOR_RUN_SECONDS = 180
RUN_DONE = re.compile(r"^(Success|Failure|Canceled)$")
# The asset graph's button once its filter leaves some assets ("Materialize all" before).
MATERIALIZE = re.compile(r"Materialize$")


@dataclass
class Deployment:
    """A demo lake and the `dagster dev` serving it, with its own instance."""

    folder: Path
    server: DagsterServer

    @property
    def storage(self) -> LakehouseStorage:
        return LakehouseStorage(root=str(self.folder / "lakehouse"))

    def uri(self, layer: str, name: str) -> str:
        return self.storage.table_uri(layer, name)

    def table(self, layer: str, name: str) -> pl.DataFrame:
        return pl.read_delta(self.uri(layer, name))

    def rows(self, layer: str, name: str) -> int:
        return self.table(layer, name).height

    def materialize(self, selection: str) -> None:
        """`dagster asset materialize` of `selection` against this deployment's lake and instance."""
        done = self.server.command(
            ["dagster", "asset", "materialize", "-m", "lakehouse.definitions", "--select", selection]
        )
        assert done.returncode == 0, done.stderr[-3000:]


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    folder = tmp_path_factory.mktemp("e2e")
    settings = local_deployment(folder, LAKEHOUSE_LANDING_POLL_SECONDS=str(POLL_SECONDS))
    home = Path(settings["DAGSTER_HOME"])
    server = DagsterServer(
        project=PROJECT,
        home=home,
        environment=command_environment(folder, **settings),
        log=folder / "dagster-dev.log",
    )
    try:
        try:
            server.start()
        except (TimeoutError, RuntimeError) as error:
            pytest.fail(f"{error}\n--- dagster dev log, last lines ---\n{server.tail()}")
        yield Deployment(folder, server)
    finally:
        server.stop()


@contextmanager
def browser_page(name: str) -> Iterator[Page]:
    """A Chromium page; its screenshot is left in ARTIFACTS as `<name>.png`, or
    `<name>_failed.png` when the block fails."""
    if not CHROMIUM.exists():
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} is missing: .ci/run installs Debian's chromium")
        pytest.skip(f"no {CHROMIUM}: apt-get install chromium (.ci/run does)")
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1600, "height": 1000})
            page.set_default_timeout(UI_MS)
            try:
                yield page
            except Exception:
                page.screenshot(path=ARTIFACTS / f"{name}_failed.png", full_page=True)
                raise
            page.screenshot(path=ARTIFACTS / f"{name}.png", full_page=True)
        finally:
            browser.close()


def asset_graph(page: Page, url: str, selection: str | None = None) -> Locator:
    """The global asset graph, filtered to `selection` as a user types it into the graph's
    search box; its Materialize button ("Materialize all" unfiltered)."""
    page.goto(f"{url}/asset-groups")
    materialize_all = page.get_by_role("button", name="Materialize all")
    if selection is None:
        return materialize_all
    expect(materialize_all).to_be_visible()
    page.locator(".CodeMirror").first.click()  # the search box is a code editor, not an <input>
    page.keyboard.type(selection)
    page.keyboard.press("Enter")
    return page.get_by_role("button", name=MATERIALIZE)


def launch_from_asset_graph(page: Page, url: str, selection: str | None = None) -> str:
    """Click Materialize on the asset graph (filtered to `selection`, or all of it); the address
    of the run it launched.

    No asset is partitioned, so Dagster launches one run at once, with no dialog."""
    asset_graph(page, url, selection).click()
    # The toast that confirms a launch links to it ("Launched run 1a2b3c4d", then "View").
    launched = page.get_by_role("link", name="View", exact=True)
    expect(launched).to_be_visible(timeout=UI_MS)
    address = launched.get_attribute("href")
    assert address and address.startswith("/runs/"), address
    return address


def launch_from_launchpad(page: Page, url: str, selection: str, run_config: dict) -> str:
    """Shift-click Materialize on the asset graph filtered to `selection`, replace the
    launchpad's config with `run_config` and launch; the address of the run."""
    asset_graph(page, url, selection).click(modifiers=["Shift"])
    launchpad = page.get_by_role("dialog")
    launchpad.locator(".CodeMirror").first.click()
    page.keyboard.press("Control+A")
    # Pasted, not typed: the editor would indent and close brackets after every keystroke.
    page.keyboard.insert_text(json.dumps(run_config))  # JSON is YAML
    expect(launchpad.get_by_text("No errors")).to_be_visible()
    launchpad.get_by_role("button", name=MATERIALIZE).click()
    # A launch from the launchpad opens the run's page.
    page.wait_for_url(re.compile(r"/runs/[0-9a-f-]+$"))
    return urlparse(page.url).path


def run_id(address: str) -> str:
    return address.rstrip("/").rsplit("/", 1)[-1]


def wait_for_outcome(page: Page, url: str, address: str) -> str:
    """The status the run's page shows once it has finished."""
    page.goto(f"{url}{address}")
    status = page.get_by_text(RUN_DONE).first  # the run's status tag in the page header
    expect(status).to_be_visible(timeout=OUTCOME_MS)
    return status.inner_text().strip()


def shown_metadata(page: Page, url: str, key: str, names: list[str]) -> dict[str, str]:
    """The values the asset's Events tab shows for its latest materialisation."""
    page.goto(f"{url}/assets/{key}")
    page.get_by_role("tab", name="Events").click()
    shown = {}
    for name in names:
        row = page.get_by_role("row").filter(has=page.get_by_role("cell", name=name, exact=True))
        shown[name] = row.get_by_role("cell").nth(1).inner_text().strip()
    return shown


def test_materialize_all_from_the_asset_graph_in_a_browser(deployment: Deployment) -> None:
    url = deployment.server.url
    with browser_page("materialize_all") as page:
        address = launch_from_asset_graph(page, url)
        shown = wait_for_outcome(page, url, address)

    assert shown == "Success", f"{address} ended {shown}"
    instance = deployment.server.instance()
    run = instance.get_run_by_id(run_id(address))
    assert run and run.status == dg.DagsterRunStatus.SUCCESS
    assert run.tags.get("dagster/from_ui") == "true"
    # Real work: every asset has a materialisation and the marts are in the warehouse.
    keys = defs.resolve_asset_graph().materializable_asset_keys
    missing = {key.to_user_string() for key in keys if instance.get_latest_materialization_event(key) is None}
    assert missing == set()
    with duckdb.connect(str(deployment.folder / "warehouse.duckdb"), read_only=True) as warehouse:
        marts = {key.path[-1] for key in keys if key.path[0] == "marts"}
        rows = {name: warehouse.sql(f'select count(*) from main."{name}"').fetchall()[0][0] for name in marts}
    assert marts and all(count > 0 for count in rows.values()), rows


def test_one_table_from_the_asset_graph_shows_its_row_counts(deployment: Deployment) -> None:
    # What silver/orders reads exists, and bronze holds a batch it has not merged yet.
    deployment.materialize('+key:"silver/orders"')
    advanced = deployment.server.command(["lakehouse", "demo", "advance"])
    assert advanced.returncode == 0, advanced.stderr[-3000:]
    deployment.materialize("bronze/orders")
    url = deployment.server.url
    counts = ["dagster/row_count", "rows_read", "rows_inserted", "rows_updated", "rows_quarantined"]
    with browser_page("one_table") as page:
        address = launch_from_asset_graph(page, url, 'key:"silver/orders"')
        outcome = wait_for_outcome(page, url, address)
        assert outcome == "Success", f"{address} ended {outcome}"
        shown = shown_metadata(page, url, "silver/orders", counts)

    instance = deployment.server.instance()
    run = instance.get_run_by_id(run_id(address))
    assert run and run.tags.get("dagster/from_ui") == "true"
    assert run.asset_selection == {dg.AssetKey(["silver", "orders"])}
    event = instance.get_latest_materialization_event(dg.AssetKey(["silver", "orders"]))
    assert event and event.run_id == run.run_id
    recorded = event.asset_materialization.metadata
    assert shown == {name: str(recorded[name].value) for name in counts}
    assert recorded["dagster/row_count"].value == deployment.rows("silver", "orders")
    assert recorded["rows_read"].value > 0


def test_one_day_of_events_from_the_launchpad(deployment: Deployment) -> None:
    """One day of gold/funnel_daily rebuilt from the UI's launchpad.

    No asset is Dagster-partitioned: the event gold tables rebuild the days silver changed, and
    a run's config (`first_day`, `last_day`) names days to rebuild instead. So one day is
    launched from the UI through the launchpad with that config, not by picking a partition."""
    deployment.materialize('+key:"gold/funnel_daily"')
    funnel = deployment.table("gold", "funnel_daily")
    days = sorted(str(day) for day in funnel.get_column("event_date"))
    assert len(days) >= 2, "the demo's events span two days at least"
    day = days[0]
    # A wrong number on every day: only the day launched is rebuilt from silver.
    delta.write(
        deployment.uri("gold", "funnel_daily"), funnel.with_columns(viewers=pl.lit(-1)), mode="overwrite"
    )
    run_config = {"ops": {"gold__funnel_daily": {"config": {"first_day": day}}}}
    url = deployment.server.url
    with browser_page("one_day") as page:
        address = launch_from_launchpad(page, url, 'key:"gold/funnel_daily"', run_config)
        outcome = wait_for_outcome(page, url, address)

    assert outcome == "Success", f"{address} ended {outcome}"
    instance = deployment.server.instance()
    run = instance.get_run_by_id(run_id(address))
    assert run and run.tags.get("dagster/from_ui") == "true"
    assert run.run_config == run_config
    event = instance.get_latest_materialization_event(dg.AssetKey(["gold", "funnel_daily"]))
    assert event and event.run_id == run.run_id
    assert event.asset_materialization.metadata["periods_rewritten"].value == day
    rebuilt = deployment.table("gold", "funnel_daily")
    inside = rebuilt.filter(pl.col("event_date").cast(pl.String) == day)
    table = next(table for table in GOLD_TABLES if table.name == "funnel_daily")
    expected = table.build(silver_reader(deployment.storage), [day]).select(inside.columns)
    assert inside.sort(inside.columns).equals(expected.sort(expected.columns))
    outside = rebuilt.filter(pl.col("event_date").cast(pl.String) != day)
    assert outside.height > 0 and outside.get_column("viewers").to_list() == [-1] * outside.height


def finished_ticks(server: DagsterServer, after: float) -> list[dict[str, Any]]:
    """The sensor's evaluations that started after `after` and have ended, oldest first."""
    sensor = {"repositoryLocationName": "lakehouse.definitions", "repositoryName": "__repository__",
              "sensorName": SENSOR}  # fmt: skip
    query = json.dumps({"query": SENSOR_TICKS, "variables": {"sensor": sensor, "after": after}}).encode()
    request = urllib.request.Request(
        f"{server.url}/graphql", data=query, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        found = json.load(response)["data"]["sensorOrError"]
    assert found["__typename"] == "Sensor", found
    ticks = found["sensorState"]["ticks"]
    return sorted((tick for tick in ticks if tick["status"] != "STARTED"), key=lambda tick: tick["timestamp"])


def sensor_runs(instance: dg.DagsterInstance) -> list[dg.DagsterRun]:
    return list(instance.get_runs(dg.RunsFilter(tags={SENSOR_NAME_TAG: SENSOR})))


def event_lines(valid: int) -> list[str]:
    """`valid` new events, one of an unknown type (silver quarantines it) and one line that is
    not JSON (bronze quarantines it)."""
    now = datetime.now(UTC)
    events = [
        {
            "event_id": str(uuid.uuid4()),
            "user_id": 1 + number,
            "event_type": "page_view",
            "timestamp": (now - timedelta(seconds=number)).isoformat(timespec="milliseconds")[:-6] + "Z",
            "properties": {"page": f"/products/{1 + number}", "referrer": "direct"},
        }
        for number in range(valid + 1)
    ]
    events[-1]["event_type"] = "scroll"
    return [*(json.dumps(event, separators=(",", ":")) for event in events), "<html>502 Bad Gateway</html>"]


def test_a_new_landing_file_launches_one_ingestion_and_the_same_file_again_none(
    deployment: Deployment,
) -> None:
    server, instance = deployment.server, deployment.server.instance()
    # Whatever ran before, the landing files present now are ingested: the sensor will only
    # have the file this test drops to launch for.
    ingested = server.command(
        ["dagster", "job", "execute", "-m", "lakehouse.definitions", "-j", "ingest_events"]
    )
    assert ingested.returncode == 0, ingested.stderr[-3000:]
    turned_on = time.time()
    started = server.command(["dagster", "sensor", "start", SENSOR, "-w", "workspace.yaml"])
    assert started.returncode == 0, started.stdout + started.stderr[-3000:]
    first = wait_for(
        "the sensor's first tick", lambda: finished_ticks(server, turned_on), SENSOR_TICK_SECONDS
    )
    assert first[0]["status"] == "SKIPPED", first[0]
    assert sensor_runs(instance) == []

    tables = (
        ("bronze", "events"),
        ("quarantine", "events_malformed"),
        ("silver", "events"),
        ("quarantine", "events"),
    )
    before = {table: deployment.rows(*table) for table in tables}
    folder = deployment.folder / "landing" / EVENTS_FOLDER
    name = f"events_{datetime.now(UTC):%Y%m%dT%H%M%S}_99999_00.jsonl"
    write_event_file(folder, name, event_lines(valid=10))

    def finished_run() -> dg.DagsterRun | None:
        runs = sensor_runs(instance)
        return runs[0] if runs and runs[0].is_finished else None

    run = wait_for("the run the sensor launches", finished_run, SENSOR_RUN_SECONDS)
    assert (run.job_name, run.status) == ("ingest_events", dg.DagsterRunStatus.SUCCESS)
    assert run.tags["lakehouse/new_files"] == "1"
    grown = {table: deployment.rows(*table) - before[table] for table in tables}
    assert grown == {
        ("bronze", "events"): 11,  # every line that is a JSON object
        ("quarantine", "events_malformed"): 1,
        ("silver", "events"): 10,  # the valid events
        ("quarantine", "events"): 1,
    }

    # The same file dropped again (a new copy renamed over it): it is in bronze's ledger.
    runs_before = len(instance.get_runs())
    shutil.copy(folder / name, folder / f".{name}.again")
    dropped_again = time.time()
    (folder / f".{name}.again").replace(folder / name)
    later = wait_for(
        "two sensor ticks after the file came again",
        lambda: ticks if len(ticks := finished_ticks(server, dropped_again)) >= 2 else None,
        2 * SENSOR_TICK_SECONDS,
    )
    assert {tick["status"] for tick in later} == {"SKIPPED"}, later
    assert len(instance.get_runs()) == runs_before
    assert [run.run_id for run in sensor_runs(instance)] == [run.run_id]
