"""Reconciliation of bronze with its source: nothing lost or duplicated on the way in.

A database source's row versions up to bronze's watermark are each in bronze once
(`asset_checks.source_rows`); a landing file's lines are each in bronze or its quarantine once,
and no ingested file has changed since.
"""

import time

import dagster as dg
import polars as pl
from deltalake.exceptions import DeltaError

from asset_checks import last_pass
from asset_checks.check import Check
from asset_checks.sample import sample
from asset_checks.source_rows import source_rows_check
from lakehouse.bronze import landing as landing_files
from lakehouse.bronze.assets import LISTED_FILES
from lakehouse.bronze.columns import LINE_NUMBER, SOURCE_FILE
from lakehouse.resources import LakehouseStorage, LandingZone
from lakehouse.silver.changes import read_bronze_changes
from lakehouse.sources.contract import Contract
from lakehouse.storage import delta, ledger

NAME = "lines_in_bronze_or_quarantine"
# A landing store's clock may run apart from this machine's: a file modified this close to the
# last pass's listing is read again.
CLOCK_SKEW_NS = 60 * 10**9


def _changed_since_ingestion(ingested: ledger.IngestedFile, data: bytes) -> str | None:
    """How a landing file differs from the one bronze ingested; None when it does not, or when
    the ledger predates sizes and checksums (its lines are still counted)."""
    if ingested.size is not None and ingested.size != len(data):
        return f"changed after ingestion: {len(data):,} bytes now, {ingested.size:,} when ingested"
    if ingested.checksum is not None and ingested.checksum != ledger.checksum(data):
        return f"changed after ingestion: same {len(data):,} bytes, different content (checksum)"
    return None


def _lines_wrong(row: dict) -> str:
    twice = row["stored"] - row["distinct"]
    return f"{row['distinct']:,} of {row['lines']:,} lines in bronze or quarantine" + (
        f", {twice:,} of them more than once" if twice else ""
    )


def _appended_files(
    lakehouse: LakehouseStorage, contract: Contract, malformed: delta.DeltaTable | None, last: dict
) -> set[str] | None:
    """The landing files bronze and its malformed quarantine gained lines of since the `last`
    pass (bronze has only gained rows since, or the record would not hold); None when the
    quarantine lost rows since, or what either gained cannot be read."""
    was = last["malformed"]
    if not last_pass.still_held(malformed, was) or (
        was is not None and not last_pass.only_added(malformed, was[1])
    ):
        return None
    try:
        bronze, _ = read_bronze_changes(
            lakehouse.table_uri("bronze", contract.name), last["version"], columns=[SOURCE_FILE]
        )
    except (OSError, DeltaError):
        return None  # vacuum has deleted files of those commits, after a compaction
    names = set(bronze.get_column(SOURCE_FILE).unique().to_list())
    if malformed is not None:
        uri = lakehouse.table_uri("quarantine", f"{contract.name}_malformed")
        read = delta.rows_since(malformed, uri, None if was is None else was[1], [SOURCE_FILE])
        if read is None:
            return None
        names.update(read[0].get_column(SOURCE_FILE).unique().to_list())
    return names


def _landing_lines_check(contract: Contract) -> Check:
    asset = dg.AssetKey(["bronze", contract.name])

    def evaluate(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
        landing: LandingZone = context.resources.landing
        lakehouse: LakehouseStorage = context.resources.lakehouse
        table = delta.open_table(lakehouse.table_uri("bronze", contract.name))
        if table is None:
            return dg.AssetCheckResult(passed=True, metadata={"files_checked": 0, "note": "bronze is empty"})
        malformed = delta.open_table(lakehouse.table_uri("quarantine", f"{contract.name}_malformed"))
        listed_ns = time.time_ns()
        last = last_pass.recorded(context, dg.AssetCheckKey(asset, NAME), table)
        appended = None if last is None else _appended_files(lakehouse, contract, malformed, last)
        counted: dict[str, int] = {}
        changed: dict[str, str] = {}
        unchanged = 0
        for seen in landing_files.matching_files(landing.location, contract.source.glob):
            ingested = ledger.ingested_file(table, contract.name, seen.name)
            if ingested is None:
                continue
            if (
                appended is not None
                and seen.name not in appended
                and seen.size == ingested.size
                and seen.modified_ns < last["listed_ns"] - CLOCK_SKEW_NS
            ):
                unchanged += 1  # as the last pass found it, and bronze has gained none of its lines
                continue
            data = landing_files.read(landing.location, seen)
            difference = _changed_since_ingestion(ingested, data)
            if difference:
                changed[seen.name] = difference
            else:
                counted[seen.name] = data.rstrip(b"\n").count(b"\n") + (len(data) > 0)
        # The bronze version whose ledger names the ingested files, not a newer one.
        lines = [
            pl.scan_delta(stored).select(SOURCE_FILE, LINE_NUMBER)
            for stored in (table, malformed)
            if stored is not None
        ]
        if appended is not None:  # only the files read again
            lines = [rows.filter(pl.col(SOURCE_FILE).is_in(list(counted))) for rows in lines]
        stored = (
            pl.concat(pl.collect_all(lines))
            .group_by(SOURCE_FILE)
            .agg(stored=pl.len(), distinct=pl.col(LINE_NUMBER).n_unique())
        )
        expected = pl.DataFrame(
            {SOURCE_FILE: list(counted), "lines": list(counted.values())},
            schema={SOURCE_FILE: pl.String, "lines": pl.Int64},
        )
        compared = expected.join(stored, on=SOURCE_FILE, how="left").fill_null(0)
        wrong = compared.filter(
            (pl.col("lines") != pl.col("stored")) | (pl.col("stored") != pl.col("distinct"))
        )
        faults = changed | {row[SOURCE_FILE]: _lines_wrong(row) for row in wrong.iter_rows(named=True)}
        named = sorted(faults)[:LISTED_FILES]
        description = None
        if faults:
            description = (
                f"{len(faults)} ingested {contract.name} files do not match bronze: "
                + "; ".join(f"{name}: {faults[name]}" for name in named)
                + (f"; and {len(faults) - len(named)} more" if len(faults) > len(named) else "")
            )
            context.log.error(f"bronze/{contract.name}: {description}")
        return dg.AssetCheckResult(
            passed=not faults,
            description=description,
            metadata={
                "files_checked": len(counted) + len(changed),
                "files_unchanged_since_last_pass": unchanged,
                "lines_checked": int(expected["lines"].sum()),
                "files_wrong": len(faults),
                "files_changed_after_ingestion": len(changed),
                "sample": sample(
                    pl.DataFrame(
                        {SOURCE_FILE: named, "problem": [faults[name] for name in named]},
                        schema={SOURCE_FILE: pl.String, "problem": pl.String},
                    )
                ),
                **last_pass.record(
                    table,
                    listed_ns=listed_ns,
                    malformed=last_pass.held(malformed),
                ),
            },
        )

    return Check(
        asset,
        NAME,
        "Every line of every ingested landing file is in bronze or in quarantine, exactly once, "
        "and no ingested file has changed since (size and checksum in bronze's ledger).",
        evaluate,
        blocking=True,
        resources=frozenset({"landing", "lakehouse"}),
    )


def bronze_reconciliation_checks(contract: Contract) -> list[Check]:
    """Source (or landing files) to bronze."""
    return [source_rows_check(contract) if contract.is_database else _landing_lines_check(contract)]
