"""Pandera schemas for the row rules of a table, and the check result naming the rows that
break them.

Schemas check values only (no dtypes): bronze holds columns as the source sent them, and the
layers' own writers already fix the types.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import dagster as dg
import pandera.polars as pa
import polars as pl

from asset_checks.sample import sample
from lakehouse.contract import Column

FAILURE_CASES = {"column": pl.String, "check": pl.String, "failure_case": pl.String}


def not_null(columns: Iterable[str]) -> pa.DataFrameSchema:
    return pa.DataFrameSchema({name: pa.Column(nullable=False, required=False) for name in columns})


def _no_repeats(columns: list[str]) -> pa.Check:
    """Fails every row repeating the values of an earlier row in `columns`: the extra copies,
    so a planted duplicate is named and its original is not. Rows with a null in `columns`
    are `not_null`'s business."""
    repeat = ~pl.struct(columns).is_first_distinct() & pl.all_horizontal(pl.col(columns).is_not_null())
    return pa.Check(lambda data: data.lazyframe.select(~repeat), name=f"unique ({', '.join(columns)})")


def unique(key: Sequence[str], unique_columns: Iterable[str] = ()) -> pa.DataFrameSchema:
    """The key identifies one row, and each of `unique_columns` holds each value once."""
    return pa.DataFrameSchema(checks=[_no_repeats(list(key)), *(_no_repeats([c]) for c in unique_columns)])


def valid_values(columns: dict[str, Column]) -> pa.DataFrameSchema:
    """Allowed values and ranges of the contract's columns; nulls are `not_null`'s business."""
    schema = {}
    for name, spec in columns.items():
        checks = [pa.Check.isin(spec.allowed_values)] if spec.allowed_values else []
        if spec.range and spec.range.min is not None:
            checks.append(pa.Check.ge(spec.range.min))
        if spec.range and spec.range.max is not None:
            checks.append(pa.Check.le(spec.range.max))
        if checks:
            schema[name] = pa.Column(nullable=True, required=False, checks=checks)
    return pa.DataFrameSchema(schema)


def references(column: str, parent: str, parent_keys: pl.Series) -> pa.DataFrameSchema:
    """Every value of `column` is a key of the parent table (`parent`: 'table.column')."""
    keys = parent_keys.unique().implode()
    exists = pa.Check(
        lambda data: data.lazyframe.select(pl.col(data.key).is_in(keys)), name=f"exists in {parent}"
    )
    return pa.DataFrameSchema({column: pa.Column(nullable=True, checks=exists)})


def failing_rows(frame: pl.DataFrame, schema: pa.DataFrameSchema) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(rows breaking the schema, failure cases: column, check, value), validating all data."""
    try:
        schema.validate(frame, lazy=True)
    except pa.errors.SchemaErrors as errors:
        cases = errors.failure_cases
        rows = cases.get_column("index").drop_nulls().unique().sort()
        return frame[rows.to_list()], cases.select(list(FAILURE_CASES)).cast(FAILURE_CASES)
    return frame.head(0), pl.DataFrame(schema=FAILURE_CASES)


def rule_result(
    frame: pl.DataFrame,
    schema: pa.DataFrameSchema,
    severity: dg.AssetCheckSeverity,
    metadata: dict | None = None,
) -> dg.AssetCheckResult:
    """Validate `frame` (the key and the rule's columns); the metadata shows how many rows
    fail, which checks, and the first ten failing rows."""
    bad, cases = failing_rows(frame, schema)
    return dg.AssetCheckResult(
        passed=bad.is_empty(),
        severity=severity,
        metadata={
            **(metadata or {}),
            "rows_checked": frame.height,
            "failing_rows": bad.height,
            "failure_rate": round(bad.height / frame.height, 6) if frame.height else 0.0,
            "failures_by_check": sample(cases.group_by("column", "check").len().sort("column"))
            if not cases.is_empty()
            else "none",
            "sample": sample(bad) if not bad.is_empty() else "none",
        },
    )
