"""The alert rules on the lakehouse's health, and the alerts their changes raise: each breach
alerted once when it starts and once when it ends.

The same rules ship for Prometheus in deploy/prometheus/rules.yml, over the metrics of
`lakehouse.monitoring.metrics`; a deployment uses either.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from lakehouse.monitoring.health import Health, TableHealth
from lakehouse.sources.contract import Freshness

# A run this many times its job's usual duration is slow.
SLOW_RUN_FACTOR = 3


@dataclass(frozen=True)
class Breach:
    """A rule broken now. `id` names it for as long as it lasts: the same table, check, job or
    dataset breaking the same rule is the same breach."""

    id: str
    kind: str
    message: str
    details: dict[str, Any]


def _stale(table: TableHealth, freshness: Freshness, now: datetime) -> list[Breach]:
    age = table.age(now)
    name = f"{table.layer}/{table.name}"
    return [
        Breach(
            id=f"table_stale:{level}:{name}",
            kind="table_stale",
            message=f"{name}: its newest {freshness.column} is {age / 3600:.1f} h old, "
            f"past its {level} SLA of {limit.total_seconds() / 3600:g} h",
            details={"table": name, "level": level, "age_seconds": round(age)},
        )
        for level, limit in (("warn", freshness.warn_after), ("error", freshness.error_after))
        if age > limit.total_seconds()
    ]


def _stale_tables(health: Health) -> list[Breach]:
    return [
        breach
        for contract in health.contracts
        if contract.freshness is not None
        for layer in ("bronze", "silver")
        if (table := health.table(layer, contract.name)) is not None
        for breach in _stale(table, contract.freshness, health.now)
    ]


def _failed_checks(health: Health) -> list[Breach]:
    found = []
    for check in health.checks:
        if check.passed:
            continue
        table = f"{check.layer}/{check.table}"
        found.append(
            Breach(
                id=f"check_failed:{table}:{check.check}",
                kind="check_failed",
                message=f"check {check.check} on {table} failed ({check.severity})",
                details={"table": table, "check": check.check, "severity": check.severity},
            )
        )
    return found


def _slow_runs(health: Health) -> list[Breach]:
    found = []
    for job in health.jobs:
        if job.baseline is None:
            continue
        limit = SLOW_RUN_FACTOR * job.baseline
        states = (("is running for", job.running), ("took", job.last.get("success")))
        slow = next(
            ((state, seconds) for state, seconds in states if seconds is not None and seconds > limit), None
        )
        if slow is None:
            continue
        state, seconds = slow
        found.append(
            Breach(
                id=f"run_slow:{job.job}",
                kind="run_slow",
                message=f"a run of {job.job} {state} {seconds:.0f} s, more than {SLOW_RUN_FACTOR} "
                f"times the median of its last successful runs ({job.baseline:.0f} s)",
                details={"job": job.job, "seconds": round(seconds, 1), "median_seconds": job.baseline},
            )
        )
    return found


def _waiting_files(health: Health, limit: float) -> list[Breach]:
    found = []
    for landing in health.landing:
        if landing.oldest is None or landing.oldest <= limit:
            continue
        found.append(
            Breach(
                id=f"landing_waiting:{landing.dataset}",
                kind="landing_waiting",
                message=f"{landing.waiting} {landing.dataset} landing file(s) not ingested, the oldest "
                f"for {landing.oldest:.0f} s (LAKEHOUSE_LANDING_MAX_WAIT_SECONDS={limit:g})",
                details={
                    "dataset": landing.dataset,
                    "files": landing.waiting,
                    "oldest_seconds": landing.oldest,
                },
            )
        )
    return found


def _unreadable_tables(health: Health) -> list[Breach]:
    return [
        Breach(
            id=f"table_unreadable:{layer}/{name}",
            kind="table_unreadable",
            message=reason,
            details={"table": f"{layer}/{name}"},
        )
        for (layer, name), reason in health.unreadable.items()
    ]


def breaches(health: Health, landing_wait_limit: float) -> dict[str, Breach]:
    """Every rule broken now, by breach id."""
    found = [
        *_unreadable_tables(health),
        *_stale_tables(health),
        *_failed_checks(health),
        *_slow_runs(health),
        *_waiting_files(health, landing_wait_limit),
    ]
    return {breach.id: breach for breach in found}


def changes(
    alerted: dict[str, dict[str, Any]], current: dict[str, Breach], at: datetime
) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]]]:
    """The alerts to send, given the breaches already alerted and those found now: one `firing`
    for each new breach, one `resolved` for each that ended; and the breaches alerted after them."""
    sent = []
    for breach_id, breach in current.items():
        if breach_id not in alerted:
            sent.append(
                {
                    "at": at.isoformat(),
                    "kind": breach.kind,
                    "status": "firing",
                    "breach": breach_id,
                    "message": breach.message,
                    **breach.details,
                }
            )
    for breach_id, alert in alerted.items():
        if breach_id not in current:
            sent.append(
                {
                    **alert,
                    "at": at.isoformat(),
                    "status": "resolved",
                    "message": f"resolved: {alert['message']}",
                }
            )
    still = {breach_id: alert for breach_id, alert in alerted.items() if breach_id in current}
    return sent, {**still, **{alert["breach"]: alert for alert in sent if alert["status"] == "firing"}}
