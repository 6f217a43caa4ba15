"""Dagster's SQLite event log for one machine, keeping its index database open between writes.

Dagster's own SQLite event log creates an engine and opens a connection for every write and
closes it after, and each close of a WAL database checkpoints it: a run writes hundreds of
events, each through several such connections. Holding one connection to the index database
(asset and check events, run status, every cross-run query) saves that work on every write.
Each run's own database keeps Dagster's open-and-close: the webserver streams a run's events by
watching that file change, which a held connection would postpone to the next checkpoint.
Dagster also asks hundreds of times a run whether a table exists, each time through a new
engine: a table once found is remembered, as tables are only ever added.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import sqlalchemy as db
from dagster._core.storage.event_log.sqlite.sqlite_event_log import INDEX_SHARD_NAME
from dagster._core.storage.event_log.sqlite.sqlite_event_log import (
    SqliteEventLogStorage as DagsterSqliteEventLogStorage,
)
from dagster._core.storage.sqlite import SQLITE_BUSY_TIMEOUT_SECONDS, create_db_conn_string
from dagster._serdes import ConfigurableClassData
from sqlalchemy.pool import QueuePool


class SqliteEventLogStorage(DagsterSqliteEventLogStorage):
    """Dagster's run-sharded SQLite event log with one long-lived connection to its index shard."""

    def __init__(self, base_dir: str, inst_data: ConfigurableClassData | None = None) -> None:
        # One connection, used by one thread at a time: SQLite serialises writers anyway, and
        # Dagster's own storage holds a lock around every connection too. Made before Dagster's
        # constructor, which already queries the index.
        self._index_engine = db.create_engine(
            create_db_conn_string(base_dir, INDEX_SHARD_NAME),
            poolclass=QueuePool,
            pool_size=1,
            max_overflow=0,
            connect_args={"timeout": SQLITE_BUSY_TIMEOUT_SECONDS, "check_same_thread": False},
        )
        self._index_lock = threading.Lock()
        self._tables_found: set[str] = set()
        super().__init__(base_dir, inst_data)

    # Dagster's builds its own class by name, not `cls`.
    @classmethod
    def from_config_value(
        cls, inst_data: ConfigurableClassData | None, config_value: Mapping[str, Any]
    ) -> SqliteEventLogStorage:
        return cls(inst_data=inst_data, **config_value)

    @contextmanager
    def index_connection(self) -> Iterator[db.Connection]:
        with self._index_lock, self._index_engine.begin() as connection:
            yield connection

    def has_table(self, table_name: str) -> bool:
        # Not through the held connection: Dagster also calls this inside `index_connection`.
        if table_name not in self._tables_found and super().has_table(table_name):
            self._tables_found.add(table_name)
        return table_name in self._tables_found

    def dispose(self) -> None:
        super().dispose()
        self._index_engine.dispose()
