"""Pandera checks generated from the dataset contracts, one asset check per rule.

`not_null` (the contract's non-nullable columns) and `unique` (the primary key) are blocking
ERROR checks: when either fails on silver, gold and dbt do not build on the bad data.
`valid_values` (allowed values and ranges) is an ERROR check that does not block.
"""

import dagster as dg
import pandera.polars as pa
import polars as pl

from asset_checks.report import sample
from lakehouse import delta
from lakehouse.contract import Contract
from lakehouse.delta import LakehouseStorage

FAILURE_CASES = {"column": pl.String, "check": pl.String, "failure_case": pl.String}
BLOCKING = {"not_null": True, "unique": True, "valid_values": False}
DESCRIPTIONS = {
    "not_null": "The contract's non-nullable columns hold no nulls.",
    "unique": "The primary key identifies one row.",
    "valid_values": "Values are within the contract's allowed values and ranges.",
}


def rule_schema(contract: Contract, rule: str) -> pa.DataFrameSchema:
    """The Pandera schema that checks one rule of the contract (no dtype checks)."""
    if rule == "unique":
        return pa.DataFrameSchema(unique=contract.primary_key)
    columns = {}
    for name, spec in contract.columns.items():
        if rule == "not_null" and not spec.nullable:
            columns[name] = pa.Column(nullable=False, required=False)
        if rule == "valid_values" and (spec.allowed_values or spec.range):
            checks = [pa.Check.isin(spec.allowed_values)] if spec.allowed_values else []
            if spec.range and spec.range.min is not None:
                checks.append(pa.Check.ge(spec.range.min))
            if spec.range and spec.range.max is not None:
                checks.append(pa.Check.le(spec.range.max))
            columns[name] = pa.Column(nullable=True, required=False, checks=checks)
    return pa.DataFrameSchema(columns)


def failing_rows(frame: pl.DataFrame, schema: pa.DataFrameSchema) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(rows breaking the schema, failure cases: column, check, value), validating all data."""
    try:
        schema.validate(frame, lazy=True)
    except pa.errors.SchemaErrors as errors:
        cases = errors.failure_cases
        rows = cases.get_column("index").drop_nulls().unique().sort()
        return frame[rows.to_list()], cases.select(list(FAILURE_CASES)).cast(FAILURE_CASES)
    return frame.head(0), pl.DataFrame(schema=FAILURE_CASES)


def _rule_check(contract: Contract, layer: str, rule: str) -> dg.AssetChecksDefinition:
    @dg.asset_check(
        asset=dg.AssetKey([layer, contract.name]),
        name=rule,
        description=DESCRIPTIONS[rule],
        blocking=BLOCKING[rule],
    )
    def check(lakehouse: LakehouseStorage) -> dg.AssetCheckResult:
        uri = lakehouse.table_uri(layer, contract.name)
        frame = pl.read_delta(uri) if delta.open_table(uri) else pl.DataFrame()
        bad, cases = failing_rows(frame, rule_schema(contract, rule))
        shown = [
            c
            for c in (*contract.primary_key, *cases.get_column("column").unique().sort())
            if c in bad.columns
        ]
        return dg.AssetCheckResult(
            passed=bad.is_empty(),
            severity=dg.AssetCheckSeverity.ERROR,
            metadata={
                "rows_checked": frame.height,
                "failing_rows": bad.height,
                "failure_rate": round(bad.height / frame.height, 6) if frame.height else 0.0,
                "failures_by_check": sample(cases.group_by("column", "check").len().sort("column"))
                if not cases.is_empty()
                else "none",
                "sample": sample(bad.select(list(dict.fromkeys(shown)))) if not bad.is_empty() else "none",
            },
        )

    return check


def silver_checks(contracts: list[Contract]) -> list[dg.AssetChecksDefinition]:
    return [_rule_check(contract, "silver", rule) for contract in contracts for rule in BLOCKING]
