"""Reconciliation checks: nothing is lost or duplicated between the source, bronze and silver."""

import dagster as dg
import polars as pl

from asset_checks.check import Check
from asset_checks.row_checks import read_columns, scan_columns
from asset_checks.sample import sample
from lakehouse.bronze import tombstones
from lakehouse.bronze.assets import LISTED_FILES
from lakehouse.bronze.columns import EXTRACTED_AT, LSN, OP
from lakehouse.bronze.database import read_watermark, source_chunks, source_range
from lakehouse.bronze.deletes import find_deletes
from lakehouse.resources import LakehouseStorage, LandingZone, SourceDatabase
from lakehouse.silver.load import bronze_identity
from lakehouse.silver.validate import typed
from lakehouse.sources.contract import Contract
from lakehouse.storage import delta, ledger


def _duplicates(rows: pl.LazyFrame, identity: list[str]) -> pl.LazyFrame:
    return rows.filter(pl.len().over(identity) > 1)


def _source_rows_check(contract: Contract) -> Check:
    assert contract.watermark is not None

    def evaluate(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
        source: SourceDatabase = context.resources.source
        lakehouse: LakehouseStorage = context.resources.lakehouse
        table = delta.open_table(lakehouse.table_uri("bronze", contract.name))
        watermark = read_watermark(table, contract)
        if watermark is None:
            return dg.AssetCheckResult(passed=True, metadata={"rows_checked": 0, "note": "bronze is empty"})
        identity = [*contract.primary_key, contract.watermark.column]
        # The version the watermark came from: a write since then cannot pass for lost rows.
        # Tombstones are no row versions: a key deleted twice holds two.
        stored = tombstones.versions(pl.scan_delta(table)).select(identity)
        schema = dict(stored.collect_schema())
        # The source in chunks in key order, each compared with the bronze rows of its range of
        # the first key column (bronze files hold rows in key order, so the scans skip most of
        # them): memory follows the chunk, not the table. Duplicates are searched in disjoint
        # ranges, the first also holding null keys and the last open-ended, so each is found once.
        name = contract.primary_key[0]
        key = pl.col(name)
        checked, missing, duplicated, below = 0, [pl.DataFrame(schema=schema)], [], None
        bounds, _ = source_range(contract, source, upper=watermark)
        for chunk in source_chunks(contract, source, bounds, identity, "reconciling"):
            if chunk.is_empty():
                continue
            chunk = chunk.cast(schema)
            low, high = pl.lit(chunk.get_column(name).min()), pl.lit(chunk.get_column(name).max())
            near = stored.filter(key.is_between(low, high) | key.is_null())
            own = (
                key.is_null() | (key <= high)
                if below is None
                else key.is_between(below, high, closed="right")
            )
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
        missing, duplicated = pl.concat(missing), pl.concat(duplicated)
        return dg.AssetCheckResult(
            passed=missing.is_empty() and duplicated.is_empty(),
            metadata={
                "rows_checked": checked,
                "missing_rows": missing.height,
                "duplicated_rows": duplicated.height,
                "sample": sample(pl.concat([missing, duplicated]) if not missing.is_empty() else duplicated),
            },
        )

    return Check(
        dg.AssetKey(["bronze", contract.name]),
        "source_rows_in_bronze",
        "Every source row version up to bronze's watermark is in bronze (nothing lost).",
        evaluate,
        blocking=True,
        resources=frozenset({"source", "lakehouse"}),
    )


def _changed_since_ingestion(ingested: ledger.IngestedFile, data: bytes) -> str | None:
    """How a landing file differs from the one bronze ingested; None when it does not, or when
    the ledger predates sizes and checksums (its lines are still counted)."""
    if ingested.size is not None and ingested.size != len(data):
        return f"changed after ingestion: {len(data):,} bytes now, {ingested.size:,} when ingested"
    if ingested.checksum is not None and ingested.checksum != ledger.landing_checksum(data):
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
        for path in sorted(landing.folder.glob(contract.source.glob)):
            ingested = ledger.ingested_file(table, contract.name, path.name)
            if ingested is None:
                continue
            data = path.read_bytes()
            difference = _changed_since_ingestion(ingested, data)
            if difference:
                changed[path.name] = difference
            else:
                counted[path.name] = data.rstrip(b"\n").count(b"\n") + (len(data) > 0)
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


def _silver_accounts_check(contract: Contract) -> Check:
    key = contract.primary_key
    # What orders a key's versions: the change stream's position, else the watermark.
    order = [LSN] if contract.is_cdc else [contract.watermark.column] if contract.watermark else []

    def evaluate(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
        lakehouse: LakehouseStorage = context.resources.lakehouse
        silver = delta.open_table(lakehouse.table_uri("silver", contract.name))
        position = ledger.read(silver, ledger.silver_position(contract.name))
        if position is None:
            return dg.AssetCheckResult(passed=True, metadata={"rows_consumed": 0, "note": "silver is empty"})
        identity = bronze_identity(contract)
        bronze = pl.scan_delta(lakehouse.table_uri("bronze", contract.name), version=position)
        events = [name for name in (OP, EXTRACTED_AT, LSN) if name in bronze.collect_schema()]
        consumed = bronze.select(list(dict.fromkeys([*identity, *key, *order, *events])))
        quarantine = read_columns(lakehouse.table_uri("quarantine", contract.name), identity)
        if quarantine.is_empty():
            quarantine = consumed.select(identity).head(0).collect()
        # A key whose last change is a tombstone must not be in silver; the versions before
        # the tombstone are accounted for by it.
        gone = tombstones.deleted_keys(consumed, contract).select(key)
        versions = tombstones.versions(consumed)
        unquarantined = versions.join(quarantine.lazy(), on=identity, how="anti", nulls_equal=True)
        kept = tombstones.standing(unquarantined, contract, consumed)
        valid = typed(kept, contract).select(*key, *order)
        current = scan_columns(lakehouse.table_uri("silver", contract.name), [*key, *order])
        # One streamed join of bronze's valid rows with silver's keys yields both kinds of
        # problem; only they and the counts are held, not the tables, so memory does not
        # grow with them.
        in_bronze, in_silver = pl.col("_in_bronze").is_not_null(), pl.col("_in_silver").is_not_null()
        lost = ~in_silver
        for column in order:
            lost = lost | (pl.col(f"{column}_silver") < pl.col(column))
        joined = valid.with_columns(_in_bronze=pl.lit(True)).join(
            current.with_columns(_in_silver=pl.lit(True)), on=key, how="full", coalesce=True, suffix="_silver"
        )
        counts, problems, undeleted = pl.collect_all(
            [
                pl.concat(
                    [
                        rows.select(rows=pl.len())
                        for rows in (consumed, versions, unquarantined, kept, current)
                    ]
                ),
                joined.filter(~in_bronze | lost),
                current.join(
                    gone.cast({name: current.collect_schema()[name] for name in key}), on=key, how="semi"
                ),
            ],
            engine="streaming",
        )
        consumed_rows, version_rows, unquarantined_rows, valid_rows, current_rows = counts.get_column(
            "rows"
        ).to_list()
        missing = problems.filter(in_bronze).select(*key, *order)
        unexplained = problems.filter(~in_bronze).select(
            *key, *(pl.col(f"{column}_silver").alias(column) for column in order)
        )
        merged = current_rows - unexplained.height
        return dg.AssetCheckResult(
            passed=missing.is_empty() and unexplained.is_empty() and undeleted.is_empty(),
            metadata={
                "bronze_version": position,
                "rows_consumed": consumed_rows,
                "rows_merged": merged,
                "rows_collapsed": valid_rows - missing.height - merged,
                "rows_quarantined": version_rows - unquarantined_rows,
                "tombstones": consumed_rows - version_rows,
                "rows_before_a_delete": unquarantined_rows - valid_rows,
                "rows_missing": missing.height,
                "silver_rows_without_bronze": unexplained.height,
                "silver_rows_deleted_in_bronze": undeleted.height,
                "sample": sample(
                    next((rows for rows in (missing, unexplained) if not rows.is_empty()), undeleted)
                ),
            },
        )

    return Check(
        dg.AssetKey(["silver", contract.name]),
        "bronze_rows_accounted",
        "Every bronze row silver has consumed is in silver (that version or a newer one), in quarantine "
        "or deleted by a later tombstone: consumed = merged + collapsed + quarantined + tombstones + rows "
        "before a delete; silver holds no row bronze lacks and no key bronze holds as deleted.",
        evaluate,
        blocking=True,
        reads=tuple((layer, contract.name) for layer in ("bronze", "quarantine", "silver")),
    )


def _source_keys_check(contract: Contract) -> Check:
    """The other way: silver holds no key the source has deleted."""

    def evaluate(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
        source: SourceDatabase = context.resources.source
        lakehouse: LakehouseStorage = context.resources.lakehouse
        keys = read_columns(lakehouse.table_uri("silver", contract.name), contract.primary_key)
        if keys.is_empty():
            return dg.AssetCheckResult(passed=True, metadata={"keys_checked": 0, "note": "silver is empty"})
        # The comparison bronze makes to find deletes, by key ranges, on the keys bronze holds
        # live and silver's: silver lacks the quarantined keys, which would make every range
        # differ and every source key be read.
        bronze = pl.scan_delta(lakehouse.table_uri("bronze", contract.name))
        live = tombstones.live_keys(bronze, contract).collect().cast(dict(keys.schema))
        held = pl.concat([live, keys]).unique()
        gone = find_deletes(contract, source, held).keys.join(keys, on=contract.primary_key, how="semi")
        found_deletes = contract.deletes != "never"
        description = None
        if not gone.is_empty():
            description = (
                f"silver/{contract.name} holds {gone.height:,} keys that source table "
                f"{contract.source.table} no longer has"
                + ("" if found_deletes else " (the contract says deletes: never)")
            )
        return dg.AssetCheckResult(
            passed=gone.is_empty(),
            severity=dg.AssetCheckSeverity.ERROR if found_deletes else dg.AssetCheckSeverity.WARN,
            description=description,
            metadata={
                "keys_checked": keys.height,
                "keys_not_in_source": gone.height,
                "deletes": str(contract.deletes),
                "sample": sample(gone),
            },
        )

    return Check(
        dg.AssetKey(["silver", contract.name]),
        "keys_in_source",
        "Every key silver holds is still in the source (deletes reached silver); a warning only for "
        "a contract with `deletes: never`.",
        evaluate,
        resources=frozenset({"source", "lakehouse"}),
    )


def reconciliation_checks(contract: Contract) -> list[Check]:
    """Source (or landing files) to bronze, bronze to silver, and silver back to the source."""
    if not contract.is_database:
        return [_landing_lines_check(contract), _silver_accounts_check(contract)]
    return [_source_rows_check(contract), _silver_accounts_check(contract), _source_keys_check(contract)]
