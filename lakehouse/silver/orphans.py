"""Orphans: silver rows that reference a parent row silver does not hold yet.

They are loaded all the same, flagged in `ORPHAN_COLUMN` with the references missing, and the
flag is cleared by a later load once the parents have arrived. Looking for flagged rows reads
the flag of every row, so a load whose table and parents are as the last look found them
(`Orphans.checked_against`, kept in the silver asset's metadata) takes that look's count.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import polars as pl

from lakehouse.resources import LakehouseStorage
from lakehouse.sources.contract import Contract
from lakehouse.storage import delta
from lakehouse.storage.ledger import LOADED_AT
from lakehouse.storage.merge import match_predicate
from lakehouse.storage.sql import quoted

ORPHAN_COLUMN = "_orphan"


@dataclass(frozen=True)
class ParentKeys:
    """For each column that references a parent, the parent silver table and its keys, and the
    versions of the parent tables they were read at."""

    keys: dict[str, tuple[str, pl.Series]]
    versions: str


def parent_keys(contract: Contract, lakehouse: LakehouseStorage) -> ParentKeys:
    """The parents' keys now.

    Read once per load, not per slice (a tenth of a second each): a run loads the parents
    first, and a parent that arrives while the load runs is found by the next load's
    `resolve_orphans`, as one that arrives later would be."""
    keys, versions = {}, {}
    for name, spec in contract.columns.items():
        if not spec.references:
            continue
        table, column = spec.references.split(".")
        parent = delta.open_table(lakehouse.table_uri("silver", table))
        versions[table] = delta.version_label(parent)
        keys[name] = (
            table,
            pl.scan_delta(parent).select(column).collect().get_column(column)
            if parent is not None
            else pl.Series(column, [], dtype=spec.dtype),
        )
    return ParentKeys(keys, _listed(versions))


def _parent_versions(contract: Contract, lakehouse: LakehouseStorage) -> str:
    """The parent tables' versions now, as `ParentKeys.versions` names them."""
    parents = {spec.references.split(".")[0] for spec in contract.columns.values() if spec.references}
    return _listed({table: delta.snapshot(lakehouse.table_uri("silver", table)) for table in parents})


def _listed(versions: dict[str, str]) -> str:
    return "; ".join(f"silver/{table} {label}" for table, label in sorted(versions.items()))


def flag_orphans(frame: pl.DataFrame, parents: ParentKeys) -> pl.DataFrame:
    """Name, per row, each reference to a parent silver does not hold yet (null: none)."""
    if not parents.keys:
        return frame
    missing = [
        pl.when(~pl.col(name).is_in(known.implode())).then(pl.lit(f"{name} not in {table}"))
        for name, (table, known) in parents.keys.items()
    ]
    reasons = pl.concat_str(missing, separator="; ", ignore_nulls=True)
    return frame.with_columns(pl.when(reasons != "").then(reasons).alias(ORPHAN_COLUMN))


@dataclass(frozen=True)
class Orphans:
    """The rows still orphaned, and the versions of the table and its parents they were
    counted in."""

    count: int
    checked_against: str


def resolve_orphans(
    uri: str,
    contract: Contract,
    lakehouse: LakehouseStorage,
    parents: ParentKeys | None = None,
    seen: Orphans | None = None,
) -> Orphans:
    """Clear the orphan flag of rows whose parents have arrived since; returns the rows still
    orphaned. `parents`: their keys, when the caller has read them already; `seen`: the last
    look, taken as it is while the table and its parents are as it found them."""
    table = delta.open_table(uri)
    versions = _parent_versions(contract, lakehouse) if parents is None else parents.versions
    if seen is not None and seen.checked_against == _against(contract, table, versions):
        return seen
    if table is None or ORPHAN_COLUMN not in delta.arrow_schema(table).names:
        return Orphans(0, _against(contract, table, versions))
    flagged = pl.scan_delta(table).filter(pl.col(ORPHAN_COLUMN).is_not_null()).collect()
    if flagged.is_empty():
        return Orphans(0, _against(contract, table, versions))
    # The count is taken against the versions the keys were read at.
    parents = parent_keys(contract, lakehouse) if parents is None else parents
    rechecked = flag_orphans(flagged.drop(ORPHAN_COLUMN), parents)
    # A new _loaded_at tells downstream tables these rows changed.
    resolved = rechecked.filter(pl.col(ORPHAN_COLUMN).is_null()).with_columns(
        pl.lit(datetime.now(UTC), dtype=pl.Datetime("us", "UTC")).alias(LOADED_AT)
    )
    if not resolved.is_empty():
        # Within the resolved rows' partitions: on the key alone, the MERGE reads the whole table.
        partitions = table.metadata().partition_columns
        table.merge(
            delta.to_arrow(resolved.select(*contract.primary_key, *partitions, ORPHAN_COLUMN, LOADED_AT)),
            predicate=match_predicate(list(contract.primary_key), next(iter(partitions), None), resolved),
            source_alias="s",
            target_alias="t",
        ).when_matched_update(
            updates={name: f"s.{quoted(name)}" for name in (ORPHAN_COLUMN, LOADED_AT)}
        ).execute()
    return Orphans(flagged.height - resolved.height, _against(contract, table, parents.versions))


def _against(contract: Contract, table: delta.DeltaTable | None, parents: str) -> str:
    """The table (at the version read, or at this look's commit) and its parents' versions."""
    return f"silver/{contract.name} {delta.version_label(table)}; {parents}"
