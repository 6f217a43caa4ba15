"""`lakehouse quality report`: each silver table against its contract's SLA, read from Delta.

Per table: row count (an empty table fails), the keys the source deleted (bronze's
tombstones; a count, never a failure), freshness in hours (fails past the contract's
`freshness.warn_after`), duplicate keys (fail above `sla.duplicate_rate`) and the null rate of
every column (a non-nullable column fails below `sla.completeness`). One pass over each
table; a failing table makes the overall status, and the command's exit code, a failure.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import polars as pl

from asset_checks.freshness import HOUR, age_status
from lakehouse.bronze import tombstones
from lakehouse.bronze.columns import OP
from lakehouse.resources import LakehouseStorage
from lakehouse.sources.contract import Contract
from lakehouse.storage import delta

PASS, FAIL = "pass", "fail"
# Rates are compared after rounding, so 99.9 % completeness is not failed by float noise.
DIGITS = 9


def _status(ok: bool) -> str:
    return PASS if ok else FAIL


def _measures(table: delta.DeltaTable, contract: Contract) -> dict[str, Any]:
    """Rows, null counts, distinct keys and the newest freshness value, in one scan."""
    present = set(delta.arrow_schema(table).names)
    columns = [name for name in contract.columns if name in present]
    fresh = contract.freshness.column if contract.freshness else None
    return (
        pl.scan_delta(table)
        .select(
            pl.len().alias("_rows"),
            pl.struct(contract.primary_key).n_unique().alias("_distinct_keys"),
            *([pl.col(fresh).max().alias("_newest")] if fresh in columns else []),
            *(pl.col(name).null_count().alias(name) for name in columns),
        )
        .collect()
        .row(0, named=True)
    )


def _deleted_keys(lakehouse: LakehouseStorage, contract: Contract) -> int:
    """The keys whose last change in bronze is a tombstone: rows the source deleted."""
    bronze = delta.open_table(lakehouse.table_uri("bronze", contract.name))
    if bronze is None or OP not in delta.arrow_schema(bronze).names:
        return 0
    return tombstones.deleted_keys(pl.scan_delta(bronze), contract).select(pl.len()).collect().item()


def table_report(lakehouse: LakehouseStorage, contract: Contract, now: datetime) -> dict[str, Any]:
    """The report of silver/<contract.name>; a missing table fails with a note."""
    name = f"silver/{contract.name}"
    table = delta.open_table(lakehouse.table_uri("silver", contract.name))
    if table is None:
        return {"table": name, "status": FAIL, "note": "the table does not exist: materialise it first"}
    measured = _measures(table, contract)
    rows, sla = measured.pop("_rows"), contract.sla
    report: dict[str, Any] = {
        "table": name,
        "row_count": {"value": rows, "status": _status(rows > 0)},
        "deleted_keys": _deleted_keys(lakehouse, contract),
    }

    if contract.freshness:
        newest: datetime | None = measured.pop("_newest", None)
        age = now - newest if newest else None
        report["freshness"] = {
            "column": contract.freshness.column,
            "newest": newest.isoformat() if newest else None,
            "hours": round(age / HOUR, 3) if age is not None else None,
            "limit_hours": contract.freshness.warn_after / HOUR,
            # The SLA's freshness is the check's warn age: past it the table fails here.
            "status": _status(age_status(age, contract.freshness) == PASS),
        }

    duplicates = rows - measured.pop("_distinct_keys")
    rate = round(duplicates / rows, DIGITS) if rows else 0.0
    report["duplicates"] = {
        "key": contract.primary_key,
        "count": duplicates,
        "rate": rate,
        "limit_rate": sla.duplicate_rate,
        "status": _status(rate <= sla.duplicate_rate),
    }

    max_null_rate = round(1 - sla.completeness, DIGITS)
    report["columns"] = []
    for column, nulls in measured.items():
        null_rate = round(nulls / rows, DIGITS) if rows else 0.0
        required = not contract.columns[column].nullable
        report["columns"].append(
            {
                "column": column,
                "null_rate": null_rate,
                "limit_null_rate": max_null_rate if required else None,
                "status": _status(not required or null_rate <= max_null_rate),
            }
        )
    measures = [report["row_count"], report.get("freshness"), report["duplicates"], *report["columns"]]
    report["status"] = _status(all(m["status"] == PASS for m in measures if m))
    return report


def quality_report(
    lakehouse: LakehouseStorage, contracts: list[Contract], now: datetime, table: str | None = None
) -> dict[str, Any]:
    """The report of every contract's silver table (or of `table` only), with an overall status."""
    chosen = [c for c in contracts if table in (None, c.name, f"silver/{c.name}")]
    if not chosen:
        known = ", ".join(c.name for c in contracts)
        raise ValueError(f"no contract for table '{table}'; the tables are: {known}")
    tables = [table_report(lakehouse, contract, now) for contract in chosen]
    overall = _status(all(t["status"] == PASS for t in tables))
    return {"as_of": now.isoformat(), "status": overall, "tables": tables}


def to_json(report: dict[str, Any]) -> str:
    return json.dumps(report, indent=2)


def _percent(rate: float | None) -> str:
    return "-" if rate is None else f"{rate:.4%}"


def to_markdown(report: dict[str, Any]) -> str:
    """A summary table, then the null rates of each table's columns."""
    lines = [
        f"# Data quality report: {report['status'].upper()}",
        "",
        f"As of {report['as_of']}.",
        "",
        "| table | status | rows | deleted keys | freshness (hours / limit) | duplicate keys (rate / limit) "
        "|",
        "| --- | --- | ---: | ---: | --- | --- |",
    ]
    for table in report["tables"]:
        if "note" in table:
            lines.append(f"| {table['table']} | {table['status']} | - | - | {table['note']} | - |")
            continue
        fresh, dup = table.get("freshness"), table["duplicates"]
        freshness = f"{fresh['hours']} / {fresh['limit_hours']:g} ({fresh['status']})" if fresh else "-"
        lines.append(
            f"| {table['table']} | {table['status']} | {table['row_count']['value']:,} | "
            f"{table['deleted_keys']:,} | {freshness} | "
            f"{dup['count']:,} ({_percent(dup['rate'])} / {_percent(dup['limit_rate'])}, {dup['status']}) |"
        )
    for table in report["tables"]:
        if "columns" not in table:
            continue
        lines += ["", f"## {table['table']}: null rate per column", ""]
        lines += ["| column | null rate | limit | status |", "| --- | ---: | ---: | --- |"]
        for column in table["columns"]:
            rate, limit = _percent(column["null_rate"]), _percent(column["limit_null_rate"])
            lines.append(f"| {column['column']} | {rate} | {limit} | {column['status']} |")
    return "\n".join(lines) + "\n"
