"""A source table's version: a short text that changes whenever the table's rows may have
changed. Work over a source that has not changed since it was last done is not done again
(bronze's extraction and search for deletes, the checks that compare the source with the
lake); a database that cannot say gives None, and the work is done.

- SQLite: the database file, its write-ahead log and its rollback journal as the file system
  holds them (device, inode, size, modification time), since every commit writes one of them.
  A file modified in the last `SETTLE_SECONDS` gives None: file times advance by the kernel's
  clock tick, so two commits within one tick that leave the same size would look alike.
- PostgreSQL: the cluster's current snapshot (the next transaction id and those in progress)
  and the server's start time. Every write takes a transaction id, and reads take none, so it
  moves with each write anywhere in the cluster, autovacuum's included, and with nothing else;
  a transaction in progress when it was read changes it when it ends. A server that does not
  answer the question gives None.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

SETTLE_SECONDS = 2
SQLITE_FILES = ("", "-wal", "-journal")

POSTGRESQL = "SELECT pg_current_snapshot()::text AS snapshot, pg_postmaster_start_time()::text AS started"


def of_sqlite_file(path: Path, now_ns: int | None = None) -> str | None:
    """The version of every table of the SQLite database at `path`."""
    now_ns = time.time_ns() if now_ns is None else now_ns
    parts = []
    for suffix in SQLITE_FILES:
        try:
            status = os.stat(f"{path}{suffix}")
        except FileNotFoundError:
            parts.append("-")
            continue
        if now_ns - status.st_mtime_ns < SETTLE_SECONDS * 1_000_000_000:
            return None
        parts.append(f"{status.st_dev}:{status.st_ino}:{status.st_size}:{status.st_mtime_ns}")
    return "sqlite " + " ".join(parts)


def of_postgresql(snapshot: str | None, started: str | None) -> str | None:
    """The version of every table of a PostgreSQL cluster from what `POSTGRESQL` answered."""
    return None if snapshot is None or started is None else f"postgresql {snapshot} {started}"
