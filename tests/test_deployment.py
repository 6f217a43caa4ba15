"""The deployment switch: the instance the Makefile writes, and what a shared deployment demands."""

import subprocess
from pathlib import Path

import dagster as dg
import pyarrow.fs as pafs
import pytest
from conftest import PROJECT, Lake, run_command
from dagster_deltalake import LocalConfig, S3Config

from lakehouse.orchestration.executors import run_executor
from lakehouse.settings import SHARED_REQUIRED, SettingsError
from lakehouse.storage import files


def make_instance(home: Path, deployment: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["make", "-s", "instance", f"DAGSTER_HOME={home}", f"LAKEHOUSE_DEPLOYMENT={deployment}"],
        cwd=PROJECT, capture_output=True, text=True, check=False,
    )  # fmt: skip


PRODUCTS = dg.AssetKey(["bronze", "products"])
# The local event log's index database, under the instance's folder.
INDEX_DB = Path("history", "runs", "index.db")


def materialize_products(lake: Lake, **env: str) -> None:
    """`dagster asset materialize --select bronze/products` in a process of its own."""
    materialized = run_command(
        ["dagster", "asset", "materialize", "-m", "lakehouse.definitions", "--select", "bronze/products"],
        lake.folder, **env,
    )  # fmt: skip
    assert materialized.returncode == 0, materialized.stderr[-2000:]


def recorded_product_rows(instance: dg.DagsterInstance) -> int:
    """The row count the instance recorded for bronze/products' latest materialisation."""
    recorded = instance.get_latest_materialization_event(PRODUCTS)
    assert recorded is not None
    return recorded.asset_materialization.metadata["dagster/row_count"].value


def test_make_writes_a_local_instance_with_a_run_queue_of_one(tmp_path: Path) -> None:
    assert make_instance(tmp_path, "local").returncode == 0

    instance = dg.DagsterInstance.from_config(str(tmp_path))
    concurrency = instance.get_concurrency_config()
    assert type(instance.run_storage).__name__ == "SqliteRunStorage"
    assert type(instance.event_log_storage).__name__ == "SqliteEventLogStorage"
    assert (tmp_path / INDEX_DB).exists()
    assert concurrency.run_queue_config.max_concurrent_runs == 1
    assert concurrency.pool_config.default_pool_limit == 1
    assert "enabled: false" in (tmp_path / "dagster.yaml").read_text().split("telemetry:")[1]
    assert (tmp_path / ".nux" / "nux.yaml").read_text() == "seen: 1\n"


def test_a_local_instance_sees_other_processes_runs(lake: Lake) -> None:
    home = lake.folder / "dagster_home"
    assert make_instance(home, "local").returncode == 0

    with dg.DagsterInstance.from_config(str(home)) as instance:
        assert instance.get_latest_materialization_event(PRODUCTS) is None
        materialize_products(lake, DAGSTER_HOME=str(home))
        assert recorded_product_rows(instance) == len(lake.source_rows("products"))

        instance.report_runless_asset_event(dg.AssetObservation(PRODUCTS, metadata={"reviewed_by": "ops"}))
        read = run_command(
            ["python", "-c", "import dagster as dg; instance = dg.DagsterInstance.get(); "
             "print(instance.fetch_observations(dg.AssetKey(['bronze', 'products']), limit=1).records[0]"
             ".asset_observation.metadata['reviewed_by'].value)"],
            lake.folder, DAGSTER_HOME=str(home),
        )  # fmt: skip
        assert read.stdout.strip() == "ops", read.stderr[-2000:]


def test_an_unknown_deployment_is_refused(tmp_path: Path) -> None:
    made = make_instance(tmp_path, "staging")

    assert made.returncode == 2
    assert "LAKEHOUSE_DEPLOYMENT must be local or shared, not 'staging'" in made.stdout
    assert not (tmp_path / "dagster.yaml").exists()


def test_the_executor_is_the_one_lakehouse_executor_names(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LAKEHOUSE_EXECUTOR", raising=False)
    assert run_executor().name == "in_process"
    monkeypatch.setenv("LAKEHOUSE_EXECUTOR", "celery")
    assert run_executor().name == "celery"
    monkeypatch.setenv("LAKEHOUSE_EXECUTOR", "threads")
    with pytest.raises(
        SettingsError, match=r"^LAKEHOUSE_EXECUTOR must be one of in_process, celery, not 'threads'$"
    ):
        run_executor()


STORE_VARIABLES = {
    "AWS_ACCESS_KEY_ID": "key-id",
    "AWS_SECRET_ACCESS_KEY": "the-secret",
    "AWS_ENDPOINT_URL": "http://127.0.0.1:9000",
    "AWS_ALLOW_HTTP": "true",
}


def test_the_object_store_is_configured_by_the_names_of_its_variables(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The definitions hold the store's typed configuration with each secret as the name of its
    variable (what the UI shows); a location a resource registered is opened with its own
    configuration, whatever the environment holds, and pyarrow's listing gets the same."""
    for name in ("AWS_SESSION_TOKEN", "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)
    for name, value in STORE_VARIABLES.items():
        monkeypatch.setenv(name, value)

    storage, allow_http = files.from_environment("s3://bucket/lake")
    assert isinstance(storage, S3Config) and allow_http
    assert storage.secret_access_key == dg.EnvVar("AWS_SECRET_ACCESS_KEY")
    assert storage.endpoint == dg.EnvVar("AWS_ENDPOINT_URL") and "the-secret" not in repr(storage)
    assert isinstance(files.from_environment("./data/lakehouse")[0], LocalConfig)

    root = "s3://registered-bucket/lake"
    files.register(
        root, S3Config(endpoint="http://10.1.2.3:9000", access_key_id="own", secret_access_key="s")
    )
    options = files.storage_options(f"{root}/silver/orders")
    assert (options["endpoint"], options["access_key_id"]) == ("http://10.1.2.3:9000", "own")
    assert files.storage_options("s3://bucket/lake/silver/orders")["access_key_id"] == "key-id"
    filesystem, path = files.filesystem(f"{root}/landing")
    assert isinstance(filesystem, pafs.S3FileSystem) and path == "registered-bucket/lake/landing"


def test_a_shared_deployment_refuses_local_defaults(tmp_path: Path) -> None:
    validated = run_command(
        ["dagster", "definitions", "validate", "-m", "lakehouse.definitions"], tmp_path,
        LAKEHOUSE_DEPLOYMENT="shared",
    )  # fmt: skip

    assert validated.returncode == 1
    assert (
        "LAKEHOUSE_DEPLOYMENT=shared needs LAKEHOUSE_WAREHOUSE, LAKEHOUSE_INSTANCE_DB, "
        "LAKEHOUSE_ALERT_WEBHOOK, LAKEHOUSE_PII_SALT set" in validated.stdout + validated.stderr
    )


def test_a_shared_deployment_keeps_its_runs_in_postgresql(
    lake: Lake, instance_database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = lake.folder / "dagster_home"
    assert make_instance(home, "shared").returncode == 0
    shared = {
        "LAKEHOUSE_DEPLOYMENT": "shared",
        "LAKEHOUSE_WAREHOUSE": str(lake.warehouse),
        "LAKEHOUSE_INSTANCE_DB": instance_database,
        "LAKEHOUSE_ALERT_WEBHOOK": "http://127.0.0.1:9/alerts",
        "LAKEHOUSE_PII_SALT": "a-secret-salt",
        "DAGSTER_HOME": str(home),
    }
    materialize_products(lake, **shared)
    assert set(SHARED_REQUIRED) <= {*shared, "LAKEHOUSE_ROOT", "LAKEHOUSE_SOURCE_URL", "LAKEHOUSE_LANDING"}

    monkeypatch.setenv("LAKEHOUSE_INSTANCE_DB", instance_database)
    instance = dg.DagsterInstance.from_config(str(home))
    assert type(instance.run_storage).__name__ == "PostgresRunStorage"
    assert recorded_product_rows(instance) == len(lake.source_rows("products"))
    instance.dispose()
