"""Row-rule checks on every layer: from the contracts on bronze and silver, from the table
keys on gold.

- bronze: `not_null`, `unique` (one row per source row version) and `valid_values` on the
  rows the latest materialisation appended, as WARN: bronze keeps what arrived, and the
  warning shows how much bad data is coming in (silver quarantines it).
- silver: `not_null` and `unique` (primary key and `unique` columns) are blocking ERROR
  checks, so gold and dbt never build on bad silver data; `valid_values` and `references`
  (every foreign key exists in its parent table) are ERROR checks that do not block.
- gold: `not_null` and `unique` on each table's key, blocking ERROR so dbt does not build on
  a broken fact table.
"""

from collections.abc import Callable, Iterable, Sequence
from functools import partial

import dagster as dg
import polars as pl

from asset_checks import last_pass, rules
from asset_checks.check import Check
from lakehouse.bronze import tombstones
from lakehouse.bronze.columns import OP
from lakehouse.gold.tables import GoldTable
from lakehouse.resources import LakehouseStorage
from lakehouse.silver.validate import typed_column
from lakehouse.sources.contract import Contract
from lakehouse.storage import delta

Reader = Callable[[dg.AssetCheckExecutionContext, LakehouseStorage, list[str]], tuple[pl.LazyFrame, dict]]
RuleFor = Callable[[LakehouseStorage], rules.Rule]
ERROR, WARN = dg.AssetCheckSeverity.ERROR, dg.AssetCheckSeverity.WARN


def scan_columns(uri: str, wanted: list[str], where: pl.Expr | None = None) -> pl.LazyFrame:
    """The table's rows (those matching `where`) with those of the wanted columns it has; no
    columns when it has none of them or does not exist."""
    table = delta.open_table(uri)
    present = set(delta.arrow_schema(table).names) if table else set()
    columns = [name for name in dict.fromkeys(wanted) if name in present]
    if not columns:
        return pl.LazyFrame()
    rows = pl.scan_delta(table)
    return (rows if where is None else rows.filter(where)).select(columns)


def read_columns(uri: str, wanted: list[str], where: pl.Expr | None = None) -> pl.DataFrame:
    """`scan_columns`, read into memory."""
    return scan_columns(uri, wanted, where).collect()


def whole_table(layer: str, name: str) -> Reader:
    """Every row of the table, with only the columns the rule needs."""

    def read(_: dg.AssetCheckExecutionContext, lakehouse: LakehouseStorage, wanted: list[str]):
        return scan_columns(lakehouse.table_uri(layer, name), wanted), {"scope": "whole table"}

    return read


def _since_last_pass(
    context: dg.AssetCheckExecutionContext, uri: str, check: dg.AssetCheckKey, wanted: list[str], scope: str
) -> tuple[pl.LazyFrame, pl.DataFrame | None, dict]:
    """The table's wanted columns, those of the rows in the files it added since the check's
    last pass (None when there is no pass to start from, when they are every row, or when a
    wanted column is a partition column, whose values live in the paths) and the metadata
    naming what was read: `scope`, with the pass's version in place of `{}`, when they are read."""
    table = delta.open_table(uri)
    if table is None:
        return pl.LazyFrame(), None, {"scope": "no table yet"}
    stored = delta.arrow_schema(table).names
    columns = [column for column in dict.fromkeys(wanted) if column in stored]
    rows, kept = pl.scan_delta(table).select(columns), last_pass.record(table)
    last = last_pass.recorded(context, check, table, additive=False)
    read = None if last is None else delta.rows_since(table, uri, last["version"], columns)
    # A table rewritten whole since (a dimension rebuilt) is streamed, not held and filtered.
    if read is None or read[0].height == delta.row_count(table):
        return rows, None, {"scope": "whole table", **kept}
    return rows, read[0], {"scope": scope.format(last["version"]), **kept}


def gained_rows(layer: str, name: str, check: dg.AssetCheckKey) -> Reader:
    """The rows the table gained since the check's last pass, those of the files added since:
    a rule that judges each row alone cannot newly fail on the others. Every row when there is
    no pass to start from."""

    def read(context: dg.AssetCheckExecutionContext, lakehouse: LakehouseStorage, wanted: list[str]):
        uri, scope = lakehouse.table_uri(layer, name), "rows of the files added since version {}"
        rows, gained, metadata = _since_last_pass(context, uri, check, wanted, scope)
        return (rows if gained is None else gained.lazy()), metadata

    return read


def sharing_values(layer: str, name: str, check: dg.AssetCheckKey, leading: Sequence[str]) -> Reader:
    """For `unique`: the rows sharing a value of one of the `leading` columns (the first of each
    column set) with a row the table gained since the check's last pass. Rows that were
    distinct at the pass can repeat each other now only through a row gained since, so a batch's
    check groups the batch's keys, not the table. Every row when there is no pass to start from."""

    def read(context: dg.AssetCheckExecutionContext, lakehouse: LakehouseStorage, wanted: list[str]):
        uri, scope = (
            lakehouse.table_uri(layer, name),
            "rows sharing a value with the files added since version {}",
        )
        rows, gained, metadata = _since_last_pass(context, uri, check, wanted, scope)
        if gained is None:
            return rows, metadata
        shared = [
            pl.col(column).is_in(gained.get_column(column).unique().implode())
            for column in leading
            if column in gained.columns
        ]
        return rows.filter(pl.any_horizontal(shared)), metadata

    return read


def latest_batch(contract: Contract, typed: Sequence[str] = ()) -> Reader:
    """The bronze rows the asset's latest materialisation appended (its run id), with the
    columns `typed` in the contract's types; every bronze file holds one run's rows, so the
    filter prunes files."""
    key = dg.AssetKey(["bronze", contract.name])

    def read(context: dg.AssetCheckExecutionContext, lakehouse: LakehouseStorage, wanted: list[str]):
        latest = context.instance.get_latest_materialization_event(key)
        if latest is None:
            return pl.LazyFrame(), {"scope": "no materialisation yet"}
        uri = lakehouse.table_uri("bronze", contract.name)
        rows = scan_columns(uri, [*wanted, OP], where=pl.col("_run_id") == latest.run_id)
        # Tombstones hold a key and no values: they are no row versions to check.
        rows = tombstones.versions(rows).drop(OP, strict=False)
        # Only the columns the rule judges: typing a watermark the source holds as text took
        # most of `valid_values` on 30M order lines, and the key names the row as bronze holds it.
        schema = rows.collect_schema()
        rows = rows.with_columns(
            typed_column(name, schema[name], contract) for name in typed if name in schema
        )
        return rows, {"scope": f"rows of run {latest.run_id}"}

    return read


def _check(
    asset: dg.AssetKey,
    name: str,
    description: str,
    row_key: Sequence[str],
    columns: Sequence[str],
    rule: RuleFor,
    read: Reader,
    severity: dg.AssetCheckSeverity,
    blocking: bool,
    reads: tuple[tuple[str, str], ...] = (),
) -> Check:
    def evaluate(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
        lakehouse: LakehouseStorage = context.resources.lakehouse
        rows, scope = read(context, lakehouse, [*row_key, *columns])
        if not rows.collect_schema():
            return dg.AssetCheckResult(passed=True, metadata={**scope, "rows_checked": 0})
        return rules.rule_result(rows, rule(lakehouse), severity, row_key[0], scope)

    return Check(asset, name, description, evaluate, blocking, reads=reads)


def _fixed(rule: rules.Rule) -> RuleFor:
    return lambda _: rule


def _parent_keys(contract: Contract) -> RuleFor:
    """`references` needs the parents' current keys, read when the check runs."""

    def rule(lakehouse: LakehouseStorage) -> rules.Rule:
        parents = {}
        for name, spec in contract.columns.items():
            if spec.references:
                table, column = spec.references.split(".")
                keys = read_columns(lakehouse.table_uri("silver", table), [column])
                found = keys.get_column(column) if column in keys.columns else pl.Series([], dtype=pl.Int64)
                parents[name] = (spec.references, found)
        return rules.references(parents)

    return rule


def version_key(contract: Contract) -> list[str]:
    """What identifies one source row version in bronze: the key and its watermark."""
    return [*contract.primary_key, *([contract.watermark.column] if contract.watermark else [])]


def _bronze(
    contract: Contract,
    name: str,
    description: str,
    columns: list[str],
    rule: rules.Rule,
    typed: bool = False,
) -> Check:
    return _check(
        dg.AssetKey(["bronze", contract.name]),
        name,
        f"Incoming rows: {description}",
        version_key(contract),
        columns,
        _fixed(rule),
        latest_batch(contract, columns if typed else ()),
        WARN,
        blocking=False,
    )


def _silver(
    contract: Contract,
    name: str,
    description: str,
    columns: list[str],
    rule: RuleFor,
    blocking: bool,
    parents: tuple[str, ...] = (),
    since_pass: Callable[[str, str, dg.AssetCheckKey], Reader] | None = None,
) -> Check:
    """`since_pass`: the reader that starts from the check's last pass (`gained_rows` for a rule
    that judges each row alone); without one, the check reads the whole table."""
    table = ("silver", contract.name)
    asset = dg.AssetKey(table)
    return _check(
        asset,
        name,
        description,
        contract.primary_key,
        columns,
        rule,
        since_pass(*table, dg.AssetCheckKey(asset, name)) if since_pass else whole_table(*table),
        ERROR,
        blocking,
        reads=(table, *(("silver", parent) for parent in parents)),
    )


def contract_checks(contract: Contract) -> list[Check]:
    """The row-rule checks the contract implies, on its bronze and silver assets."""
    columns = contract.columns
    required = [name for name, spec in columns.items() if not spec.nullable]
    singles = [name for name, spec in columns.items() if spec.unique and [name] != contract.primary_key]
    distinct = [contract.primary_key, *([name] for name in singles)]
    ruled = {name: spec for name, spec in columns.items() if spec.allowed_values or spec.range}
    referencing = {name: spec.references for name, spec in columns.items() if spec.references}
    checks = [
        _bronze(
            contract,
            "not_null",
            "the non-nullable columns arrived filled.",
            required,
            rules.not_null(required),
        ),
        _bronze(
            contract,
            "unique",
            "each source row version arrived once.",
            [],
            rules.unique([version_key(contract)]),
        ),
        _silver(
            contract,
            "not_null",
            "The contract's non-nullable columns hold no nulls.",
            required,
            _fixed(rules.not_null(required)),
            blocking=True,
            since_pass=gained_rows,
        ),
        _silver(
            contract,
            "unique",
            "The primary key (and each unique column) identifies one row.",
            singles,
            _fixed(rules.unique(distinct)),
            blocking=True,
            since_pass=partial(sharing_values, leading=[columns[0] for columns in distinct]),
        ),
    ]
    if ruled:
        checks += [
            _bronze(
                contract,
                "valid_values",
                "values within the allowed values and ranges.",
                list(ruled),
                rules.valid_values(ruled),
                typed=True,
            ),
            _silver(
                contract,
                "valid_values",
                "Values are within the contract's allowed values and ranges.",
                list(ruled),
                _fixed(rules.valid_values(ruled)),
                blocking=False,
                since_pass=gained_rows,
            ),
        ]
    if referencing:
        named = ", ".join(f"{name} -> {parent}" for name, parent in referencing.items())
        checks.append(
            _silver(
                contract,
                "references",
                f"Every reference ({named}) exists in its parent table.",
                list(referencing),
                _parent_keys(contract),
                blocking=False,
                parents=tuple(sorted({parent.split(".")[0] for parent in referencing.values()})),
            )
        )
    return checks


def gold_checks(tables: Iterable[GoldTable]) -> list[Check]:
    """`not_null` and `unique` on each gold table's key."""
    checks = []
    for table in tables:
        stored, key = ("gold", table.name), list(table.primary_key)
        asset = dg.AssetKey(stored)
        checks += [
            _check(
                asset,
                "not_null",
                "The key columns hold no nulls.",
                key,
                [],
                _fixed(rules.not_null(key)),
                gained_rows(*stored, dg.AssetCheckKey(asset, "not_null")),
                ERROR,
                blocking=True,
                reads=(stored,),
            ),
            _check(
                asset,
                "unique",
                f"({', '.join(key)}) identifies one row.",
                key,
                [],
                _fixed(rules.unique([key])),
                sharing_values(*stored, dg.AssetCheckKey(asset, "unique"), key[:1]),
                ERROR,
                blocking=True,
                reads=(stored,),
            ),
        ]
    return checks
