"""Which source failures are worth retrying, and the errors the lakehouse reports for them.

A retry only helps when the failure is about the moment, not the request: a locked SQLite
file, a PostgreSQL server that refuses connections, is starting up, has no free slot, timed a
query out or chose it as a deadlock victim. A missing table or column, a syntax error or
refused credentials fail the same way every time, so they fail at once.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import adbc_driver_manager

if TYPE_CHECKING:
    from lakehouse.sources.contract import Contract

# PostgreSQL SQLSTATEs (prefixes) of passing conditions: 08 connection exception, 53
# insufficient resources (too many connections), 57P admin or crash shutdown and "cannot connect
# now" (starting up), 57014 query cancelled (statement timeout), 40001 serialization failure,
# 40P01 deadlock, 55P03 lock not available, 55006 object in use (a replication slot another run
# is reading at that moment).
TRANSIENT_SQLSTATES = ("08", "53", "57P", "57014", "40001", "40P01", "55P03", "55006")
# Failures the drivers report without a SQLSTATE: SQLite's fixed texts for SQLITE_BUSY and
# SQLITE_LOCKED (the ADBC SQLite driver passes no result code), and libpq's for a connection
# that never reached a server able to answer. Refused credentials reach the server, which
# answers "FATAL: ... authentication failed": none of these.
TRANSIENT_MESSAGES = (
    "database is locked",
    "database table is locked",
    "connection refused",
    "could not connect",
    "server closed the connection unexpectedly",
    "the database system is starting up",
    "the database system is shutting down",
    "sorry, too many clients",
    "timeout expired",
    "no such file or directory",  # the server's socket is absent while it is down
)


class SourceError(RuntimeError):
    """A source query that failed; the message names what was read (contract and table)."""


class SourceUnavailableError(SourceError):
    """The source stayed unreachable or locked through every retry."""


def is_transient(error: BaseException) -> bool:
    """A driver error that may not happen again: see TRANSIENT_SQLSTATES and TRANSIENT_MESSAGES."""
    if not isinstance(error, adbc_driver_manager.Error):
        return False
    if error.sqlstate:
        return error.sqlstate.startswith(TRANSIENT_SQLSTATES)
    if error.status_code == adbc_driver_manager.AdbcStatusCode.TIMEOUT:
        return True
    text = str(error).lower()
    return any(marker in text for marker in TRANSIENT_MESSAGES)


def summary(error: BaseException) -> str:
    """The driver's message on one line: its first line holds the reason; the rest repeats
    the query or points at it."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


def reading(contract: Contract, what: str = "extracting") -> str:
    """What a source query of the contract does, for its errors: the contract and the table."""
    return f"bronze/{contract.name}: {what} source table {contract.source.table}"
