"""Delta MERGE: idempotent inserts, and upserts that never replace a row with an older one."""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

from lakehouse.storage import delta
from lakehouse.storage.ledger import Claim
from lakehouse.storage.sql import quoted


@dataclass(frozen=True)
class MergeCounts:
    inserted: int
    updated: int
    unchanged: int
    table: delta.DeltaTable
    deleted: int = 0


def _literal(value: object) -> str:
    return "'" + str(value).replace("'", "''") + "'"


def match_predicate(keys: list[str], partition: str | None, frame: pl.DataFrame) -> str:
    """A MERGE's match of source `s` (`frame`) to target `t` on `keys`, within the frame's
    values of the `partition` column (which the frame must hold)."""
    matches = [f"t.{quoted(key)} = s.{quoted(key)}" for key in keys]
    if partition:
        # A literal list of the batch's partitions lets the MERGE prune every other file.
        values = ", ".join(_literal(v) for v in frame.get_column(partition).unique().sort())
        matches = [
            f"t.{quoted(partition)} IN ({values})",
            f"t.{quoted(partition)} = s.{quoted(partition)}",
            *matches,
        ]
    return " AND ".join(matches)


def _evolve_schema(uri: str, frame: pl.DataFrame, table: delta.DeltaTable) -> None:
    """Add the frame's new columns first: a MERGE does not add columns (delta-rs #4009)."""
    if set(frame.columns) - set(delta.arrow_schema(table).names):
        delta.write(uri, frame.head(0))


def merge(
    uri: str,
    frame: pl.DataFrame,
    keys: list[str],
    *,
    update_when: str | None = None,
    delete_flag: str | None = None,
    partition: str | None = None,
    metadata: dict[str, str] | None = None,
    transactions: dict[str, int] | None = None,
    claim: Claim | None = None,
) -> MergeCounts:
    """Insert the frame's new keys; replace matched rows where `update_when` holds.

    `update_when` is a SQL predicate over the source `s` and the target `t`, for example
    `s."updated_at" > t."updated_at"` so that an older version never replaces a newer one.
    `delete_flag` names a boolean column of the frame: its true rows delete their key's row,
    and the column itself is never stored. The frame must hold each key once. The commit
    carries `metadata` and ledger `transactions` (checked against `claim`, as `delta.write`
    does); when the MERGE changes nothing, an empty commit carries them, so the ledger always
    moves.
    """
    table = delta.open_table(uri)
    if delete_flag is not None and (table is None or not frame.get_column(delete_flag).any()):
        # Nothing to delete: a plain MERGE of the rest.
        frame = frame.filter(~pl.col(delete_flag)).drop(delete_flag)
        delete_flag = None
    # What the table stores of the frame's columns.
    stored = frame.drop(delete_flag) if delete_flag else frame
    if table is not None and frame.is_empty():
        moved = (
            delta.write(uri, stored, metadata=metadata, transactions=transactions, claim=claim)
            if transactions
            else table
        )
        return MergeCounts(0, 0, 0, moved)
    if table is None:
        try:
            created = delta.write(
                uri,
                frame,
                partition_by=[partition] if partition else None,
                metadata=metadata,
                transactions=transactions,
                claim=claim,
                create=True,
            )
            return MergeCounts(frame.height, 0, 0, created)
        except delta.CreatedMeanwhile:
            # Another writer created it since: merged into, not appended to, so that no key
            # is held twice.
            table = delta.load_table(uri)
    _evolve_schema(uri, stored, table)

    def attempt() -> tuple[delta.DeltaTable, int, dict]:
        table = delta.load_table(uri)
        if claim is not None:
            claim.check(table, transactions or {})
        before = table.version()
        merger = table.merge(
            delta.to_arrow(frame),
            predicate=match_predicate(keys, partition, frame),
            source_alias="s",
            target_alias="t",
            commit_properties=delta.commit_properties(metadata, transactions),
        )
        kept, flags = None, None
        if delete_flag is not None:
            flag = f"s.{quoted(delete_flag)}"
            merger = merger.when_matched_delete(predicate=flag)
            kept, flags = f"NOT {flag}", [delete_flag]
        if update_when:
            merger = merger.when_matched_update_all(
                predicate=update_when if kept is None else f"{kept} AND ({update_when})", except_cols=flags
            )
        return table, before, merger.when_not_matched_insert_all(predicate=kept, except_cols=flags).execute()

    table, before, metrics = delta.committing(attempt, uri, claim)
    # The merged table object is at its own commit's version, or still at `before` when the
    # MERGE wrote nothing.
    if table.version() == before and (metadata or transactions):
        merged = delta.write(uri, stored.head(0), metadata=metadata, transactions=transactions, claim=claim)
    else:
        if claim is not None:
            claim.advance(table.version())
        merged = delta.load_table(uri)
    inserted, updated = metrics["num_target_rows_inserted"], metrics["num_target_rows_updated"]
    deleted = metrics["num_target_rows_deleted"]
    return MergeCounts(inserted, updated, frame.height - inserted - updated - deleted, merged, deleted)
