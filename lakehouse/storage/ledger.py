"""The ledger: how far each table has consumed its inputs, kept inside the table's own commits.

Every entry is a Delta app transaction (an id and an integer), committed in the same atomic
commit as the rows it describes, so a table and its ledger never disagree and the entries
survive log checkpoints. The entries, one home for their names:

- `bronze_watermark`: the highest source watermark (microseconds since the epoch) bronze has;
- `bronze_lsn`: for a change-captured table, the end LSN (PostgreSQL's log position, as an
  integer) of the last source transaction bronze holds, or of the snapshot it started from;
- `landing_file`: a landing file bronze has ingested (1), with `landing_file_size` (bytes) and
  `landing_file_checksum` (the file's `checksum`) beside it; a lake written
  before those two existed has only the first, and its files are still ingested;
- `bronze_deletes_checked`: when bronze last compared the source's keys with its own to find
  deletes (microseconds since the epoch), for a contract that looks for them on a cadence;
- `silver_position`: the bronze version silver has consumed;
- `gold_position`: the newest silver `_loaded_at` (microseconds) a gold table has consumed;
- `gold_deletes_position`: the silver version up to which a gold table has rebuilt what
  silver's deletes touched.
- `mart_built_from`: the `checksum` of what a mart's Delta copy was built from (the dbt
  project's manifest and the gold versions: the model's `built_from`), so that publishing the
  same build again writes nothing.

Writers are optimistic: a `Claim` remembers the version of the table its entries were read
at, and every commit that carries them fails with `LedgerMoved` when another writer committed
one of the same entries since. The loser then starts again from the new position
(`redo_when_moved`), so two runs at once never both append what one of them already did.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TypeVar

import dagster as dg
from deltalake import DeltaTable

from lakehouse.storage import files

T = TypeVar("T")

# Delta keeps an app transaction once it is set, so "never set" (a restore taking an entry
# back, a load that has not finished) is written as this value.
UNSET = -1
# A writer that loses the race this often in a row is racing a stuck loop, not a second run.
REDO_ATTEMPTS = 5
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def micros(moment: datetime) -> int:
    """A moment as an entry holds it: microseconds since the epoch."""
    return (moment - EPOCH) // timedelta(microseconds=1)


def moment(micros: int) -> datetime:
    """The moment an entry of microseconds since the epoch names."""
    return EPOCH + timedelta(microseconds=micros)


def bronze_watermark(dataset: str) -> str:
    return f"lakehouse.bronze.{dataset}.watermark"


def bronze_lsn(dataset: str) -> str:
    return f"lakehouse.bronze.{dataset}.lsn"


def bronze_deletes_checked(dataset: str) -> str:
    return f"lakehouse.bronze.{dataset}.deletes_checked"


def landing_file(dataset: str, file_name: str) -> str:
    return f"lakehouse.bronze.{dataset}.file:{file_name}"


def landing_file_size(dataset: str, file_name: str) -> str:
    return f"lakehouse.bronze.{dataset}.file_size:{file_name}"


def landing_file_checksum(dataset: str, file_name: str) -> str:
    return f"lakehouse.bronze.{dataset}.file_checksum:{file_name}"


@dataclass(frozen=True)
class IngestedFile:
    """A landing file as bronze ingested it; size and checksum are None for a file ingested
    before they were recorded."""

    size: int | None
    checksum: int | None


def checksum(data: bytes) -> int:
    """The checksum an entry holds (of a landing file, of what a mart was built from): 63 bits,
    so that it fits an entry (a signed 64-bit integer) and is never UNSET."""
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big") >> 1


def landing_file_entries(dataset: str, file_name: str, size: int, checksum: int) -> dict[str, int]:
    """The entries committed with an ingested file's rows."""
    return {
        landing_file(dataset, file_name): 1,
        landing_file_size(dataset, file_name): size,
        landing_file_checksum(dataset, file_name): checksum,
    }


def ingested_file(table: DeltaTable | None, dataset: str, file_name: str) -> IngestedFile | None:
    """What the ledger in this version of the table holds about a landing file, None when it
    has not been ingested."""
    if read(table, landing_file(dataset, file_name)) is None:
        return None
    return IngestedFile(
        read(table, landing_file_size(dataset, file_name)),
        read(table, landing_file_checksum(dataset, file_name)),
    )


def silver_position(dataset: str) -> str:
    return f"lakehouse.silver.{dataset}.bronze_version"


# What a gold table reads of silver beside its entries: the column telling when each silver row
# was last written, and the commit metadata naming, per date or timestamp column, the days the
# rows a commit deleted held (what a table built by period must rebuild).
LOADED_AT = "_loaded_at"
DELETED_DAYS = "lakehouse.deleted_days"


def gold_position(table: str, upstream: str) -> str:
    return f"lakehouse.gold.{table}.{upstream}.loaded_at"


def gold_deletes_position(table: str, upstream: str) -> str:
    return f"lakehouse.gold.{table}.{upstream}.deletes_version"


def mart_built_from(model: str) -> str:
    return f"lakehouse.marts.{model}.built_from"


def read(table: DeltaTable | None, key: str) -> int | None:
    """The entry `key` in this version of the table, None when not set."""
    value = table.transaction_version(key) if table is not None else None
    return None if value is None or value == UNSET else value


def keys_written(uri: str, after: int, until: int) -> set[str]:
    """Ids of the entries committed in versions after `after` up to `until`, read from the log
    itself (Delta has no API listing a table's transactions)."""
    filesystem, root = files.filesystem(uri)
    written: set[str] = set()
    for number in range(after + 1, until + 1):
        with filesystem.open_input_stream(f"{root}/_delta_log/{number:020d}.json") as log:
            for line in log.read().decode().splitlines():
                action = json.loads(line) if line.strip() else {}
                if "txn" in action:
                    written.add(action["txn"]["appId"])
    return written


class LedgerMoved(RuntimeError):
    """Another writer committed one of the entries this writer read, after it read them."""


class Claim:
    """The version of a table at which a writer read its ledger entries (None: the table did
    not exist). Commits carrying the entries go through `check` first and `advance` after."""

    def __init__(self, uri: str, table: DeltaTable | None) -> None:
        self.uri = uri
        self.version = None if table is None else table.version()

    def check(self, latest: DeltaTable | None, keys: Iterable[str]) -> None:
        """Raise `LedgerMoved` if a commit after the claimed version wrote one of `keys`.

        The commit itself is then made against `latest`, where Delta's own conflict check
        refuses a concurrent commit of the same entries."""
        if latest is None or latest.version() == self.version:
            return
        after = -1 if self.version is None else self.version
        moved = keys_written(self.uri, after, latest.version()) & set(keys)
        if moved:
            raise LedgerMoved(
                f"{self.uri}: another run committed {', '.join(sorted(moved))} after this run read "
                f"it at version {'(none)' if self.version is None else self.version}"
            )

    def advance(self, version: int) -> None:
        """The writer's own commit: later commits of the same run start from it."""
        self.version = version


def redo_when_moved(work: Callable[[], T], what: str, attempts: int = REDO_ATTEMPTS) -> T:
    """Run `work`, which reads the ledger and commits against it, again from the new position
    each time another writer moved the ledger first."""
    for attempt in range(1, attempts + 1):
        try:
            return work()
        except LedgerMoved as moved:
            if attempt == attempts:
                raise LedgerMoved(
                    f"{what}: gave up after {attempts} attempts, each overtaken by another run "
                    f"writing the same table ({moved})"
                ) from moved
            dg.get_dagster_logger().warning(
                f"{what}: another run wrote the same table first ({moved}); starting again from "
                f"its position (attempt {attempt + 1} of {attempts})"
            )
    raise AssertionError("unreachable")
