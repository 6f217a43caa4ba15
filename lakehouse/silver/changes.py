"""Reading bronze as silver consumes it: the rows since a bronze version, and first loads in slices.

A load reads the bronze rows committed after the version silver last consumed, through bronze's
change data feed, skipping the commits a RESTORE has rolled back. The first load reads bronze
whole instead. Either is loaded in slices of about `slice_rows` rows split by ranges of the key
(every version of a key in the same slice), so that the work on them follows the slice and not
the table or the number of batches.
"""

from __future__ import annotations

import polars as pl

from lakehouse.bronze.columns import LSN
from lakehouse.resources import LakehouseStorage
from lakehouse.sources.contract import Contract
from lakehouse.storage import delta, ledger
from lakehouse.storage.slices import key_ranges
from lakehouse.storage.sql import quoted

CHANGE_FEED_COLUMNS = ("_change_type", "_commit_version", "_commit_timestamp")
SLICE_ROWS = 1_000_000  # bronze rows a first load holds at a time


def slice_rows(contract: Contract) -> int:
    """Rows per slice: half for a dataset with history, whose load writes each key's version
    twice (the current row and its history) from the same slice. A million customers in one
    slice took the load to 2.0 GiB."""
    return SLICE_ROWS // 2 if contract.history == "scd2" else SLICE_ROWS


def bronze_identity(contract: Contract) -> list[str]:
    """The columns that tell one bronze row from every other."""
    if contract.is_cdc:
        return [*contract.primary_key, LSN]
    if contract.is_database:
        assert contract.watermark is not None
        return [*contract.primary_key, contract.watermark.column]
    return ["_source_file", "_line_number"]


def consumed_position(lakehouse: LakehouseStorage, name: str) -> tuple[delta.DeltaTable, int] | None:
    """Silver `name` and the bronze version it has consumed; None before its first load."""
    silver = delta.open_table(lakehouse.table_uri("silver", name))
    position = ledger.read(silver, ledger.silver_position(name))
    return None if silver is None or position is None else (silver, position)


def read_bronze_changes(
    uri: str, since: int, until: int | None = None, columns: list[str] | None = None
) -> tuple[pl.DataFrame, int]:
    """Bronze rows committed after version `since` up to `until` (default: the latest), with
    only those of `columns` bronze has when given, and the version read."""
    table = delta.load_table(uri)
    version = table.version() if until is None else until
    empty = pl.DataFrame(schema=pl.Schema(delta.arrow_schema(table)))
    wanted = None
    if columns is not None:
        empty = empty.select(name for name in columns if name in empty.columns)
        # The feed's columns are parsed as SQL: a name like `order` or `Name` only quoted.
        wanted = [quoted(name) for name in [*empty.columns, "_change_type"]]
    feeds = [
        pl.DataFrame(table.load_cdf(starting_version=first, ending_version=last, columns=wanted).read_all())
        for first, last in live_versions(table, since, version)
    ]
    if not feeds:
        return empty, version
    changes = pl.concat(feeds, how="diagonal_relaxed")
    return changes.filter(pl.col("_change_type") == "insert").drop(CHANGE_FEED_COLUMNS, strict=False), version


def live_versions(table: delta.DeltaTable, since: int, version: int) -> list[tuple[int, int]]:
    """The ranges of versions after `since` up to `version` that no RESTORE has rolled back.

    A restore to N takes back the commits after N (the rows a bad load appended) with one
    commit of its own: reading neither is what makes the rows as if never loaded.
    """
    undone: set[int] = set()
    # The log's newest commits first, whatever version the range ends at.
    for commit in delta.commits_after(table, since):
        if commit["operation"] == "RESTORE" and commit["version"] <= version:
            undone.update(range(int(commit["operationParameters"]["version"]) + 1, commit["version"] + 1))
    ranges: list[tuple[int, int]] = []
    for number in (v for v in range(since + 1, version + 1) if v not in undone):
        if ranges and ranges[-1][1] == number - 1:
            ranges[-1] = (ranges[-1][0], number)
        else:
            ranges.append((number, number))
    return ranges


def bronze_slices(table: delta.DeltaTable, contract: Contract) -> list[pl.LazyFrame]:
    """Bronze in slices of about `slice_rows` rows, by ranges of the first key column, so that
    every version of a key is in the same slice: a first load holds one slice at a time. Bronze
    files hold a first extraction in key order, so each slice's scan skips the others' rows
    and the load reads bronze about once, not once per slice."""
    return key_ranges(pl.scan_delta(table), contract.primary_key[0], slice_rows(contract))


def change_slices(changes: pl.DataFrame, contract: Contract) -> list[pl.LazyFrame]:
    """The rows since silver's position in slices like a first load's: a run after many
    batches types, validates and MERGEs one slice at a time."""
    return key_ranges(changes.lazy(), contract.primary_key[0], slice_rows(contract))
