"""Fixtures: a demo shop source in a temporary folder, with its lakehouse beside it.

Everything is real: SQLite files (or the PostgreSQL that `.ci/run` starts), Delta tables on
disk, Dagster materialising in-process.
"""

import json
import os
import shlex
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import CodeType
from urllib.parse import urlsplit

import dagster as dg
import duckdb
import polars as pl
import psycopg2
import pytest
from dagster_server import DagsterServer

from asset_checks import all_checks
from lakehouse.bronze import tombstones
from lakehouse.bronze.assets import bronze_assets
from lakehouse.bronze.columns import DELETE, OP
from lakehouse.demo import initial, simulation, store
from lakehouse.demo.manifest import Manifest
from lakehouse.gold.assets import attached_tables, gold_assets
from lakehouse.gold.build import silver_reader
from lakehouse.marts import MODEL_GROUPS
from lakehouse.marts.assets import DBT_EXECUTABLE, DbtCli, dbt_models, dbt_project
from lakehouse.resources import Clock, LakehouseStorage, LandingZone, PiiHasher, SourceDatabase, Warehouse
from lakehouse.settings import DEFAULTS
from lakehouse.silver.assets import silver_assets
from lakehouse.sources.contract import Contract
from lakehouse.sources.contract_files import load_contracts
from lakehouse.storage import delta, ledger

PROJECT = Path(__file__).resolve().parent.parent
CLOCK = datetime(2026, 11, 2, 12, 0, tzinfo=UTC)
SCALE = 0.01
TEST_SALT = "test-salt"
# What `make run` and CI run: every asset, from the command line.
MATERIALIZE_ALL = ["dagster", "asset", "materialize", "-m", "lakehouse.definitions", "--select", "*"]


def worker_database(url: str | None) -> str | None:
    """The test PostgreSQL database of this pytest-xdist worker: `<database>_<worker>` on the same
    server, created on first use, so that workers never share the demo's tables; the database
    itself when pytest runs in one process."""
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if not url or not worker:
        return url
    parts = urlsplit(url)
    name = f"{parts.path.lstrip('/')}_{worker}"
    admin = psycopg2.connect(url)
    admin.autocommit = True
    try:
        cursor = admin.cursor()
        cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name])
        if cursor.fetchone() is None:
            cursor.execute(f'CREATE DATABASE "{name}"')
    finally:
        admin.close()
    return f"{parts.scheme}://{parts.netloc}/{name}" + (f"?{parts.query}" if parts.query else "")


POSTGRES_URL = worker_database(os.environ.get("LAKEHOUSE_TEST_POSTGRES_URL"))
if POSTGRES_URL:
    os.environ["LAKEHOUSE_TEST_POSTGRES_URL"] = POSTGRES_URL  # what the commands tests start see
# The demo renames its landing files in whole: tests not about files still being written
# (tests/test_settling.py) take them at once, here and in the commands they start.
os.environ.setdefault("LAKEHOUSE_LANDING_SETTLE_SECONDS", "0")
# A failed landing step is retried after 5, 10 and 20 s by default; tests of failures need no wait.
os.environ.setdefault("LAKEHOUSE_LANDING_RETRY_SECONDS", "0")
# Tests of killed runs wait for the dead-run sweep (every 30 s by default) to fail them.
os.environ.setdefault("LAKEHOUSE_DEAD_RUN_SWEEP_SECONDS", "5")
# dbt costs seconds per build: tests that are not about the marts leave them out.
WITHOUT_DBT = dg.AssetSelection.all() - dg.AssetSelection.groups(*MODEL_GROUPS)
# Tests of the generic layers leave the shop's gold tables out too.
THROUGH_SILVER = dg.AssetSelection.groups("bronze", "silver")


def shop_contracts() -> list[Contract]:
    """The demo shop's contracts, as the project ships them."""
    return load_contracts(Path(DEFAULTS["LAKEHOUSE_CONTRACTS"]))


@dataclass
class Lake:
    """A demo source with its lakehouse, and the helpers tests use to drive them."""

    folder: Path
    source: SourceDatabase
    contracts: list[Contract] = field(default_factory=shop_contracts)
    clock: datetime = CLOCK
    # One instance across materialisations, as a deployment has: checks compare with earlier runs.
    instance: dg.DagsterInstance = field(default_factory=dg.DagsterInstance.ephemeral)
    root: str | None = None  # the Delta root: `lakehouse/` in the folder unless given (an s3:// URI)

    @property
    def landing(self) -> Path:
        return self.folder / "landing"

    @property
    def storage(self) -> LakehouseStorage:
        return LakehouseStorage(root=self.root or str(self.folder / "lakehouse"))

    def contract(self, name: str) -> Contract:
        return next(contract for contract in self.contracts if contract.name == name)

    def uri(self, layer: str, name: str) -> str:
        return self.storage.table_uri(layer, name)

    def init(self, **options) -> Manifest:
        return initial.init(self.source, self.landing, scale=SCALE, seed=7, now=self.clock, **options)

    def advance(self, batches: int = 1) -> Manifest:
        self.clock += timedelta(hours=batches)
        return simulation.advance(self.source, self.landing, batches, now=self.clock)

    @property
    def warehouse(self) -> Path:
        return self.folder / "warehouse.duckdb"

    @property
    def resources(self) -> dict[str, dg.ConfigurableResource]:
        """The resources of a run against this lake, with the test's salt and pinned clock."""
        return {
            "source": self.source,
            "lakehouse": self.storage,
            "landing": LandingZone(path=str(self.landing)),
            "pii": PiiHasher(salt=TEST_SALT),
            "warehouse": Warehouse(path=str(self.warehouse)),
            "clock": Clock(now=self.clock.isoformat()),
            "dbt": DbtCli(project_dir=dbt_project, dbt_executable=DBT_EXECUTABLE),
        }

    def materialize(
        self,
        selection: str | dg.AssetSelection = WITHOUT_DBT,
        raise_on_error: bool = True,
        run_config: dict | None = None,
    ) -> dg.ExecuteInProcessResult:
        """One run of `selection`, as `dagster asset materialize` runs it (`--config-json`)."""
        return dg.materialize(
            [
                *bronze_assets(self.contracts),
                *silver_assets(self.contracts),
                *gold_assets(self.contracts),
                dbt_models,
                *all_checks(self.contracts),
            ],
            selection=selection,
            resources=self.resources,
            instance=self.instance,
            raise_on_error=raise_on_error,
            run_config=run_config,
        )

    def table(self, layer: str, name: str) -> pl.DataFrame:
        return pl.read_delta(self.uri(layer, name))

    def source_rows(self, table: str) -> pl.DataFrame:
        return store.read(self.source, f"SELECT * FROM {table}")

    @property
    def manifest(self) -> Manifest:
        manifest = Manifest.load(self.landing)
        assert manifest is not None
        return manifest


# Makes a fresh demo lake in the folder it is given (the `demo_lake` fixture).
DemoLake = Callable[[Path], Lake]


def assert_gold_equals_a_rebuild_in_one_piece(lake: Lake) -> None:
    """Every gold table holds what a build of it from silver in one piece gives."""
    for table in attached_tables(lake.contracts):
        stored = lake.table("gold", table.name)
        rebuilt = table.build(silver_reader(lake.storage), None).select(stored.columns)
        assert stored.sort(stored.columns).equals(rebuilt.sort(rebuilt.columns)), f"gold/{table.name} drifted"


def assert_marts_in_the_lake_equal_the_warehouse(lake: Lake, warehouse: Path) -> list[str]:
    """Each mart the warehouse holds is in the lake as `marts/<model>` with the same rows;
    returns their names."""
    with duckdb.connect(str(warehouse), read_only=True) as connection:
        names = [name for (name,) in connection.sql("select table_name from duckdb_tables()").fetchall()]
        marts = sorted(name for name in names if name.startswith("mart_"))
        for name in marts:
            # DuckDB names the zone of its instants as its session does ("Etc/UTC"); Delta's are UTC.
            built = connection.sql(f"select * from main.{name}").pl()
            built = built.with_columns(pl.col(pl.Datetime).dt.convert_time_zone("UTC"))
            copied = lake.table("marts", name)
            assert copied.sort(copied.columns).equals(built.sort(built.columns)), f"marts/{name}"
    return marts


def assert_bronze_holds_each_version_once(lake: Lake) -> None:
    """No row version, tombstone or event line twice in bronze, and bronze's live keys are the
    source's: what runs that raced or were killed must leave."""
    for contract in lake.contracts:
        bronze = lake.table("bronze", contract.name)
        if not contract.is_database:
            assert bronze.select("_source_file", "_line_number").is_duplicated().sum() == 0, contract.name
            continue
        versions = tombstones.versions(bronze).select(*contract.primary_key, contract.watermark.column)
        assert versions.is_duplicated().sum() == 0, f"bronze/{contract.name} holds a row version twice"
        deleted = bronze.filter(pl.col(OP) == DELETE).select(contract.primary_key)
        assert deleted.is_duplicated().sum() == 0, f"bronze/{contract.name} holds a tombstone twice"
        live = tombstones.live_keys(bronze, contract)
        assert live.height == lake.source_rows(contract.source.table).height, contract.name


def ledgers(lake: Lake) -> dict[str, int | None]:
    """Bronze's watermark of each database table, after asserting that every landing file is in
    bronze's ledger and silver's position is bronze's newest version."""
    watermarks = {}
    for contract in lake.contracts:
        bronze = delta.load_table(lake.uri("bronze", contract.name))
        if contract.is_database:
            watermarks[contract.name] = ledger.read(bronze, ledger.bronze_watermark(contract.name))
        else:
            landed = sorted(lake.landing.glob(contract.source.glob))
            assert landed, contract.source.glob
            for file in landed:
                assert ledger.ingested_file(bronze, contract.name, file.name) is not None, file.name
        silver = delta.load_table(lake.uri("silver", contract.name))
        assert ledger.read(silver, ledger.silver_position(contract.name)) == bronze.version(), contract.name
    return watermarks


def sqlite_source(folder: Path) -> SourceDatabase:
    return SourceDatabase(url=f"sqlite:///{folder / 'source' / 'shop.db'}", backoff_seconds=0.05)


def written_a_while_ago(database: Path) -> None:
    """Date a SQLite source's last write a minute back, as a source nobody has written to
    lately: its version is then known, where a file written a moment ago has none
    (lakehouse/sources/versions.py)."""
    moment = time.time() - 60
    for path in database.parent.glob(f"{database.name}*"):
        os.utime(path, (moment, moment))


def postgres_source() -> SourceDatabase:
    if not POSTGRES_URL:
        if os.environ.get("CI"):
            pytest.fail("LAKEHOUSE_TEST_POSTGRES_URL is not set: .ci/run starts PostgreSQL and sets it")
        pytest.skip("no PostgreSQL: set LAKEHOUSE_TEST_POSTGRES_URL (.ci/run does)")
    return SourceDatabase(url=POSTGRES_URL, backoff_seconds=0.05)


@pytest.fixture
def instance_database() -> Iterator[str]:
    """A new, empty PostgreSQL database for a Dagster instance (a shared deployment's), dropped
    afterwards."""
    url = urlsplit(postgres_source().url)
    name = f"dagster_{uuid.uuid4().hex[:8]}"
    admin = psycopg2.connect(postgres_source().url)
    admin.autocommit = True
    admin.cursor().execute(f"CREATE DATABASE {name}")
    try:
        yield f"postgresql+psycopg2://{url.netloc}/{name}" + (f"?{url.query}" if url.query else "")
    finally:
        admin.cursor().execute(f"DROP DATABASE {name} WITH (FORCE)")
        admin.close()


@pytest.fixture(scope="session", autouse=True)
def dbt_manifest() -> None:
    """The manifest `make` prepares; built here when pytest runs on its own."""
    if not dbt_project.manifest_path.exists():
        subprocess.run(
            [DBT_EXECUTABLE, "parse", "--profiles-dir", "."], cwd=dbt_project.project_dir, check=True
        )


@pytest.fixture(scope="session")
def demo_lake(tmp_path_factory: pytest.TempPathFactory) -> DemoLake:
    """Makes a fresh demo lake in a folder: a copy of one demo source (SQLite) built per test run,
    since every default `init` gives the same rows and files, with an empty lakehouse."""
    original = tmp_path_factory.mktemp("demo_source")
    Lake(original, sqlite_source(original)).init()

    def make(folder: Path) -> Lake:
        for part in ("source", "landing"):
            shutil.copytree(original / part, folder / part)
        return Lake(folder, sqlite_source(folder))

    return make


@pytest.fixture
def lake(tmp_path: Path, demo_lake: DemoLake) -> Lake:
    """A fresh demo source (SQLite) at scale 0.01 with an empty lakehouse."""
    return demo_lake(tmp_path)


@pytest.fixture(scope="session")
def loaded_demo_lake(tmp_path_factory: pytest.TempPathFactory, demo_lake: DemoLake) -> DemoLake:
    """Makes a demo lake in a folder after its first run of every asset but the dbt models: a
    copy of one loaded per test run, since every first run of the default demo gives the same
    tables. Its instance holds no run: tests that read the first run's events load their own."""
    original = demo_lake(tmp_path_factory.mktemp("loaded_demo"))
    original.materialize()

    def make(folder: Path) -> Lake:
        for part in ("source", "landing", "lakehouse"):
            shutil.copytree(original.folder / part, folder / part)
        return Lake(folder, sqlite_source(folder))

    return make


@pytest.fixture
def loaded_lake(tmp_path: Path, loaded_demo_lake: DemoLake) -> Lake:
    """A demo lake after its first run of every asset but the dbt models."""
    return loaded_demo_lake(tmp_path)


@dataclass(frozen=True)
class BuiltDemo:
    """A demo lake as a user has it after `make run` and two batches more: its first run of
    every asset but dbt, then a run of every asset, the dbt models included."""

    original: Lake
    result: dg.ExecuteInProcessResult  # of the run with dbt
    dbt_outcomes: dict[str, str]  # its dbt build's status of each node, by unique id

    def copy(self, folder: Path) -> Lake:
        """The lake and its warehouse in `folder`, with an instance of its own (no run in it)."""
        for part in ("source", "landing", "lakehouse"):
            shutil.copytree(self.original.folder / part, folder / part)
        shutil.copy2(self.original.warehouse, folder / self.original.warehouse.name)
        return Lake(folder, sqlite_source(folder), clock=self.original.clock)


def dbt_outcomes(run_id: str) -> dict[str, str]:
    """The status of each node the dbt build of run `run_id` ran, by unique id (read at once:
    the run folders of older builds are pruned)."""
    (results,) = (dbt_project.project_dir / "target").glob(f"dbt_models-{run_id[:7]}-*/run_results.json")
    return {outcome["unique_id"]: outcome["status"] for outcome in json.loads(results.read_text())["results"]}


@pytest.fixture(scope="session")
def built_demo(tmp_path_factory: pytest.TempPathFactory, loaded_demo_lake: DemoLake) -> BuiltDemo:
    """One built demo lake per test run (a dbt build costs seconds), for tests to copy."""
    original = loaded_demo_lake(tmp_path_factory.mktemp("built_demo"))
    original.advance(batches=2)
    result = original.materialize("*")
    return BuiltDemo(original, result, dbt_outcomes(result.run_id))


@pytest.fixture(params=["sqlite", "postgresql"])
def any_lake(request: pytest.FixtureRequest, tmp_path: Path) -> Lake:
    """The same demo source in SQLite and in PostgreSQL."""
    if request.param == "sqlite":
        return request.getfixturevalue("lake")
    built = Lake(tmp_path, postgres_source())
    built.init()
    return built


def command_environment(folder: Path, **env: str) -> dict[str, str]:
    """The environment of a project command run against the demo lake in `folder`; `env` adds
    variables or replaces these."""
    # No DAGSTER_HOME unless a test gives one: a throwaway instance, not the developer's.
    environment = {name: value for name, value in os.environ.items() if name != "DAGSTER_HOME"}
    environment.update(
        {
            "LAKEHOUSE_ROOT": str(folder / "lakehouse"),
            "LAKEHOUSE_SOURCE_URL": f"sqlite:///{folder / 'source' / 'shop.db'}",
            "LAKEHOUSE_LANDING": str(folder / "landing"),
            **env,
        }
    )
    return environment


def make_instance(home: Path, kind: str) -> None:
    """A deployment's Dagster instance in `home` (`make instance`, `kind` local or shared)."""
    made = subprocess.run(
        ["make", "-s", "instance", f"DAGSTER_HOME={home}", f"LAKEHOUSE_DEPLOYMENT={kind}"],
        cwd=PROJECT, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert made.returncode == 0, made.stdout + made.stderr
    if kind == "local":
        # Its storage, made now: a test opening the instance while a process it started opens
        # it for the first time would have both create the same SQLite files at once.
        dg.DagsterInstance.from_config(str(home)).dispose()


def make_deployment(folder: Path, kind: str, **env: str) -> dict[str, str]:
    """A deployment's instance (`make_instance`) and a demo source at SCALE in `folder`; returns
    its settings (`env` added, which for a shared one holds the variables it demands), for
    `command_environment`."""
    home = folder / "dagster_home"
    make_instance(home, kind)
    settings = {
        "DAGSTER_HOME": str(home),
        "LAKEHOUSE_DEPLOYMENT": kind,
        "LAKEHOUSE_WAREHOUSE": str(folder / "warehouse.duckdb"),
        "LAKEHOUSE_ALERTS": str(folder / "alerts.jsonl"),
        **env,
    }
    built = run_command(["lakehouse", "demo", "init", "--scale", str(SCALE)], folder, **settings)
    assert built.returncode == 0, built.stderr
    return settings


def local_deployment(folder: Path, **env: str) -> dict[str, str]:
    """A local deployment (`make_deployment`) in `folder`: its settings."""
    return make_deployment(folder, "local", **env)


def run_command(args: list[str] | str, folder: Path, **env: str) -> subprocess.CompletedProcess:
    """Run a project command (`lakehouse`, `dagster`) the way a user does, against `folder`;
    given as one string, it is split as a shell would (the README's are copied from these)."""
    if isinstance(args, str):
        args = shlex.split(args)
    return subprocess.run(
        [str(Path(sys.executable).parent / args[0]), *args[1:]],
        cwd=PROJECT, env=command_environment(folder, **env), capture_output=True, text=True, timeout=300,
    )  # fmt: skip


# The scaleout tests in two halves of about equal length, each half on one pytest-xdist worker: left
# to its scheduling, which hands each worker two tests ahead, the two longest of these few long
# tests can run one after the other on the same worker while the other idles.
SCALEOUT_FIRST_HALF = pytest.mark.xdist_group("scaleout_first_half")
SCALEOUT_SECOND_HALF = pytest.mark.xdist_group("scaleout_second_half")


# The fixtures of demo lakes (every fixture that builds one goes through `demo_lake`) and of
# local deployments (a test module's `deployment`).
SLOW_FIXTURES = {"demo_lake", "any_lake", "deployment"}
# What starts a project command or a deployment in other processes.
SLOW_CALLS = {"run_command", "local_deployment", "DagsterServer"}


def _names(code: CodeType) -> set[str]:
    """The global and attribute names a function's code uses, its comprehensions' included."""
    inner = (_names(const) for const in code.co_consts if isinstance(const, CodeType))
    return set(code.co_names).union(*inner)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark `slow` the tests `make test-fast` leaves out: those on a demo lake (through any
    fixture), those whose own body calls one of `SLOW_CALLS`, those parametrized on PostgreSQL
    and the browser tests. Any other slow test (dbt, PostgreSQL, a command started through a
    helper, a wait) carries the mark itself; a run on a few rows of a small test domain
    (tests/library.py) is fast."""
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        function = getattr(item, "function", None)
        calls = _names(function.__code__) if function is not None else set()
        callspec = getattr(item, "callspec", None)
        on_postgresql = callspec is not None and "postgresql" in callspec.params.values()
        if SLOW_FIXTURES & fixtures or SLOW_CALLS & calls or on_postgresql or item.get_closest_marker("e2e"):
            item.add_marker(pytest.mark.slow)
    # Under pytest-xdist the longest tests start first, so that none of them is left running
    # alone at the end while the other workers are idle: the servers and daemons, then the rest
    # of the slow ones.
    items.sort(
        key=lambda item: 0 if item.get_closest_marker("e2e") else 1 if item.get_closest_marker("slow") else 2
    )


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> pytest.TestReport:
    """A failed test that used a `dagster dev` shows the end of its log (webserver, daemon, runs)."""
    report = yield
    if report.failed:
        for value in getattr(item, "funcargs", {}).values():
            server = getattr(value, "server", value)
            if isinstance(server, DagsterServer):
                report.sections.append(("dagster dev log, last lines", server.tail()))
    return report


def error_line(done: subprocess.CompletedProcess, exit_code: int = 2) -> str:
    """The one line a command prints on stderr for a user's error, with no traceback."""
    assert done.returncode == exit_code, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    return lines[0]
