"""Reconciliation of bronze with its source: nothing lost or duplicated on the way in.

A database source's row versions up to bronze's watermark are each in bronze once
(`asset_checks.source_rows`); a landing file's lines are each in bronze or its quarantine once,
and no ingested file has changed since.
"""

import dagster as dg
import polars as pl

from asset_checks.check import Check
from asset_checks.sample import sample
from asset_checks.source_rows import source_rows_check
from lakehouse.bronze import landing as landing_files
from lakehouse.bronze.assets import LISTED_FILES
from lakehouse.resources import LakehouseStorage, LandingZone
from lakehouse.sources.contract import Contract
from lakehouse.storage import delta, ledger


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


def _landing_lines_check(contract: Contract) -> Check:
    def evaluate(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
        landing: LandingZone = context.resources.landing
        lakehouse: LakehouseStorage = context.resources.lakehouse
        table = delta.open_table(lakehouse.table_uri("bronze", contract.name))
        if table is None:
            return dg.AssetCheckResult(passed=True, metadata={"files_checked": 0, "note": "bronze is empty"})
        malformed = delta.open_table(lakehouse.table_uri("quarantine", f"{contract.name}_malformed"))
        # The bronze version whose ledger names the ingested files, not a newer one.
        lines = [
            pl.scan_delta(stored).select("_source_file", "_line_number").collect()
            for stored in (table, malformed)
            if stored is not None
        ]
        stored = (
            pl.concat(lines)
            .group_by("_source_file")
            .agg(stored=pl.len(), distinct=pl.col("_line_number").n_unique())
        )
        counted: dict[str, int] = {}
        changed: dict[str, str] = {}
        for seen in landing_files.matching_files(landing.location, contract.source.glob):
            ingested = ledger.ingested_file(table, contract.name, seen.name)
            if ingested is None:
                continue
            data = landing_files.read(landing.location, seen)
            difference = _changed_since_ingestion(ingested, data)
            if difference:
                changed[seen.name] = difference
            else:
                counted[seen.name] = data.rstrip(b"\n").count(b"\n") + (len(data) > 0)
        expected = pl.DataFrame(
            {"_source_file": list(counted), "lines": list(counted.values())},
            schema={"_source_file": pl.String, "lines": pl.Int64},
        )
        compared = expected.join(stored, on="_source_file", how="left").fill_null(0)
        wrong = compared.filter(
            (pl.col("lines") != pl.col("stored")) | (pl.col("stored") != pl.col("distinct"))
        )
        faults = changed | {row["_source_file"]: _lines_wrong(row) for row in wrong.iter_rows(named=True)}
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
                "lines_checked": int(expected["lines"].sum()),
                "files_wrong": len(faults),
                "files_changed_after_ingestion": len(changed),
                "sample": sample(
                    pl.DataFrame(
                        {"_source_file": named, "problem": [faults[name] for name in named]},
                        schema={"_source_file": pl.String, "problem": pl.String},
                    )
                ),
            },
        )

    return Check(
        dg.AssetKey(["bronze", contract.name]),
        "lines_in_bronze_or_quarantine",
        "Every line of every ingested landing file is in bronze or in quarantine, exactly once, "
        "and no ingested file has changed since (size and checksum in bronze's ledger).",
        evaluate,
        blocking=True,
        resources=frozenset({"landing", "lakehouse"}),
    )


def bronze_reconciliation_checks(contract: Contract) -> list[Check]:
    """Source (or landing files) to bronze."""
    return [source_rows_check(contract) if contract.is_database else _landing_lines_check(contract)]
