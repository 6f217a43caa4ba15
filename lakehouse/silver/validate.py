"""Typing and validating bronze rows against their contract.

Every rule a row breaks is named in `_error` (`total_amount < 0`, `status not in allowed
values`, `event_id is null`, `timestamp unparseable`, ...); rows with no error are valid.
"""

from __future__ import annotations

from typing import TypeVar

import polars as pl

from lakehouse.sources.contract import Column, Contract
from lakehouse.sources.timestamps import UTC_TIMESTAMP, TimestampForm, to_utc

ERROR_COLUMN = "_error"
ERROR_SEPARATOR = "; "  # between the rules a row breaks
CONVERTED_PREFIX = "_converted_"
Rows = TypeVar("Rows", pl.DataFrame, pl.LazyFrame)


def _typed(raw: pl.Expr, spec: Column, source: pl.DataType, form: TimestampForm) -> pl.Expr:
    """`raw` in the contract's type; values that do not convert become null."""
    if spec.dtype == UTC_TIMESTAMP:
        return to_utc(raw, source, form)
    return raw.cast(spec.dtype, strict=False)


def typed_column(name: str, source: pl.DataType, contract: Contract) -> pl.Expr:
    """Contract column `name`, stored as `source`, in the contract's type (null where it does
    not convert)."""
    return _typed(pl.col(name), contract.columns[name], source, contract.timestamp_form(name))


def typed(rows: Rows, contract: Contract) -> Rows:
    """The rows with their contract columns in the contract's types; values that do not
    convert become null (`split_valid` names them as unparseable). Lazy rows stay lazy."""
    # Lazily, as in `split_valid`: the conversions then run side by side.
    converted = rows.lazy().with_columns(
        typed_column(name, dtype, contract).alias(name)
        for name, dtype in rows.collect_schema().items()
        if name in contract.columns
    )
    return converted if isinstance(rows, pl.LazyFrame) else converted.collect()  # type: ignore[return-value]


def _rules(name: str, spec: Column, raw: pl.Expr, typed: pl.Expr) -> list[pl.Expr]:
    """One expression per rule: the rule's name where the row breaks it, else null."""
    broken = [
        (raw.is_not_null() & typed.is_null(), f"{name} unparseable"),
        (raw.is_null(), f"{name} is null") if not spec.nullable else None,
        (~typed.cast(pl.String).is_in(spec.allowed_values), f"{name} not in allowed values")
        if spec.allowed_values
        else None,
        (typed < spec.range.min, f"{name} < {spec.range.min:g}")
        if spec.range and spec.range.min is not None
        else None,
        (typed > spec.range.max, f"{name} > {spec.range.max:g}")
        if spec.range and spec.range.max is not None
        else None,
    ]
    return [pl.when(condition).then(pl.lit(rule)) for condition, rule in filter(None, broken)]


def split_valid(frame: pl.DataFrame, contract: Contract) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(valid rows typed per contract, invalid rows as they came with `_error`)."""
    converted = {name: f"{CONVERTED_PREFIX}{name}" for name in contract.columns}
    conversions, rules = [], []
    for name, spec in contract.columns.items():
        raw = pl.col(name) if name in frame.columns else pl.lit(None, dtype=pl.String)
        source = frame.schema.get(name, pl.String)
        conversions.append(_typed(raw, spec, source, contract.timestamp_form(name)).alias(converted[name]))
        rules.extend(_rules(name, spec, raw, pl.col(converted[name])))
    # Every value is converted once, into a column of its own that the rules read: parsing a
    # timestamp costs more than all the rules together. concat_str, not a list join, names the
    # broken rules: it builds no list per row. Lazily, because an eager `with_columns`
    # converts one column after another, where the lazy plan converts them side by side.
    # Both halves in one `collect_all`, which checks the rows once for both and filters them
    # in parallel.
    errors = pl.concat_str(rules, separator=ERROR_SEPARATOR, ignore_nulls=True) if rules else pl.lit("")
    checked = frame.lazy().with_columns(conversions).with_columns(errors.alias(ERROR_COLUMN))
    columns = [*frame.columns, *(name for name in contract.columns if name not in frame.columns)]
    valid, invalid = pl.collect_all(
        [
            checked.filter(pl.col(ERROR_COLUMN) == "").select(
                pl.col(converted.get(name, name)).alias(name) for name in columns
            ),
            checked.filter(pl.col(ERROR_COLUMN) != "").select(*frame.columns, ERROR_COLUMN),
        ]
    )
    return valid, invalid
