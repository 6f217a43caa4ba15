"""The lakehouse on an object store: the demo pipeline with an `s3://` root and `s3://` landing
files on an S3-compatible server on loopback (moto), run from the command line in a local
deployment and in a shared one whose instance is in PostgreSQL. The lake must hold what the
local-disk tests assert: each row version once, every landing file ingested once, the ledgers at
the newest input, gold equal to a rebuild, and nothing written by a run with nothing new."""

import contextlib
import json
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import dagster as dg
import polars as pl
import pyarrow.fs as pafs
import pytest
from conftest import (
    MATERIALIZE_ALL,
    PROJECT,
    SCALEOUT_FIRST_HALF,
    SCALEOUT_SECOND_HALF,
    TEST_SALT,
    Lake,
    assert_bronze_holds_each_version_once,
    assert_gold_equals_a_rebuild_in_one_piece,
    assert_marts_in_the_lake_equal_the_warehouse,
    command_environment,
    ledgers,
    local_deployment,
    make_deployment,
    make_instance,
    run_command,
    sqlite_source,
)
from dagster_deltalake import S3Config
from dagster_server import DagsterServer, free_port, stop_group, wait_for
from library import Library, evaluations

from lakehouse.bronze import tombstones
from lakehouse.gold.build import silver_reader
from lakehouse.gold.tables import GOLD_TABLES
from lakehouse.orchestration.sensors import waiting_files
from lakehouse.resources import LakehouseStorage, LandingZone
from lakehouse.storage import delta, files
from lakehouse.storage.merge import merge

pytestmark = [pytest.mark.scaleout, pytest.mark.slow]

BUCKET = "lakehouse"


def answers(endpoint: str) -> bool:
    try:
        with urllib.request.urlopen(endpoint, timeout=1):
            return True
    except (urllib.error.URLError, ConnectionError):
        return False


@pytest.fixture(scope="module")
def object_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """An S3-compatible server on a free loopback port with one bucket, stopped by its pid
    afterwards; the variables delta-rs, polars and pyarrow read to reach it are set here and in
    the commands the tests start."""
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    with (tmp_path_factory.mktemp("object_store") / "moto.log").open("wb") as log:
        server = subprocess.Popen(
            [str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        wait_for("the S3 server", lambda: answers(endpoint), 60, every=0.2)
        urllib.request.urlopen(urllib.request.Request(f"{endpoint}/{BUCKET}", method="PUT")).close()
        environment = {
            "AWS_ENDPOINT_URL": endpoint,
            "AWS_ALLOW_HTTP": "true",
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_REGION": "us-east-1",
        }
        with pytest.MonkeyPatch.context() as patch:
            for name, value in environment.items():
                patch.setenv(name, value)
            yield environment
    finally:
        stop_group(server)


def upload(folder: Path, uri: str) -> list[str]:
    """Copies the landing files under `folder` that the object store at `uri` lacks; their names."""
    filesystem, root = files.filesystem(uri)
    listed = filesystem.get_file_info(pafs.FileSelector(root, recursive=True, allow_not_found=True))
    there = {info.base_name for info in listed}
    new = []
    for path in sorted(folder.rglob("*.jsonl")):
        if path.name not in there:
            with filesystem.open_output_stream(f"{root}/{path.relative_to(folder).as_posix()}") as copy:
                copy.write(path.read_bytes())
            new.append(path.name)
    return new


def table_versions(lake: Lake) -> dict[str, int]:
    """The version of every Delta table under the lake's root, listed from the object store."""
    found = lake.storage.tables()
    return {f"{layer}/{name}": delta.load_table(lake.uri(layer, name)).version() for layer, name in found}


def rows(lake: Lake, layer: str, name: str) -> int:
    """Rows of a table, none before its first commit (a quarantine nothing was sent to)."""
    table = delta.open_table(lake.uri(layer, name))
    return 0 if table is None else delta.row_count(table)


@SCALEOUT_FIRST_HALF
def test_the_demo_pipeline_runs_on_an_object_store_root_in_a_local_then_a_shared_deployment(
    tmp_path: Path, object_store: dict[str, str], instance_database: str
) -> None:
    """The first load in a local deployment; the next batch, then a run with nothing new, in a
    shared one (its instance in PostgreSQL, its warehouse on another machine's disk) on the same
    lake, as a team moving onto shared infrastructure keeps its lake."""
    root = f"s3://{BUCKET}/pipeline-{tmp_path.name}"
    landing = f"{root}-landing"
    local = local_deployment(tmp_path, LAKEHOUSE_PII_SALT=TEST_SALT, LAKEHOUSE_ROOT=root)
    make_instance(tmp_path / "shared_home", "shared")
    shared = local | {
        "DAGSTER_HOME": str(tmp_path / "shared_home"),
        "LAKEHOUSE_DEPLOYMENT": "shared",
        "LAKEHOUSE_INSTANCE_DB": instance_database,
        "LAKEHOUSE_ALERT_WEBHOOK": "http://127.0.0.1:9/alerts",
        "LAKEHOUSE_WAREHOUSE": str(tmp_path / "shared_warehouse.duckdb"),
    }
    lake = Lake(tmp_path, sqlite_source(tmp_path), root=root)
    events = lake.contract("events")

    def materialize_all(settings: dict[str, str]) -> None:
        done = run_command(MATERIALIZE_ALL, tmp_path, **settings, LAKEHOUSE_LANDING=landing)
        assert done.returncode == 0, done.stderr[-3000:]
        assert "Traceback" not in done.stdout + done.stderr

    watermarks: list[dict[str, int | None]] = []
    for settings in (local, shared):  # the first load, then a batch of changes, deletes and new files
        if settings is shared:
            advanced = run_command(["lakehouse", "demo", "advance"], tmp_path, **settings)
            assert advanced.returncode == 0, advanced.stderr[-2000:]
        # The demo writes its files to a local folder; a producer puts them on the store.
        new = upload(lake.landing, landing)
        assert new and waiting_files(events, LandingZone(path=landing), lake.storage) == (new, [])
        materialize_all(settings)
        assert waiting_files(events, LandingZone(path=landing), lake.storage) == ([], [])
        assert_bronze_holds_each_version_once(lake)
        assert_gold_equals_a_rebuild_in_one_piece(lake)
        watermarks.append(ledgers(lake))
        for contract in lake.contracts:
            live = tombstones.live_keys(lake.table("bronze", contract.name), contract).height
            silver, quarantined = (rows(lake, layer, contract.name) for layer in ("silver", "quarantine"))
            assert silver + quarantined >= live > 0 and silver > 0, contract.name
        # The shared deployment's warehouse starts empty: a cache dbt rebuilds from the lake.
        warehouse = Path(settings["LAKEHOUSE_WAREHOUSE"])
        assert len(assert_marts_in_the_lake_equal_the_warehouse(lake, warehouse)) == 5
    first, second = watermarks
    assert None not in first.values() and all(second[name] >= first[name] for name in first)
    assert second["orders"] > first["orders"]

    written = table_versions(lake)
    assert {"bronze/orders", "silver/orders", "gold/fct_orders", "marts/mart_sales_daily"} <= set(written)
    materialize_all(shared)
    assert table_versions(lake) == written, "a run with nothing new committed to a table"


INGEST = [*MATERIALIZE_ALL[:-1], "group:bronze or group:silver"]


@SCALEOUT_SECOND_HALF
def test_the_table_commands_and_maintenance_work_on_an_object_store_root(
    tmp_path: Path, object_store: dict[str, str]
) -> None:
    root = f"s3://{BUCKET}/commands-{tmp_path.name}"
    settings = local_deployment(tmp_path, LAKEHOUSE_PII_SALT=TEST_SALT, LAKEHOUSE_ROOT=root)
    lake = Lake(tmp_path, sqlite_source(tmp_path), root=root)

    def command(*args: str) -> subprocess.CompletedProcess:
        done = run_command(list(args), tmp_path, **settings)
        assert "Traceback" not in done.stdout + done.stderr, done.stderr[-3000:]
        return done

    assert command(*INGEST).returncode == 0
    loaded = delta.load_table(lake.uri("silver", "orders"))
    first_version, first_rows = loaded.version(), delta.row_count(loaded)
    assert command("lakehouse", "demo", "advance").returncode == 0
    assert command(*INGEST).returncode == 0
    merged = delta.load_table(lake.uri("silver", "orders"))
    assert merged.version() > first_version and delta.row_count(merged) > first_rows

    summary = command("lakehouse", "summary")
    assert summary.returncode == 0 and f"Lakehouse at {root}" in summary.stdout
    assert "silver/orders" in summary.stdout and "bronze/events" in summary.stdout
    history = command("lakehouse", "table", "history", "silver/orders")
    assert history.returncode == 0 and "MERGE" in history.stdout
    assert command("lakehouse", "table", "check", "silver/orders").returncode == 0
    report = command("lakehouse", "quality", "report")
    assert report.returncode in (0, 1) and "silver/orders" in report.stdout

    # Back to the first load, then the next run merges what bronze holds beyond it once more.
    restored = command("lakehouse", "table", "restore", "silver/orders", "--version", str(first_version))
    assert restored.returncode == 0, restored.stderr
    assert delta.row_count(delta.load_table(lake.uri("silver", "orders"))) == first_rows
    assert command(*MATERIALIZE_ALL[:-1], "silver/orders").returncode == 0
    again = lake.table("silver", "orders")
    assert again.height == delta.row_count(merged) and again.get_column("order_id").is_unique().all()

    before = {name: lake.table("bronze", name).height for name in ("orders", "events")}
    maintained = command("dagster", "job", "execute", "-m", "lakehouse.definitions", "-j", "maintenance")
    assert maintained.returncode == 0, maintained.stderr[-3000:]
    assert {name: lake.table("bronze", name).height for name in before} == before
    assert delta.footprint(delta.load_table(lake.uri("bronze", "orders")))[0] == 1  # compacted


@SCALEOUT_FIRST_HALF
def test_the_files_a_merge_added_and_removed_are_read_from_the_object_store(
    tmp_path: Path, object_store: dict[str, str]
) -> None:
    """What the checks after a pass read of a changed table: the files a commit added and removed."""
    uri = f"s3://{BUCKET}/files-{tmp_path.name}"
    delta.write(uri, pl.DataFrame({"id": [1, 2, 3], "value": ["a", "b", "c"]}), create=True)
    merge(uri, pl.DataFrame({"id": [2, 4], "value": ["B", "d"]}), ["id"], update_when="true")
    table = delta.load_table(uri)

    read = delta.rows_since(table, uri, 0, ["id", "value"], removed=True)
    assert read is not None
    gained, lost = (rows.sort("id") for rows in read)

    assert gained.rows() == [(1, "a"), (2, "B"), (3, "c"), (4, "d")]
    assert lost.rows() == [(1, "a"), (2, "b"), (3, "c")]


@SCALEOUT_SECOND_HALF
def test_the_lake_resources_typed_configuration_alone_reaches_the_object_store(
    tmp_path: Path, object_store: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """With no store variable in the environment, the lake resource's `S3Config` is what every
    reader and writer uses: the library's bronze and silver are loaded, merged and reconciled
    on the store, and listed there. The library's source, not the shop's."""
    for name in object_store:
        monkeypatch.delenv(name)
    typed = S3Config(
        endpoint=object_store["AWS_ENDPOINT_URL"],
        access_key_id="testing",
        secret_access_key="testing",
        region="us-east-1",
    )
    storage = LakehouseStorage(root=f"s3://{BUCKET}/typed-{tmp_path.name}", storage=typed, allow_http=True)
    library = Library(tmp_path, dg.DagsterInstance.ephemeral(), lake=storage)
    library.create()
    library.add("members", [(1, "Ada"), (2, "Grace")])
    library.add("loans", [(n, 1 + n % 2, "open") for n in range(10)] + [(10, 2, "lost")])

    first = library.materialize()
    library.add("loans", [(11, 1, "open")])
    library.update("loans", "loan_id", 0, status="returned")
    second = library.materialize()

    for result in (first, second):
        assert result.success
        reconciled = evaluations(result, dg.AssetKey(["silver", "loans"]))["bronze_rows_accounted"]
        assert (
            reconciled.passed
            and evaluations(result, dg.AssetKey(["bronze", "loans"]))["source_rows_in_bronze"].passed
        )
    loans = library.table("silver", "loans").sort("loan_id")
    assert loans.height == 11 and loans.row(0, named=True)["status"] == "returned"
    assert library.table("quarantine", "loans").get_column("loan_id").to_list() == [10]
    assert set(storage.tables()) >= {("bronze", "loans"), ("silver", "loans"), ("quarantine", "loans")}


EVENT_GOLD = ("event_windows_5m", "funnel_daily")


@SCALEOUT_FIRST_HALF
def test_a_backfill_of_event_days_runs_two_days_at_once_without_a_conflict(
    tmp_path: Path,
    object_store: dict[str, str],
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`backfill_event_days` over 4 days, launched as a user does (`dagster job backfill`), on the
    object store with the instance in PostgreSQL: one run per day, two at a time (the `event_days`
    lane), no commit conflict, and each day's rows those of a build from silver.

    The backfill is submitted before the daemon starts, as while a deployment restarts: the
    command submits its runs one after the other, and on a loaded machine a run can end before the
    next is queued, so only 4 runs waiting together show what the queue lets through at once."""
    database = request.getfixturevalue("instance_database")
    monkeypatch.setenv("LAKEHOUSE_INSTANCE_DB", database)  # this process reads the instance too
    root = f"s3://{BUCKET}/backfill-{tmp_path.name}"
    settings = make_deployment(
        tmp_path,
        "shared",
        LAKEHOUSE_INSTANCE_DB=database,
        LAKEHOUSE_ALERT_WEBHOOK="http://127.0.0.1:9/alerts",
        LAKEHOUSE_PII_SALT=TEST_SALT,
        LAKEHOUSE_ROOT=root,
    )
    lake = Lake(tmp_path, sqlite_source(tmp_path), root=root)
    # The demo's events span two days; a producer's export of the two days before makes four.
    for path in sorted((lake.landing / "events").glob("*.jsonl")):
        earlier = []
        for line in path.read_text().splitlines():
            with contextlib.suppress(ValueError, KeyError, TypeError):  # the demo's defects stay out
                event = json.loads(line)
                moment = datetime.fromisoformat(event["timestamp"]) - timedelta(days=2)
                event.update(event_id=f"{event['event_id']}-export", timestamp=moment.isoformat())
                earlier.append(json.dumps(event))
        (path.parent / f"export_{path.name}").write_text("\n".join(earlier) + "\n")
    selection = ",".join(f"*gold/{name}" for name in EVENT_GOLD)
    built = run_command([*MATERIALIZE_ALL[:-1], selection], tmp_path, **settings)
    assert built.returncode == 0, built.stderr[-3000:]
    days = sorted({str(day) for day in lake.table("gold", "funnel_daily").get_column("event_date")})[:4]
    assert len(days) == 4
    # The 4 days lost from gold, as after a bad load: the backfill must bring them back.
    for name in EVENT_GOLD:
        delta.load_table(lake.uri("gold", name)).delete(
            f"event_date >= '{days[0]}' AND event_date <= '{days[-1]}'"
        )

    server = DagsterServer(PROJECT, Path(settings["DAGSTER_HOME"]), command_environment(tmp_path, **settings),
                           tmp_path / "dagster-dev.log")  # fmt: skip
    backfill = ["dagster", "job", "backfill", "-w", "workspace.yaml", "-j", "backfill_event_days"]
    launched = server.command([*backfill, "--from", days[0], "--to", days[-1], "--noprompt"])
    assert launched.returncode == 0, launched.stdout[-2000:] + launched.stderr[-2000:]
    instance = server.instance()
    queued = instance.get_run_records(dg.RunsFilter(job_name="backfill_event_days"))
    assert [r.dagster_run.status for r in queued] == [dg.DagsterRunStatus.QUEUED] * 4
    server.start()
    try:
        done = [dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED]

        def finished() -> list[dg.RunRecord]:
            records = instance.get_run_records(dg.RunsFilter(job_name="backfill_event_days"))
            return records if len(records) == 4 and all(r.dagster_run.status in done for r in records) else []

        wait_for("the backfill's 4 runs", finished, 600, every=2)
        records = finished()
        assert {r.dagster_run.tags["dagster/partition"] for r in records} == set(days)
        assert all(r.dagster_run.status == dg.DagsterRunStatus.SUCCESS for r in records), server.tail()
        spans = sorted((r.start_time, r.end_time) for r in records)
        at_once = max(sum(start <= moment < end for start, end in spans) for moment, _ in spans)
        assert at_once == 2, spans  # the lane's limit, reached
        logged = [entry.user_message for r in records for entry in instance.all_logs(r.dagster_run.run_id)]
        assert not [message for message in logged if "a concurrent commit won" in message]
    finally:
        server.stop()

    for table in GOLD_TABLES:
        if table.name in EVENT_GOLD:
            history = delta.load_table(lake.uri("gold", table.name)).history(limit=4)
            assert [commit["operation"] for commit in history] == ["WRITE"] * 4
            stored = lake.table("gold", table.name)
            serial = table.build(silver_reader(lake.storage), days).select(stored.columns)
            assert serial.get_column("event_date").n_unique() == len(days)
            backfilled = stored.filter(pl.col("event_date").cast(pl.String).is_in(days))
            assert backfilled.sort(stored.columns).equals(serial.sort(stored.columns)), table.name
