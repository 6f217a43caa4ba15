"""The operational source database (SQLite or PostgreSQL), read through ADBC with retries."""

from __future__ import annotations

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

from lakehouse.contract import Contract
from lakehouse.source_errors import SourceError, SourceUnavailableError, is_transient, summary

T = TypeVar("T")

# SQLite has no timestamp type: the demo writes ISO-8601 text in UTC in this one fixed-width
# form (a polars format; Python's `isoformat(sep=" ", timespec="microseconds")` of a UTC
# datetime is the same), whose text order is time order: watermark ranges compare values in
# it as text, through the column's index (see `lakehouse.bronze.watermark`).
SQLITE_TIMESTAMP_FORMAT = "%Y-%m-%d %H:%M:%S%.6f%:z"
# ADBC's SQLite driver infers each column's type from the first batch of rows and fails when a
# later batch disagrees (a column NULL in its first rows, text later). One batch for the whole
# result makes the inference see every row; an all-NULL column is typed by bronze.
SQLITE_ONE_BATCH = {"adbc.sqlite.query.batch_rows": str(2**30)}


def timestamp_text(value: datetime) -> str:
    """A moment in the text form SQLite sources store (see SQLITE_TIMESTAMP_FORMAT)."""
    return value.astimezone(UTC).isoformat(sep=" ", timespec="microseconds")


def reading(contract: Contract, what: str = "extracting") -> str:
    """What a source query of the contract does, for its errors: the contract and the table."""
    return f"bronze/{contract.name}: {what} source table {contract.source.table}"


def _without_extension_types(table: pa.Table) -> pa.Table:
    """PostgreSQL NUMERIC arrives as an opaque extension type; keep its exact text instead."""
    columns = [
        pa.chunked_array([chunk.storage for chunk in column.chunks], type=column.type.storage_type)
        if isinstance(column.type, pa.BaseExtensionType)
        else column
        for column in table.columns
    ]
    return pa.table(columns, names=table.column_names)


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
            return driver.connect(str(self.sqlite_path))
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
