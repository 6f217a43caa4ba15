"""The Kubernetes deployment (deploy/), checked as far as it can be without a cluster or a Docker
engine: the Helm values and the settings objects parse and name only settings the project has;
the instance the chart renders from the values loads in Dagster's instance schema with the K8s
run launcher and the shared deployment's run queue and pools; the executor each setting names
loads; and the image's build step builds both environments and the manifest from what the build
copies, the way `make install` does on one machine."""

import os
import shutil
import subprocess
from fnmatch import fnmatch
from pathlib import Path

import dagster as dg
import pytest
import yaml
from conftest import PROJECT, SCALEOUT_SECOND_HALF, run_command
from dagster_k8s import K8sRunLauncher

from lakehouse.orchestration.executors import EXECUTORS, run_executor
from lakehouse.settings import DEFAULTS, SHARED_REQUIRED

DEPLOY = PROJECT / "deploy"
DOCKERFILE = DEPLOY / "Dockerfile"
VALUES = yaml.safe_load((DEPLOY / "kubernetes" / "values.yaml").read_text())
SETTINGS = list(yaml.safe_load_all((DEPLOY / "kubernetes" / "lakehouse-env.example.yaml").read_text()))
# A cluster to point the run launcher at: it reads the file and connects to nothing.
KUBECONFIG = {
    "apiVersion": "v1",
    "kind": "Config",
    "clusters": [{"name": "test", "cluster": {"server": "https://127.0.0.1:6443"}}],
    "users": [{"name": "test", "user": {"token": "test"}}],
    "contexts": [{"name": "test", "context": {"cluster": "test", "user": "test"}}],
    "current-context": "test",
}


def camel_to_snake(mapping: dict) -> dict:
    def snake(key: str) -> str:
        return "".join(f"_{letter.lower()}" if letter.isupper() else letter for letter in key)

    return {snake(key): value for key, value in mapping.items()}


def rendered_instance(kubeconfig: Path) -> dict:
    """The parts of dagster.yaml the chart renders from the values (its templates' mapping of
    run launcher, run queue, pools and run monitoring), pointed at `kubeconfig` instead of the
    cluster the pod would be in."""
    launcher = VALUES["runLauncher"]["config"]["k8sRunLauncher"]
    concurrency = VALUES["concurrency"]
    return {
        "run_launcher": {
            "module": "dagster_k8s",
            "class": "K8sRunLauncher",
            "config": {
                "load_incluster_config": False,
                "kubeconfig_file": str(kubeconfig),
                "job_namespace": launcher.get("jobNamespace") or "lakehouse",
                "image_pull_policy": launcher["imagePullPolicy"],
                "service_account_name": "lakehouse",
                "dagster_home": {"env": "DAGSTER_HOME"},
                "instance_config_map": {"env": "DAGSTER_K8S_INSTANCE_CONFIG_MAP"},
                "postgres_password_secret": {"env": "DAGSTER_K8S_PG_PASSWORD_SECRET"},
                "env_config_maps": [
                    {"env": "DAGSTER_K8S_PIPELINE_RUN_ENV_CONFIGMAP"},
                    *(source["name"] for source in launcher["envConfigMaps"]),
                ],
                "env_secrets": [source["name"] for source in launcher["envSecrets"]],
                "env_vars": launcher["envVars"],
                "volume_mounts": launcher["volumeMounts"],
                "volumes": launcher["volumes"],
                "fail_pod_on_run_failure": launcher["failPodOnRunFailure"],
                "run_k8s_config": camel_to_snake(launcher["runK8sConfig"]),
            },
        },
        "run_coordinator": {"module": "dagster._core.run_coordinator", "class": "QueuedRunCoordinator"},
        "concurrency": {
            "pools": camel_to_snake(concurrency["pools"]),
            "runs": camel_to_snake(concurrency["runs"]),
        },
        "run_monitoring": camel_to_snake(VALUES["dagsterDaemon"]["runMonitoring"]),
    }


def test_the_instance_the_chart_renders_loads_with_the_k8s_run_launcher_and_one_lake_run_at_a_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert VALUES["runLauncher"]["type"] == "K8sRunLauncher"
    assert VALUES["runLauncher"]["config"]["k8sRunLauncher"]["loadInclusterConfig"] is True
    assert VALUES["postgresql"]["enabled"] is False  # the instance database is external
    (code_server,) = VALUES["dagster-user-deployments"]["deployments"]
    assert code_server["dagsterApiGrpcArgs"] == ["-m", "lakehouse.definitions"]

    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump(KUBECONFIG))
    instance_config = rendered_instance(kubeconfig)
    (tmp_path / "dagster.yaml").write_text(yaml.safe_dump(instance_config))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))
    monkeypatch.setenv("DAGSTER_K8S_INSTANCE_CONFIG_MAP", "lakehouse-instance")
    monkeypatch.setenv("DAGSTER_K8S_PG_PASSWORD_SECRET", "dagster-postgresql-secret")
    monkeypatch.setenv("DAGSTER_K8S_PIPELINE_RUN_ENV_CONFIGMAP", "lakehouse-pipeline-env")
    with dg.DagsterInstance.from_config(str(tmp_path)) as instance:
        assert isinstance(instance.run_launcher, K8sRunLauncher)
        concurrency = instance.get_concurrency_config()
        assert concurrency.run_queue_config.max_concurrent_runs == 3
        lanes = {
            limit["value"]: limit["limit"] for limit in concurrency.run_queue_config.tag_concurrency_limits
        }
        assert lanes == {"lake": 1, "event_days": 2}
        assert concurrency.pool_config.default_pool_limit == 1
        assert instance.run_monitoring_enabled and instance.run_monitoring_max_resume_run_attempts == 0

    shared = yaml.safe_load((DEPLOY / "dagster.shared.yaml").read_text())
    assert instance_config["concurrency"] == shared["concurrency"]
    queue = VALUES["dagsterDaemon"]["runCoordinator"]["config"]["queuedRunCoordinator"]
    assert camel_to_snake(queue) == shared["run_queue"]


def test_every_executor_a_setting_names_loads_in_dagsters_config_schema(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    @dg.asset
    def one() -> int:
        return 1

    # The in-process executor takes the usual run config; Celery's is fixed by the settings.
    run_configs = {"in_process": {"execution": {"config": {"retries": {"disabled": {}}}}}, "celery": {}}
    for name in EXECUTORS:
        monkeypatch.setenv("LAKEHOUSE_EXECUTOR", name)
        job = dg.Definitions(assets=[one], executor=run_executor()).resolve_implicit_global_asset_job_def()
        assert job.executor_def.name == name
        assert dg.validate_run_config(job, run_configs[name]) is not None


def settings_example() -> dict[str, str]:
    (config_map,) = (item for item in SETTINGS if item["kind"] == "ConfigMap")
    (secret,) = (item for item in SETTINGS if item["kind"] == "Secret")
    assert (config_map["metadata"]["name"], secret["metadata"]["name"]) == (
        "lakehouse-env",
        "lakehouse-secrets",
    )
    assert not set(config_map["data"]) & set(secret["stringData"])
    return {**config_map["data"], **secret["stringData"]}


def test_the_pods_settings_are_the_projects_and_load_a_shared_deployment(tmp_path: Path) -> None:
    settings = settings_example()
    known = {*DEFAULTS, *SHARED_REQUIRED, "LAKEHOUSE_DEPLOYMENT"}
    assert {name for name in settings if name.startswith("LAKEHOUSE_")} <= known
    assert set(SHARED_REQUIRED) <= set(settings) and settings["LAKEHOUSE_DEPLOYMENT"] == "shared"
    assert settings["LAKEHOUSE_EXECUTOR"] in EXECUTORS
    code_servers = VALUES["dagster-user-deployments"]["deployments"]
    for workload in (VALUES["dagsterWebserver"], VALUES["dagsterDaemon"], *code_servers):
        assert workload["envConfigMaps"] == [{"name": "lakehouse-env"}]
        assert workload["envSecrets"] == [{"name": "lakehouse-secrets"}]

    # A pod with these settings (the lake on local disk here) loads the definitions.
    local = {"LAKEHOUSE_ROOT": str(tmp_path / "lake"), "LAKEHOUSE_LANDING": str(tmp_path / "landing")}
    validate = ["dagster", "definitions", "validate", "-m", "lakehouse.definitions"]
    validated = run_command(validate, tmp_path, **{**settings, **local})
    assert validated.returncode == 0, validated.stdout[-2000:] + validated.stderr[-2000:]


def dockerfile() -> list[tuple[str, str]]:
    """The Dockerfile's instructions, continuation lines joined."""
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return [(line.split(None, 1)[0], line.split(None, 1)[1]) for line in lines]


def ignored(path: str, patterns: list[str]) -> bool:
    parts = Path(path).parts
    prefixes = ["/".join(parts[: end + 1]) for end in range(len(parts))]
    patterns = [variant for pattern in patterns for variant in (pattern, pattern.removeprefix("**/"))]
    return any(fnmatch(prefix, pattern) for pattern in patterns for prefix in prefixes)


def build_context() -> list[str]:
    """The project's files that `docker build` sends: the tracked ones its ignore file keeps."""
    lines = (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
    patterns = [line for line in lines if line and not line.startswith("#")]
    tracked = subprocess.run(["git", "ls-files"], cwd=PROJECT, capture_output=True, text=True, check=True)
    files = tracked.stdout.splitlines()
    local = (".venv/bin/python", "dbt/.venv/bin/dbt", "data/lakehouse", ".env", "dbt/target/manifest.json")
    assert all(ignored(path, patterns) for path in local)
    return [path for path in files if not ignored(path, patterns)]


@pytest.mark.slow
@pytest.mark.scaleout
@SCALEOUT_SECOND_HALF
def test_the_image_build_step_builds_both_environments_and_the_manifest(tmp_path: Path) -> None:
    instructions = dockerfile()
    python = next(argument for kind, argument in instructions if kind == "FROM")
    assert python.startswith("python:3.11-"), "the image's Python is the lock files' (3.11)"
    environment = dict(os.environ)
    for name in ("DAGSTER_HOME", "VIRTUAL_ENV", "UV", "LAKEHOUSE_DEPLOYMENT"):
        environment.pop(name, None)
    # uv stays off the PATH, as in the image: the Makefile installs its own.
    uv = shutil.which("uv")
    if uv is not None:
        environment["PATH"] = os.pathsep.join(
            entry for entry in environment["PATH"].split(os.pathsep) if Path(entry) != Path(uv).parent
        )
    builds = []  # each build step with the environment it runs in
    for kind, argument in instructions:
        if kind == "ENV":
            pairs = (pair.split("=", 1) for pair in argument.split())
            environment.update({name: value.replace("$PATH", environment["PATH"]) for name, value in pairs})
        elif kind == "RUN" and "apt-get" not in argument:
            builds.append((argument, dict(environment)))
    (command, environment), *more = builds
    assert command == "make install" and not more
    context = tmp_path / "context"
    files = build_context()
    assert {"Makefile", "pyproject.toml", "uv.lock", "dbt/pyproject.toml", "dbt/uv.lock"} <= set(files)
    for path in files:
        (context / path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(PROJECT / path, context / path)
    # Kept on this machine: the instance folder in the test's, and uv's package cache, so that
    # the packages come from it instead of the registry.
    environment["DAGSTER_HOME"] = str(tmp_path / "dagster_home")
    environment.pop("UV_NO_CACHE")
    done = subprocess.run(command, shell=True, cwd=context, env=environment, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    assert (context / "dbt" / "target" / "manifest.json").is_file()
    instance = (tmp_path / "dagster_home" / "dagster.yaml").read_text()
    assert instance == (DEPLOY / "dagster.shared.yaml").read_text()
    for venv, module in ((".venv", "lakehouse.definitions"), ("dbt/.venv", "dbt.cli.main")):
        probe = f"import importlib.util; print(importlib.util.find_spec('{module}') is not None)"
        found = subprocess.run(
            [str(context / venv / "bin" / "python"), "-c", probe], cwd=context, capture_output=True, text=True
        )
        assert found.stdout.strip() == "True", module + found.stderr
