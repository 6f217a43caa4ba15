"""Pandera schemas for the row rules of a table, and the check result naming the rows that
break them.

Schemas check values only (no dtypes): bronze holds columns as the source sent them, and the
layers' own writers already fix the types.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import dagster as dg
import pandera.polars as pa
import polars as pl

from asset_checks.sample import SAMPLE_ROWS, sample
from lakehouse.sources.contract import Column
from lakehouse.storage.slices import key_ranges

FAILURE_CASES = {"column": pl.String, "check": pl.String, "failure_case": pl.String}
# Pandera validates at most this many suspects at a time, so a check's memory follows the slice.
SLICE_ROWS = 1_000_000


@dataclass(frozen=True)
class Rule:
    """Row rules as a Pandera schema, and how to find the rows that can break it (its
    suspects, usually few) in a streamed pass of polars, so Pandera validates only those."""

    schema: pa.DataFrameSchema
    suspects: Callable[[pl.LazyFrame], pl.LazyFrame]
    # Whether it judges each row alone, so that its suspects can be validated in parts.
    row_local: bool = True


def not_null(columns: Iterable[str]) -> Rule:
    columns = list(columns)

    def unfilled(rows: pl.LazyFrame) -> pl.LazyFrame:
        schema = rows.collect_schema()
        filled = {
            # Pandera counts a float's NaN as missing too.
            name: pl.col(name).is_not_null() & (~pl.col(name).is_nan() if schema[name].is_float() else True)
            for name in columns
            if name in schema
        }
        return _breaking(rows, filled)

    return Rule(
        pa.DataFrameSchema({name: pa.Column(nullable=False, required=False) for name in columns}), unfilled
    )


def _breaking(rows: pl.LazyFrame, holds: dict[str, pl.Expr]) -> pl.LazyFrame:
    """The rows on which a column's condition in `holds` is not true for certain, of the columns
    `rows` has: the rows a schema of those conditions can fail, found in one streamed pass so
    that Pandera validates only them."""
    present = rows.collect_schema()
    conditions = [holds[name].fill_null(False) for name in holds if name in present]
    return rows.filter(~pl.all_horizontal(conditions)) if conditions else rows.head(0)


def _no_repeats(columns: list[str]) -> pa.Check:
    """Fails every row repeating the values of an earlier row in `columns`: the extra copies,
    so a planted duplicate is named and its original is not. Rows with a null in `columns`
    are `not_null`'s business."""
    repeat = ~pl.struct(columns).is_first_distinct() & pl.all_horizontal(pl.col(columns).is_not_null())
    return pa.Check(lambda data: data.lazyframe.select(~repeat), name=f"unique ({', '.join(columns)})")


def unique(column_sets: Sequence[Sequence[str]]) -> Rule:
    """Each set of columns (the key, a unique column) holds each combination of values once."""
    return Rule(
        pa.DataFrameSchema(checks=[_no_repeats(list(columns)) for columns in column_sets]),
        lambda rows: could_repeat(rows, column_sets),
        row_local=False,
    )


def valid_values(columns: dict[str, Column]) -> Rule:
    """Allowed values and ranges of the contract's columns; nulls are `not_null`'s business."""
    schema, holds = {}, {}
    for name, spec in columns.items():
        # Each Pandera check beside the polars condition it evaluates.
        column, checks, conditions = pl.col(name), [], []
        if spec.allowed_values:
            checks.append(pa.Check.isin(spec.allowed_values))
            conditions.append(column.is_in(spec.allowed_values))
        if spec.range and spec.range.min is not None:
            checks.append(pa.Check.ge(spec.range.min))
            conditions.append(column.ge(spec.range.min))
        if spec.range and spec.range.max is not None:
            checks.append(pa.Check.le(spec.range.max))
            conditions.append(column.le(spec.range.max))
        if checks:
            schema[name] = pa.Column(nullable=True, required=False, checks=checks)
            holds[name] = column.is_null() | pl.all_horizontal(conditions)
    return Rule(pa.DataFrameSchema(schema), lambda rows: _breaking(rows, holds))


def references(parents: dict[str, tuple[str, pl.Series]]) -> Rule:
    """Every value of each column is a key of its parent table: `parents` maps the column to the
    parent ('table.column') and that parent's keys."""
    parents = {column: (parent, keys.unique()) for column, (parent, keys) in parents.items()}
    columns = {
        column: pa.Column(nullable=True, checks=_exists_in(parent, keys))
        for column, (parent, keys) in parents.items()
    }
    return Rule(pa.DataFrameSchema(columns), lambda rows: _orphaned(rows, parents))


def _exists_in(parent: str, parent_keys: pl.Series) -> pa.Check:
    keys = parent_keys.implode()
    return pa.Check(
        lambda data: data.lazyframe.select(pl.col(data.key).is_in(keys)), name=f"exists in {parent}"
    )


def _orphaned(rows: pl.LazyFrame, parents: dict[str, tuple[str, pl.Series]]) -> pl.LazyFrame:
    """The rows with a value missing from its parent's keys, each found by one join that holds
    the parent's keys: an `is_in` of millions of keys builds their set again for every slice."""
    schema = rows.collect_schema()
    missing = [
        rows.filter(pl.col(column).is_not_null()).join(
            keys.cast(schema[column], strict=False).to_frame(column).lazy(), on=column, how="anti"
        )
        for column, (_, keys) in parents.items()
    ]
    # The rows hold their key, so a row missing two parents is one row.
    return pl.concat(missing).unique()


def failing_rows(frame: pl.DataFrame, schema: pa.DataFrameSchema) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(rows breaking the schema, failure cases: column, check, value), validating all data."""
    try:
        schema.validate(frame, lazy=True)
    except pa.errors.SchemaErrors as errors:
        cases = errors.failure_cases
        rows = cases.get_column("index").drop_nulls().unique().sort()
        return frame[rows.to_list()], cases.select(list(FAILURE_CASES)).cast(FAILURE_CASES)
    return frame.head(0), pl.DataFrame(schema=FAILURE_CASES)


def _repeated(rows: pl.LazyFrame, hashed: pl.Expr) -> pl.Series:
    """The values `hashed` takes on more than one row, found by sorting one hash per row: a
    group-by's table of every distinct hash holds about twice the memory."""
    hashes = rows.select(hashed.alias("hash")).collect(engine="streaming").get_column("hash").sort()
    return hashes.filter(hashes == hashes.shift(1)).unique()


def could_repeat(rows: pl.LazyFrame, column_sets: Sequence[Sequence[str]]) -> pl.LazyFrame:
    """The rows whose values in one of `column_sets` hash like another row's: every row `unique`
    can fail, found while holding a hash per row, not the rows. A hash collision only adds a row
    for Pandera to clear."""
    hashes = [pl.struct(columns).hash() for columns in column_sets]
    return rows.filter(pl.any_horizontal(h.is_in(_repeated(rows, h).implode()) for h in hashes))


def rule_result(
    rows: pl.LazyFrame,
    rule: Rule,
    severity: dg.AssetCheckSeverity,
    key: str,
    metadata: dict | None = None,
) -> dg.AssetCheckResult:
    """Validate the rows (the key and the rule's columns); the metadata shows how many rows
    fail, which checks, and the first ten failing rows.

    Only the rule's suspects are validated: all at once when they are at most a slice's worth
    or the rule compares rows with each other; otherwise (a column a foreign source leaves
    empty on every row) a slice at a time by ranges of the `key` column, so that memory
    follows the slice, not the table."""
    suspects = rule.suspects(rows)
    held = suspects.head(SLICE_ROWS + 1) if rule.row_local else suspects
    count, first = pl.collect_all([rows.select(pl.len()), held], engine="streaming")
    slices: Iterable[pl.DataFrame] = (
        [first]
        if first.height <= SLICE_ROWS or not rule.row_local
        else (part.collect() for part in key_ranges(suspects, key, SLICE_ROWS))
    )
    failing, shown = 0, []
    counts = [pl.DataFrame(schema=FAILURE_CASES).group_by("column", "check").len()]
    for frame in slices:
        # In key order, so that the sample shows the same rows each time.
        bad, cases = failing_rows(frame.sort(key, maintain_order=True), rule.schema)
        failing += bad.height
        counts.append(cases.group_by("column", "check").len())
        shown.append(bad.head(SAMPLE_ROWS))
    checked = count.item()
    by_check = (
        pl.concat(counts).group_by("column", "check").agg(rows=pl.col("len").sum()).sort("column", "check")
    )
    return dg.AssetCheckResult(
        passed=failing == 0,
        severity=severity,
        metadata={
            **(metadata or {}),
            "rows_checked": checked,
            "failing_rows": failing,
            "failure_rate": round(failing / checked, 6) if checked else 0.0,
            "failures_by_check": sample(by_check) if not by_check.is_empty() else "none",
            "sample": sample(pl.concat(shown)) if failing else "none",
        },
    )
