"""The Dagster resources: every outside system an asset, check or sensor touches, configured
from the environment in `lakehouse/definitions.py`.

- `lakehouse`: the Delta root, a folder or an object-store URI;
- `source`: the operational database (SQLite or PostgreSQL), read through ADBC with retries;
- `landing`: the folder where event files arrive;
- `pii`: the keyed hash silver stores in place of contract-marked PII;
- `warehouse`: the DuckDB file dbt builds the marts in;
- `clock`: the time data age is measured against;
- `alerts`: the alerts log and webhook.

dbt's own resource (`DbtCli`) is dagster-dbt's, configured in `lakehouse/marts/assets.py`.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import adbc_driver_manager
import dagster as dg
import polars as pl
import pyarrow as pa
import tenacity
from pyarrow import fs
from pydantic import Field

from lakehouse.settings import DEFAULTS
from lakehouse.sources import versions
from lakehouse.sources.contract import Contract
from lakehouse.sources.errors import SourceError, SourceUnavailableError, is_transient, summary
from lakehouse.storage import files

T = TypeVar("T")
logger = dg.get_dagster_logger()


class _OnAStore(dg.ConfigurableResource):
    """A resource whose files may be on an object store, with the store's typed configuration:
    registered for its location when Dagster sets the resource up (`storage.files`)."""

    # Typed without `| None`: Dagster's config schema takes no None in a discriminated union,
    # but a default of None (no configuration: the environment's) it does.
    storage: files.StorageConfig = Field(  # type: ignore[assignment]
        default=None,
        discriminator="provider",
        description="The object store's configuration (dagster-deltalake's); empty: from the environment.",
    )
    allow_http: bool = Field(
        default=False, description="Plain HTTP to the object store (a server on loopback)."
    )

    @property
    def location(self) -> str:
        raise NotImplementedError

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        if self.storage is not None:
            files.register(self.location, self.storage, self.allow_http)


class LakehouseStorage(_OnAStore):
    """The Delta root: a local folder or an object-store URI (s3://, gs://, az://)."""

    root: str

    @property
    def location(self) -> str:
        """The root as an absolute path or URI."""
        return files.location(self.root)

    def table_uri(self, layer: str, name: str) -> str:
        return f"{self.location}/{layer}/{name}"

    def tables(self) -> list[tuple[str, str]]:
        """(layer, name) of every Delta table under the root: each `<layer>/<name>` with a `_delta_log`."""
        filesystem, root = files.filesystem(self.location)

        def folders(path: str) -> list[str]:
            found = filesystem.get_file_info(fs.FileSelector(path, allow_not_found=True))
            return sorted(info.base_name for info in found if info.type == fs.FileType.Directory)

        return [
            (layer, name)
            for layer in folders(root)
            for name in folders(f"{root}/{layer}")
            if filesystem.get_file_info(f"{root}/{layer}/{name}/_delta_log").type == fs.FileType.Directory
        ]


class LandingZone(_OnAStore):
    """Where event files arrive: a local folder or an object-store URI (s3://)."""

    path: str

    @property
    def location(self) -> str:
        """The landing zone as an absolute path or URI."""
        return files.location(self.path)


# ADBC's SQLite driver infers each column's type from the first batch of rows and fails when a
# later batch disagrees (a column NULL in its first rows, text later). One batch for the whole
# result makes the inference see every row; an all-NULL column is typed by bronze.
SQLITE_ONE_BATCH = {"adbc.sqlite.query.batch_rows": str(2**30)}


def _without_extension_types(table: pa.Table) -> pa.Table:
    """PostgreSQL NUMERIC arrives as an opaque extension type; keep its exact text instead."""
    columns = [
        pa.chunked_array([chunk.storage for chunk in column.chunks], type=column.type.storage_type)
        if isinstance(column.type, pa.BaseExtensionType)
        else column
        for column in table.columns
    ]
    return pa.table(columns, names=table.column_names)


SQLITE_BUSY_TIMEOUT_MS = 5_000


class SourceDatabase(dg.ConfigurableResource):
    """The shop's operational database; `url` is `sqlite:///path` or `postgresql://...`."""

    url: str
    max_attempts: int = 6
    backoff_seconds: float = 0.5
    max_backoff_seconds: float = 15.0

    @property
    def dialect(self) -> str:
        scheme = urlsplit(self.url).scheme.split("+")[0]
        if scheme in ("postgresql", "postgres"):
            return "postgresql"
        if scheme == "sqlite":
            return "sqlite"
        raise ValueError(f"LAKEHOUSE_SOURCE_URL: unsupported scheme '{scheme}' (use sqlite or postgresql)")

    @property
    def sqlite_path(self) -> Path:
        return Path(self.url.removeprefix("sqlite:///"))

    @property
    def label(self) -> str:
        """Where the data came from, without credentials."""
        if self.dialect == "sqlite":
            return f"sqlite:{self.sqlite_path.name}"
        parts = urlsplit(self.url)
        return f"postgresql:{parts.hostname or 'localhost'}{parts.path}"

    def placeholder(self, position: int) -> str:
        return "?" if self.dialect == "sqlite" else f"${position}"

    def with_retries(self, action: Callable[[], T], what: str) -> T:
        """Run `action`, retrying transient failures with exponential backoff and full jitter.

        The only retry layer for the source: a driver error that will fail again (see
        `is_transient`) is raised at once as a SourceError naming `what`."""
        retrying = tenacity.Retrying(
            stop=tenacity.stop_after_attempt(self.max_attempts),
            wait=tenacity.wait_random_exponential(self.backoff_seconds, max=self.max_backoff_seconds),
            retry=tenacity.retry_if_exception(
                lambda error: isinstance(error, adbc_driver_manager.Error) and is_transient(error)
            ),
            reraise=True,
        )
        try:
            return retrying(action)
        except adbc_driver_manager.Error as error:
            if not is_transient(error):
                raise SourceError(f"{what} on {self.label} failed: {summary(error)}") from error
            raise SourceUnavailableError(
                f"{what} failed after {self.max_attempts} attempts against {self.label}: {summary(error)}"
            ) from error

    def _open(self) -> Any:
        if self.dialect == "sqlite":
            import adbc_driver_sqlite.dbapi as driver

            if not self.sqlite_path.exists():
                raise FileNotFoundError(
                    f"source database {self.sqlite_path} does not exist; run `lakehouse demo init`"
                )
            connection = driver.connect(str(self.sqlite_path))
            # Another process's read or write holds the file's lock for a moment (the demo's
            # writer while a run reads, a run while `lakehouse demo advance` commits): wait for
            # it, as SQLite's own clients do, instead of failing at once with "database is locked".
            with connection.cursor() as cursor:
                cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
                cursor.fetchall()
            return connection
        import adbc_driver_postgresql.dbapi as driver

        return driver.connect(self.url)

    @contextmanager
    def connect(self) -> Iterator[Any]:
        """An ADBC DB-API connection, opened with retries and always closed."""
        connection = self.with_retries(self._open, "connecting")
        try:
            yield connection
        finally:
            connection.close()

    def read(self, query: str, parameters: Sequence[Any] = (), what: str = "query") -> pl.DataFrame:
        """Run a query and return its result; connecting and reading are retried together."""

        def attempt() -> pa.Table:
            connection = self._open()
            try:
                cursor = connection.cursor()
                if self.dialect == "sqlite":
                    cursor.adbc_statement.set_options(**SQLITE_ONE_BATCH)
                cursor.execute(query, list(parameters) or None)
                return cursor.fetch_arrow_table()
            finally:
                connection.close()

        return pl.from_arrow(_without_extension_types(self.with_retries(attempt, what)))

    def version(self, table: str) -> str | None:
        """What the rows of `table` are now, as a text that changes whenever they may have
        (lakehouse/sources/versions.py); None when the database cannot say."""
        if self.dialect == "sqlite":
            return versions.of_sqlite_file(self.sqlite_path)
        try:
            answer = self.read(versions.POSTGRESQL, what=f"versioning {table}")
        except SourceUnavailableError:
            raise  # asked again by the extraction, it would only wait through its retries twice
        except SourceError:
            return None
        return versions.of_postgresql(*answer.row(0))

    def execute(self, statements: Sequence[str], what: str = "statement") -> None:
        """Run statements that return no rows in one transaction; retried together, like `read`."""

        def attempt() -> None:
            connection = self._open()
            try:
                cursor = connection.cursor()
                for statement in statements:
                    cursor.execute(statement)
                connection.commit()
            finally:
                connection.close()

        self.with_retries(attempt, what)


DEVELOPMENT_SALT = DEFAULTS["LAKEHOUSE_PII_SALT"]


class PiiHasher(dg.ConfigurableResource):
    """HMAC-SHA256 of PII values under a secret salt: joinable, not reversible without the salt."""

    salt: str

    @property
    def uses_development_salt(self) -> bool:
        return self.salt == DEVELOPMENT_SALT

    def hash_value(self, value: str) -> str:
        return hmac.new(self.salt.encode(), value.encode(), hashlib.sha256).hexdigest()

    def protect(self, frame: pl.DataFrame, contract: Contract) -> pl.DataFrame:
        """The frame with every contract column marked `pii: hash` replaced by its hash."""
        columns = [
            name for name, spec in contract.columns.items() if spec.pii == "hash" and name in frame.columns
        ]
        return frame.with_columns(
            pl.Series(
                name, [None if v is None else self.hash_value(str(v)) for v in frame[name]], dtype=pl.String
            )
            for name in columns
        )


class Warehouse(dg.ConfigurableResource):
    """The DuckDB file dbt builds the marts in."""

    path: str

    @property
    def location(self) -> Path:
        return Path(self.path).resolve()


class Clock(dg.ConfigurableResource):
    """The time data age is measured against: the wall clock, unless `now` pins it (ISO-8601),
    as tests do and as a user does to re-evaluate checks as of a past moment."""

    now: str | None = None

    def current(self) -> datetime:
        if not self.now:
            return datetime.now(UTC)
        moment = datetime.fromisoformat(self.now)
        return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


class AlertSink(dg.ConfigurableResource):
    """Where alerts go: always a line in `log_path`; also a JSON POST to `webhook` when set,
    retried with exponential backoff and jitter. Sending never raises: an alert that cannot be
    delivered is logged, and the log line is there whatever the webhook does."""

    log_path: str
    webhook: str = ""
    attempts: int = 3
    backoff_seconds: float = 1.0
    timeout_seconds: float = 5.0

    def send(self, alert: dict[str, Any]) -> bool:
        """Record the alert; True when every configured destination took it."""
        recorded = self._append(alert)
        return self._post(alert) and recorded if self.webhook else recorded

    def _append(self, alert: dict[str, Any]) -> bool:
        path = Path(self.log_path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("a") as log:
                log.write(json.dumps(alert, sort_keys=True) + "\n")
        except OSError as error:
            logger.error(f"could not write the alert to {path}: {error}")
            return False
        return True

    def _post(self, alert: dict[str, Any]) -> bool:
        body = json.dumps(alert).encode()
        # The URL may carry a token: name the host only.
        host = urllib.parse.urlparse(self.webhook).hostname

        def post() -> None:
            request = urllib.request.Request(
                self.webhook, data=body, headers={"Content-Type": "application/json"}, method="POST"
            )
            with urllib.request.urlopen(request, timeout=self.timeout_seconds):
                pass

        def failed(attempt: tenacity.RetryCallState) -> None:
            error = attempt.outcome.exception() if attempt.outcome else None
            logger.warning(
                f"alert webhook at {host}: attempt {attempt.attempt_number}/{self.attempts} failed: {error}"
            )

        retrying = tenacity.Retrying(
            stop=tenacity.stop_after_attempt(self.attempts),
            wait=tenacity.wait_random_exponential(self.backoff_seconds),
            retry=tenacity.retry_if_exception_type((urllib.error.URLError, OSError, ValueError)),
            after=failed,
            retry_error_callback=lambda _attempt: False,
        )
        return retrying(post) is None
