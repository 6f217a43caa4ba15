"""What a reconciliation check records when it passes, so that its next evaluation compares only
what changed since: the code that ran, the table it held (its id and version) and the check's
own account of what it compared.

The record holds while the code is the same and every commit to the table since only added rows
or rewrote them unchanged (compaction, vacuum): what the last pass found in the table is still
there. A failed evaluation, a restore, a delete or a table created again make the next
evaluation compare everything.
"""

from __future__ import annotations

import hashlib
from typing import Any

import dagster as dg
from deltalake import DeltaTable

from asset_checks.check import code_digest, last_evaluation
from lakehouse.storage import delta

RECORD = "reconciled"


def digest(values: tuple) -> str:
    """A short digest of a summary's values, as a record keeps it."""
    return hashlib.blake2b(repr(values).encode(), digest_size=8).hexdigest()


def changed(digests: list[str], recorded: list[str]) -> list[int]:
    """The numbers of the digests that are not the recorded ones (one added since has none)."""
    return [number for number, digest in enumerate(digests) if recorded[number : number + 1] != [digest]]


def only_added(table: DeltaTable, since: int) -> bool:
    """Whether every commit after version `since` kept the rows before it."""
    return since <= table.version() and all(
        delta.is_append(commit) or commit["operation"] in delta.ROW_KEEPING
        for commit in delta.commits_after(table, since)
    )


def recorded(
    context: dg.AssetCheckExecutionContext,
    key: dg.AssetCheckKey,
    table: DeltaTable,
    additive: bool = True,
    passed: bool = True,
) -> dict | None:
    """What the check's last evaluation recorded, if it passed and its record still holds;
    `additive=False` for a check that reads the table anew each time and needs only the same
    code and table, `passed=False` for a record that holds whatever the result was."""
    last = last_evaluation(context.instance, key)
    if last is None or (passed and not last[1].passed) or RECORD not in last[1].metadata:
        return None
    record = last[1].metadata[RECORD].value
    holds = (
        isinstance(record, dict)
        and record.get("code") == code_digest()
        and record.get("table") == table.metadata().id
        and (not additive or only_added(table, int(record.get("version", -1))))
    )
    return record if holds else None


def held(table: DeltaTable | None) -> list | None:
    """A second table as a record holds it beside the check's own: [id, version], None when it
    does not exist."""
    return None if table is None else [table.metadata().id, table.version()]


def still_held(table: DeltaTable | None, was: list | None) -> bool:
    """Whether a second table is the one a record held (`held`): the same table, created no
    second time since. A table that did not exist then may exist now."""
    return was is None or (table is not None and table.metadata().id == was[0])


def record(table: DeltaTable, **compared: Any) -> dict[str, dg.MetadataValue]:
    """The metadata that lets the next evaluation start from this one."""
    return {
        RECORD: dg.MetadataValue.json(
            {"code": code_digest(), "table": table.metadata().id, "version": table.version(), **compared}
        )
    }
