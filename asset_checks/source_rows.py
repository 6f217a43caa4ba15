"""Reconciliation of bronze with a source database: every source row version up to bronze's
watermark is in bronze, once.

The first evaluation compares every source row. Later ones compare the source's summary per day
of its watermark (`asset_checks.watermark_days`) with the one their last pass recorded, and read
only the rows of the days whose summary changed and those since that pass's watermark; a day
whose rows up to that watermark still summarise as that pass recorded them (the day new rows
join: the pass records its rows up to the watermark apart, as the source keeps gaining rows
past it) is not read again, nor is a day whose rows changed only by the deletes and updates
bronze captured since (their counts balance, `watermark_days.balanced`). The duplicates bronze
can have gained since are among the versions of the keys it appended rows of since. Cost
follows the change, as long as the last pass stands (see `asset_checks.last_pass`).
"""

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from datetime import date

import dagster as dg
import polars as pl

from asset_checks import last_pass, watermark_days
from asset_checks.check import Check
from asset_checks.sample import sample
from lakehouse.bronze import tombstones
from lakehouse.bronze.columns import OP
from lakehouse.bronze.database import CHUNK_ROWS, read_watermark, source_chunks, source_range
from lakehouse.bronze.watermark import WatermarkRange
from lakehouse.resources import LakehouseStorage, SourceDatabase
from lakehouse.silver.changes import read_bronze_changes
from lakehouse.sources.contract import Contract
from lakehouse.storage import delta, keys, ledger


def _duplicates(rows: pl.LazyFrame, identity: list[str]) -> pl.LazyFrame:
    return rows.filter(pl.len().over(identity) > 1)


@dataclass(frozen=True)
class _Compared:
    """Source rows read, those bronze lacks, bronze's row versions held more than once."""

    checked: int
    missing: pl.DataFrame
    duplicated: pl.DataFrame


def _compare_whole(
    contract: Contract,
    source: SourceDatabase,
    bounds: WatermarkRange,
    stored: pl.LazyFrame,
    identity: list[str],
) -> _Compared:
    """Every source row up to the watermark against bronze.

    The source in chunks in key order, each compared with the bronze rows of its range of the
    first key column (bronze files hold rows in key order, so the scans skip most of them):
    memory follows the chunk, not the table. Duplicates are searched in disjoint ranges, the
    first also holding null keys and the last open-ended, so each is found once."""
    schema = dict(stored.collect_schema())
    name = contract.primary_key[0]
    key = pl.col(name)
    checked, missing, duplicated, below = 0, [pl.DataFrame(schema=schema)], [], None
    for chunk in source_chunks(contract, source, bounds, identity, "reconciling"):
        if chunk.is_empty():
            continue
        chunk = chunk.cast(schema)
        low, high = pl.lit(chunk.get_column(name).min()), pl.lit(chunk.get_column(name).max())
        near = stored.filter(key.is_between(low, high) | key.is_null())
        own = key.is_null() | (key <= high) if below is None else key.is_between(below, high, closed="right")
        lost, twice = pl.collect_all(
            [
                chunk.lazy().join(near, on=identity, how="anti", nulls_equal=True),
                _duplicates(stored.filter(own), identity),
            ]
        )
        checked += chunk.height
        missing.append(lost)
        duplicated.append(twice)
        below = high
    rest = stored if below is None else stored.filter(key > below)
    duplicated.append(_duplicates(rest, identity).collect())
    return _Compared(checked, pl.concat(missing), pl.concat(duplicated))


def _compare_changed(
    stored: pl.LazyFrame, identity: list[str], reading: Iterable[pl.DataFrame], events: pl.DataFrame
) -> _Compared:
    """The source rows `reading` yields against bronze, in groups of about CHUNK_ROWS, and the
    versions of the keys bronze appended rows of since the last pass (`events`) against each
    other (only those rows can have made a duplicate)."""
    schema = dict(stored.collect_schema())
    checked, missing, group = 0, [pl.DataFrame(schema=schema)], []

    def compare() -> None:
        rows = pl.concat(group).unique()
        near = keys.near(stored, rows)
        missing.append(rows.lazy().join(near, on=identity, how="anti", nulls_equal=True).collect())
        group.clear()

    for rows in reading:
        checked += rows.height
        group.append(rows.select(identity).cast(schema))
        if sum(frame.height for frame in group) >= CHUNK_ROWS:
            compare()
    if group:
        compare()
    duplicated = _duplicates(tombstones.versions(events).select(identity).lazy(), identity).collect()
    return _Compared(checked, pl.concat(missing), duplicated)


@dataclass(frozen=True)
class _Appended:
    """The events (row versions and tombstones) bronze appended since the last pass, and every
    event of their keys (`events`)."""

    rows: pl.DataFrame
    events: pl.DataFrame

    @classmethod
    def read(cls, contract: Contract, table: delta.DeltaTable, uri: str, since: int) -> "_Appended":
        identity = [*contract.primary_key, contract.watermark.column]
        wanted = [*identity, OP, tombstones.order_column(contract)]
        appended, _ = read_bronze_changes(uri, since, table.version(), columns=wanted)
        if appended.is_empty():
            return cls(appended, appended)
        scan = pl.scan_delta(table).select(appended.columns)
        held = appended.select(contract.primary_key).unique()
        events = keys.near(scan, held).join(held.lazy(), on=contract.primary_key, how="semi")
        return cls(appended, events.collect())

    def moved(self, contract: Contract) -> tuple[pl.DataFrame, pl.DataFrame]:
        """The source rows these events took out of the source and put into it, as bronze saw
        them: each key's version before them and after them."""
        identity = [*contract.primary_key, contract.watermark.column]
        earlier = self.events.join(self.rows, on=self.rows.columns, how="anti", nulls_equal=True)
        before, after = (tombstones.held_versions(rows, contract) for rows in (earlier, self.events))
        return before.select(identity), after.select(identity)


def _compare_since(
    contract: Contract,
    source: SourceDatabase,
    bounds: WatermarkRange,
    days: watermark_days.Summary,
    changed: list[int],
    last: dict,
    appended: _Appended,
    stored: pl.LazyFrame,
    settled: dict[str, int],
) -> tuple[_Compared, dict]:
    """What changed since the `last` pass: the source rows of the `changed` periods and those
    since its watermark (the other changed periods, `settled`, are read through these alone),
    and the rows `appended` to bronze since."""
    identity = list(stored.collect_schema())
    since = ledger.moment(last["watermark"])

    read_since = bounds.upper is not None and (since < bounds.upper or any(settled.values()))

    def reading() -> Iterator[pl.DataFrame]:
        # A period's rows the read from `since` admits are read there, not twice.
        excluding = watermark_days.after(bounds, since) if read_since else None
        for number in changed:
            yield watermark_days.period_rows(contract, source, bounds, days.grid, number, identity, excluding)
        if read_since:
            # Every row the source's condition admits, even with the watermark where it was: a
            # period that changed only since is compared through these alone (`_changed_periods`).
            from_since = replace(bounds, lower=since)
            yield from source_chunks(
                contract, source, from_since, identity, "reconciling", keep_admitted=True
            )

    how = {
        "compared": f"the days whose summary changed since the last pass, and the rows since {since}",
        "periods_read": len(changed),
        **settled,
        "bronze_rows_appended_since": appended.rows.height,
    }
    return _compare_changed(stored, identity, reading(), appended.events), how


def _changed_periods(
    contract: Contract,
    source: SourceDatabase,
    bounds: WatermarkRange,
    days: watermark_days.Summary,
    last: dict,
    appended: _Appended,
) -> tuple[list[int], dict[str, int]]:
    """The periods whose summary changed since the `last` pass, less those that changed only
    by rows since its watermark (the rows since are read whole) and those that changed only by
    the rows bronze appended since (`appended`) took out and put in; and how many each were.

    The day a pass's watermark falls on is the one the next rows join: without this, its
    every row would be read again at each pass. A row deleted in the source or updated to a
    later watermark leaves its day: without the second, such a day would be read whole."""
    changed = last_pass.changed(days.digests, last["periods"])
    since = ledger.moment(last["watermark"])
    # A record without digests up to its watermark has only its whole periods' to go by.
    before = {int(number): digest for number, digest in last.get("before", {}).items()}
    reached = [
        number for number in watermark_days.recent(days.grid, since, changed) if number < len(last["periods"])
    ]
    now = watermark_days.before(contract, source, bounds, days.grid, since, reached)
    recorded = {number: before.get(number, last["periods"][number]) for number in reached}
    settled = set(watermark_days.unchanged_before(now, recorded))
    changed = [number for number in changed if number not in settled]
    balanced = []
    if changed and days.counts and "counts" in last:
        # A period no read from `since` reaches holds only rows up to it: its whole counts.
        counts = {
            number: watermark_days.counts(now[number]) if number in now else days.counts[number]
            for number in changed
        }
        balanced = watermark_days.balanced(
            contract, bounds, days.grid, last["counts"], counts, since, appended.moved(contract)
        )
    return [number for number in changed if number not in balanced], {
        "periods_changed_only_since": len(settled),
        "periods_changed_only_as_bronze_saw": len(balanced),
    }


def source_rows_check(contract: Contract) -> Check:
    """`source_rows_in_bronze` on a database contract's bronze table."""
    assert contract.watermark is not None
    asset = dg.AssetKey(["bronze", contract.name])
    name = "source_rows_in_bronze"

    def evaluate(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
        source: SourceDatabase = context.resources.source
        lakehouse: LakehouseStorage = context.resources.lakehouse
        uri = lakehouse.table_uri("bronze", contract.name)
        table = delta.open_table(uri)
        watermark = read_watermark(table, contract)
        if watermark is None:
            return dg.AssetCheckResult(passed=True, metadata={"rows_checked": 0, "note": "bronze is empty"})
        assert table is not None
        identity = [*contract.primary_key, contract.watermark.column]
        # The version the watermark came from: a write since then cannot pass for lost rows.
        # Tombstones are no row versions: a key deleted twice holds two.
        stored = tombstones.versions(pl.scan_delta(table)).select(identity)
        bounds, _ = source_range(contract, source, upper=watermark)
        last = last_pass.recorded(context, dg.AssetCheckKey(asset, name), table)
        grid = watermark_days.Grid(date.fromisoformat(last["grid"][0]), *last["grid"][1:]) if last else None
        # Summarised before any row is read: a row that changes meanwhile changes the next summary.
        days = watermark_days.summarise(contract, source, bounds, grid)
        before = {}
        if days is not None:
            reached = watermark_days.recent(days.grid, watermark, range(days.grid.count))
            before = watermark_days.before(contract, source, bounds, days.grid, watermark, reached)
        changed = None
        if days is not None and last is not None:
            appended = _Appended.read(contract, table, uri, last["version"])
            changed, settled = _changed_periods(contract, source, bounds, days, last, appended)
        if changed is None or sum(days.rows[number] for number in changed) > sum(days.rows) / 2:
            compared = _compare_whole(contract, source, bounds, stored, identity)
            how: dict = {"compared": "every source row"}
        else:
            compared, how = _compare_since(
                contract, source, bounds, days, changed, last, appended, stored, settled
            )
        missing, duplicated = compared.missing, compared.duplicated
        passed = missing.is_empty() and duplicated.is_empty()
        kept = {}
        if days is not None and passed:
            kept = last_pass.record(
                table,
                watermark=ledger.micros(watermark),
                grid=[days.grid.first.isoformat(), days.grid.width, days.grid.count],
                periods=days.digests,
                before={str(number): last_pass.digest(summary) for number, summary in before.items()},
                # Each period's counts up to the watermark, that the next pass balances.
                counts=[
                    watermark_days.counts(before[number]) if number in before else counted
                    for number, counted in enumerate(days.counts)
                ],
            )
        return dg.AssetCheckResult(
            passed=passed,
            metadata={
                "rows_checked": compared.checked,
                "missing_rows": missing.height,
                "duplicated_rows": duplicated.height,
                "sample": sample(pl.concat([missing, duplicated]) if not missing.is_empty() else duplicated),
                **how,
                **({"periods": days.grid.count} if days is not None else {}),
                **kept,
            },
        )

    return Check(
        asset,
        name,
        "Every source row version up to bronze's watermark is in bronze (nothing lost).",
        evaluate,
        blocking=True,
        resources=frozenset({"source", "lakehouse"}),
        reads=(("bronze", contract.name),),
        source=contract.source.table,
    )
