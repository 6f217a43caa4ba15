"""The lakehouse's health now, from metadata only: the Delta logs (rows, versions, the newest
value of each freshness column from the files' statistics), the Dagster instance (the last
materialisations, check evaluations and runs), the landing zone's listing and the source's
replication slots. No table is scanned, so a scrape costs the same at any scale."""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime

import dagster as dg
import polars as pl

from asset_checks.check import last_evaluations
from lakehouse.bronze.cdc_slot import slot_lag
from lakehouse.bronze.database import read_watermark
from lakehouse.bronze.landing import pending_files
from lakehouse.resources import LakehouseStorage, LandingZone, SourceDatabase
from lakehouse.settings import seconds
from lakehouse.sources.contract import Contract
from lakehouse.sources.errors import SourceError
from lakehouse.storage import delta, table_log

# What each materialisation reports of the rows it changed (`rows_<kind>` in its metadata).
ROW_CHANGES = ("inserted", "updated", "deleted", "quarantined", "appended", "written")
# A job's usual duration: the median of its last successful runs before the newest one, once
# there are enough of them to mean something.
BASELINE_RUNS = 10
MIN_BASELINE_RUNS = 3
# Dagster's implicit jobs (`__ASSET_JOB`, and `__ephemeral_asset_job__` in tests) run whatever
# asset selection each run was given: their runs are not comparable, so they have no usual
# duration.
IMPLICIT_JOB_PREFIX = "__"
RECENT_RUNS = 200


@dataclass(frozen=True)
class TableHealth:
    layer: str
    name: str
    rows: int
    version: int
    committed: datetime  # the last commit
    newest: datetime | None  # the newest value of the contract's freshness column, when known

    def age(self, now: datetime) -> float:
        """Seconds since the newest data, or since the last commit where the data does not say."""
        return (now - (self.newest or self.committed)).total_seconds()


@dataclass(frozen=True)
class CheckHealth:
    layer: str
    table: str
    check: str
    passed: bool
    severity: str  # error or warn
    metadata: dict[str, object]


@dataclass(frozen=True)
class JobHealth:
    job: str
    last: dict[str, float]  # seconds the newest finished run took, by its status
    baseline: float | None  # median seconds of the successful runs before the newest one
    running: float | None  # seconds the longest unfinished run has been running


@dataclass(frozen=True)
class LandingHealth:
    dataset: str
    waiting: int  # files bronze has not ingested
    oldest: float | None  # seconds since the oldest of them last changed


@dataclass(frozen=True)
class Health:
    now: datetime
    contracts: list[Contract]
    tables: list[TableHealth]
    rows_changed: list[tuple[str, str, str, int]]  # layer, table, kind, rows of the last materialisation
    checks: list[CheckHealth]
    jobs: list[JobHealth]
    landing: list[LandingHealth]
    slot_lag: dict[str, int]  # bytes of WAL each change-captured table's slot keeps
    unreadable: dict[tuple[str, str], str]  # why, by (layer, table), for tables whose log is broken

    def table(self, layer: str, name: str) -> TableHealth | None:
        return next((table for table in self.tables if (table.layer, table.name) == (layer, name)), None)

    def quarantine_ratio(self) -> dict[str, float]:
        """Per dataset, the share of the bronze rows of silver's last load that went to quarantine
        (the `quarantine_rate` check's own figure)."""
        return {
            check.table: float(check.metadata["quarantine_rate"])  # type: ignore[arg-type]
            for check in self.checks
            if check.check == "quarantine_rate" and "quarantine_rate" in check.metadata
        }


def _moment(value: object) -> datetime | None:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day, tzinfo=UTC)
    return None


def newest_in_log(table: delta.DeltaTable, column: str) -> datetime | None:
    """The column's largest value by the files' statistics; None when the log holds none, or
    holds text (bronze keeps the source's text, whose order need not be time's)."""
    actions = pl.DataFrame(table.get_add_actions(flatten=True))
    name = f"max.{column}"
    if name not in actions.columns or actions.is_empty():
        return None
    return _moment(actions.get_column(name).max())


def _table_health(
    lakehouse: LakehouseStorage, layer: str, name: str, contract: Contract | None
) -> TableHealth | None:
    table = delta.open_table(lakehouse.table_uri(layer, name))
    if table is None:
        return None
    newest = None
    if contract is not None and contract.freshness is not None and layer in ("bronze", "silver"):
        column = contract.freshness.column
        watermarked = layer == "bronze" and contract.watermark and contract.watermark.column == column
        newest = read_watermark(table, contract) if watermarked else newest_in_log(table, column)
    last = table.history(1)[0]
    return TableHealth(
        layer=layer,
        name=name,
        rows=delta.row_count(table),
        version=table.version(),
        committed=datetime.fromtimestamp(last["timestamp"] / 1000, UTC),
        newest=newest,
    )


def _rows_changed(instance: dg.DagsterInstance, tables: list[TableHealth]) -> list[tuple[str, str, str, int]]:
    keys = [dg.AssetKey([table.layer, table.name]) for table in tables]
    changed = []
    for key, event in instance.get_latest_materialization_events(keys).items():
        materialization = event.asset_materialization if event else None
        if materialization is None:
            continue
        for kind in ROW_CHANGES:
            value = materialization.metadata.get(f"rows_{kind}")
            if value is not None:
                changed.append((key.path[0], key.path[-1], kind, int(value.value)))  # type: ignore[arg-type]
    return changed


def _check_health(instance: dg.DagsterInstance, keys: Iterable[dg.AssetCheckKey]) -> list[CheckHealth]:
    return [
        CheckHealth(
            layer=key.asset_key.path[0],
            table=key.asset_key.path[-1],
            check=key.name,
            passed=evaluation.passed,
            severity=evaluation.severity.value.lower(),
            metadata={name: value.value for name, value in evaluation.metadata.items()},
        )
        for key, evaluation in last_evaluations(instance, keys).items()
    ]


def _durations(
    instance: dg.DagsterInstance, job: str, status: dg.DagsterRunStatus, limit: int | None, now: float
) -> list[float]:
    """Seconds each of the job's newest runs with this status took (or has taken so far)."""
    records = instance.get_run_records(dg.RunsFilter(job_name=job, statuses=[status]), limit=limit)
    return [
        (record.end_time or now) - record.start_time for record in records if record.start_time is not None
    ]


def _job_health(instance: dg.DagsterInstance) -> list[JobHealth]:
    now = time.time()
    jobs = sorted({record.dagster_run.job_name for record in instance.get_run_records(limit=RECENT_RUNS)})
    health = []
    for job in jobs:
        successes = _durations(instance, job, dg.DagsterRunStatus.SUCCESS, BASELINE_RUNS + 1, now)
        last = {"success": successes[0]} if successes else {}
        for status in (dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED):
            if durations := _durations(instance, job, status, 1, now):
                last[status.value.lower()] = durations[0]
        running = _durations(instance, job, dg.DagsterRunStatus.STARTED, None, now)
        before = successes[1:]
        comparable = len(before) >= MIN_BASELINE_RUNS and not job.startswith(IMPLICIT_JOB_PREFIX)
        health.append(
            JobHealth(
                job=job,
                last=last,
                baseline=statistics.median(before) if comparable else None,
                running=max(running, default=None),
            )
        )
    return health


def _landing_health(
    contracts: list[Contract], landing: LandingZone, lakehouse: LakehouseStorage
) -> list[LandingHealth]:
    health = []
    now_ns = time.time_ns()
    for contract in contracts:
        if contract.is_database:
            continue
        try:
            table = delta.open_table(lakehouse.table_uri("bronze", contract.name))
        except table_log.CorruptLog:
            continue  # reported as unreadable; its ledger cannot say which files it holds
        waiting = pending_files(contract, landing.location, table)
        oldest = min((seen.modified_ns for seen in waiting), default=None)
        health.append(
            LandingHealth(contract.name, len(waiting), None if oldest is None else (now_ns - oldest) / 1e9)
        )
    return health


def _slot_lag(
    contracts: list[Contract], source: SourceDatabase, lakehouse: LakehouseStorage
) -> dict[str, int]:
    lags = {}
    for contract in contracts:
        if not contract.is_cdc:
            continue
        try:
            lag = slot_lag(contract, source, lakehouse.table_uri("bronze", contract.name))
        except SourceError:
            continue  # the source is down: no figure rather than a wrong one
        if lag is not None:
            lags[contract.name] = lag
    return lags


def observe(
    instance: dg.DagsterInstance,
    contracts: list[Contract],
    check_keys: Iterable[dg.AssetCheckKey],
    lakehouse: LakehouseStorage,
    landing: LandingZone,
    source: SourceDatabase,
    now: datetime,
) -> Health:
    """The health of every table, check, job, landing dataset and replication slot now."""
    by_name = {contract.name: contract for contract in contracts}
    tables, unreadable = [], {}
    for layer, name in lakehouse.tables():
        # One broken log is a finding about that table, not a reason to report nothing.
        try:
            health = _table_health(lakehouse, layer, name, by_name.get(name))
        except table_log.CorruptLog as error:
            unreadable[layer, name] = str(error)
            continue
        if health is not None:
            tables.append(health)
    return Health(
        now=now,
        contracts=contracts,
        tables=tables,
        rows_changed=_rows_changed(instance, tables),
        checks=_check_health(instance, check_keys),
        jobs=_job_health(instance),
        landing=_landing_health(contracts, landing, lakehouse),
        slot_lag=_slot_lag(contracts, source, lakehouse),
        unreadable=unreadable,
    )


def landing_wait_limit() -> float:
    """How long a landing file may wait for its ingestion before it raises an alert."""
    return seconds("LAKEHOUSE_LANDING_MAX_WAIT_SECONDS")
