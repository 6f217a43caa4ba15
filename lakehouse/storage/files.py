"""Where the lake's files are and how to reach them: a local folder or an object store.

An object store is configured by dagster-deltalake's typed storage configs (`S3Config`,
`GcsConfig`, `AzureConfig`, `LocalConfig`), held by the resources of the lake and the landing
zone. Each registers its configuration for its location when Dagster sets it up; every table
and file below that location is then opened with those options: by delta-rs, by polars and by
pyarrow's file system, which without an explicit endpoint asks AWS for the bucket's region and
fails after seconds on any other S3-compatible server. A location no resource registered (the
command line, a script) is opened with what the environment configures.

`from_environment` builds the configuration from the variables each store's own tools read
(`AWS_ACCESS_KEY_ID`, `AWS_ENDPOINT_URL`, ...), as `dg.EnvVar`s for the definitions, so that the
UI shows their names and never their values.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlsplit

import dagster as dg
import pyarrow.fs as pafs
from dagster_deltalake import AzureConfig, GcsConfig, LocalConfig, S3Config

StorageConfig = S3Config | GcsConfig | AzureConfig | LocalConfig
PROVIDERS: dict[str, type[StorageConfig]] = {
    "s3": S3Config, "s3a": S3Config,
    "gs": GcsConfig, "gcs": GcsConfig,
    "az": AzureConfig, "abfs": AzureConfig, "abfss": AzureConfig, "azure": AzureConfig,
}  # fmt: skip
# Each config field and the variables it is read from, the first one set winning.
VARIABLES: dict[type[StorageConfig], dict[str, tuple[str, ...]]] = {
    S3Config: {
        "access_key_id": ("AWS_ACCESS_KEY_ID",),
        "secret_access_key": ("AWS_SECRET_ACCESS_KEY",),
        "token": ("AWS_SESSION_TOKEN",),
        "region": ("AWS_REGION", "AWS_DEFAULT_REGION"),
        "endpoint": ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"),
    },
    GcsConfig: {
        "service_account": ("GOOGLE_SERVICE_ACCOUNT",),
        "service_account_key": ("GOOGLE_SERVICE_ACCOUNT_KEY",),
        "application_credentials": ("GOOGLE_APPLICATION_CREDENTIALS",),
    },
    AzureConfig: {
        "account_name": ("AZURE_STORAGE_ACCOUNT_NAME",),
        "account_key": ("AZURE_STORAGE_ACCOUNT_KEY",),
        "sas_key": ("AZURE_STORAGE_SAS_KEY",),
        "client_id": ("AZURE_CLIENT_ID",),
        "client_secret": ("AZURE_CLIENT_SECRET",),
        "tenant_id": ("AZURE_TENANT_ID",),
    },
    LocalConfig: {},
}
# Plain HTTP to the store: only for a server on loopback or a private network.
ALLOW_HTTP = "AWS_ALLOW_HTTP"

_registered: dict[str, dict[str, str]] = {}


def location(path_or_uri: str) -> str:
    """An absolute path, or the URI without a trailing slash."""
    return path_or_uri.rstrip("/") if "://" in path_or_uri else str(Path(path_or_uri).resolve())


def is_remote(path_or_uri: str) -> bool:
    return "://" in path_or_uri and not path_or_uri.startswith("file://")


def from_environment(path_or_uri: str, as_names: bool = True) -> tuple[StorageConfig, bool]:
    """The configuration of the store holding `path_or_uri` from the variables set now, as
    `dg.EnvVar`s naming them (`as_names`) or their values, and whether plain HTTP is allowed: a
    resource's `storage` and `allow_http`."""
    scheme = urlsplit(path_or_uri).scheme if is_remote(path_or_uri) else ""
    config = PROVIDERS.get(scheme, LocalConfig)
    fields: dict[str, str] = {}
    for field, names in VARIABLES[config].items():
        name = next((name for name in names if os.environ.get(name)), None)
        if name is not None:
            fields[field] = dg.EnvVar(name) if as_names else os.environ[name]
    return config(**fields), os.environ.get(ALLOW_HTTP, "").lower() in ("1", "true", "yes")


def _options(storage: StorageConfig, allow_http: bool) -> dict[str, str]:
    # The configs' own `str_dict` calls pydantic's deprecated `dict()`, a warning per call.
    options = {name: str(value) for name, value in storage.model_dump(exclude_none=True).items()}
    del options["provider"]
    return {**options, "allow_http": "true"} if allow_http else options


def register(path_or_uri: str, storage: StorageConfig, allow_http: bool = False) -> None:
    """Open every table and file below `path_or_uri` with this configuration."""
    _registered[location(path_or_uri)] = _options(storage, allow_http)


def storage_options(path_or_uri: str) -> dict[str, str]:
    """The options registered for the location holding `path_or_uri` (the longest registered
    prefix). A location no resource registered (a script that builds none) is opened with what
    the environment configures. A folder needs none."""
    if not is_remote(path_or_uri):
        return {}
    where = location(path_or_uri)
    held = [prefix for prefix in _registered if where == prefix or where.startswith(f"{prefix}/")]
    if held:
        return dict(_registered[max(held, key=len)])
    return _options(*from_environment(where, as_names=False))


def filesystem(path_or_uri: str) -> tuple[pafs.FileSystem, str]:
    """The file system holding `path_or_uri`, with its registered options, and the path within it."""
    where = location(path_or_uri)
    if not where.startswith("s3://"):
        return pafs.FileSystem.from_uri(where)
    options = storage_options(where)
    keys = {"access_key_id": "access_key", "secret_access_key": "secret_key", "token": "session_token"}
    arguments: dict[str, object] = {keys[name]: options[name] for name in keys if name in options}
    if "region" in options:
        arguments["region"] = options["region"]
    if "endpoint" in options:
        scheme, _, address = options["endpoint"].rpartition("://")
        arguments["endpoint_override"] = address
        arguments["scheme"] = scheme or ("http" if "allow_http" in options else "https")
    return pafs.S3FileSystem(**arguments), where.removeprefix("s3://")
