"""Files by location: a local folder or an object store, as a pyarrow file system.

delta-rs reads the object store's endpoint, region and credentials from the environment
(`AWS_ENDPOINT_URL`, `AWS_REGION`, `AWS_ACCESS_KEY_ID`, ...). pyarrow's own reading of a URI
asks AWS for the bucket's region first, which on any other S3-compatible server fails after
seconds; so every listing and read of the lake's logs and the landing zone gets its file system
here, from the same variables delta-rs uses.
"""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow.fs as pafs


def location(path_or_uri: str) -> str:
    """An absolute path, or the URI without a trailing slash."""
    return path_or_uri.rstrip("/") if "://" in path_or_uri else str(Path(path_or_uri).resolve())


def is_remote(path_or_uri: str) -> bool:
    return "://" in path_or_uri and not path_or_uri.startswith("file://")


def filesystem(path_or_uri: str) -> tuple[pafs.FileSystem, str]:
    """The file system holding `path_or_uri`, and the path within it."""
    where = location(path_or_uri)
    if not where.startswith("s3://"):
        return pafs.FileSystem.from_uri(where)
    options: dict[str, object] = {}
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if region:
        options["region"] = region
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint:
        scheme, _, address = endpoint.rpartition("://")
        options["endpoint_override"] = address or endpoint
        options["scheme"] = scheme or "https"
    return pafs.S3FileSystem(**options), where.removeprefix("s3://")
