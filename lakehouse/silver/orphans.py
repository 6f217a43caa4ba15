"""Orphans: silver rows that reference a parent row silver does not hold yet.

They are loaded all the same, flagged in `ORPHAN_COLUMN` with the references missing, and the
flag is cleared by a later load once the parents have arrived.
"""

from __future__ import annotations

from datetime import UTC, datetime

import polars as pl

from lakehouse.resources import LakehouseStorage
from lakehouse.sources.contract import Contract
from lakehouse.storage import delta
from lakehouse.storage.ledger import LOADED_AT
from lakehouse.storage.sql import quoted

ORPHAN_COLUMN = "_orphan"


def parent_keys(contract: Contract, lakehouse: LakehouseStorage) -> dict[str, tuple[str, pl.Series]]:
    """For each column that references a parent, the parent silver table and its keys now.

    Read once per load, not per slice (a tenth of a second each): a run loads the parents
    first, and a parent that arrives while the load runs is found by the next load's
    `resolve_orphans`, as one that arrives later would be."""
    parents = {}
    for name, spec in contract.columns.items():
        if not spec.references:
            continue
        table, column = spec.references.split(".")
        parent_uri = lakehouse.table_uri("silver", table)
        parents[name] = (
            table,
            delta.scan(parent_uri).select(column).collect().get_column(column)
            if delta.open_table(parent_uri)
            else pl.Series(column, [], dtype=spec.dtype),
        )
    return parents


def flag_orphans(frame: pl.DataFrame, parents: dict[str, tuple[str, pl.Series]]) -> pl.DataFrame:
    """Name, per row, each reference to a parent silver does not hold yet (null: none)."""
    if not parents:
        return frame
    missing = [
        pl.when(~pl.col(name).is_in(known.implode())).then(pl.lit(f"{name} not in {table}"))
        for name, (table, known) in parents.items()
    ]
    reasons = pl.concat_str(missing, separator="; ", ignore_nulls=True)
    return frame.with_columns(pl.when(reasons != "").then(reasons).alias(ORPHAN_COLUMN))


def resolve_orphans(
    uri: str,
    contract: Contract,
    lakehouse: LakehouseStorage,
    parents: dict[str, tuple[str, pl.Series]] | None = None,
) -> int:
    """Clear the orphan flag of rows whose parents have arrived since; returns rows still orphaned.
    `parents`: their keys, when the caller has read them already."""
    table = delta.open_table(uri)
    if table is None or ORPHAN_COLUMN not in delta.arrow_schema(table).names:
        return 0
    flagged = delta.scan(uri).filter(pl.col(ORPHAN_COLUMN).is_not_null()).collect()
    if flagged.is_empty():
        return 0
    rechecked = flag_orphans(
        flagged.drop(ORPHAN_COLUMN), parents if parents is not None else parent_keys(contract, lakehouse)
    )
    # A new _loaded_at tells downstream tables these rows changed.
    resolved = rechecked.filter(pl.col(ORPHAN_COLUMN).is_null()).with_columns(
        pl.lit(datetime.now(UTC), dtype=pl.Datetime("us", "UTC")).alias(LOADED_AT)
    )
    if not resolved.is_empty():
        table.merge(
            delta.to_arrow(resolved.select(*contract.primary_key, ORPHAN_COLUMN, LOADED_AT)),
            predicate=" AND ".join(f"t.{quoted(key)} = s.{quoted(key)}" for key in contract.primary_key),
            source_alias="s",
            target_alias="t",
        ).when_matched_update(
            updates={name: f"s.{quoted(name)}" for name in (ORPHAN_COLUMN, LOADED_AT)}
        ).execute()
    return flagged.height - resolved.height
