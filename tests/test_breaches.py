"""The health alert rules on small, made-up health readings of the library's tables: which
breaches each rule finds, and that each is alerted once when it starts and once when it ends."""

from datetime import UTC, datetime, timedelta
from pathlib import Path

from library import MEMBERS

from lakehouse.monitoring.breaches import SLOW_RUN_FACTOR, breaches, changes
from lakehouse.monitoring.health import CheckHealth, Health, JobHealth, LandingHealth, TableHealth
from lakehouse.sources.contract_files import load_contracts

NOW = datetime(2026, 11, 2, 12, 0, tzinfo=UTC)
FRESHNESS = "freshness: {column: updated_at, warn_after: 1h, error_after: 1d}\n"
WAIT_LIMIT = 3600.0


BROKEN = "bronze/loans: the Delta log cannot be read: 00000000000000000002.json: line 2 is not JSON"


def _health(
    tmp_path: Path, age: timedelta, passed: bool, last_run: float, waited: float | None, broken: bool = False
) -> Health:
    (tmp_path / "members.yaml").write_text(MEMBERS + FRESHNESS)
    silver = TableHealth("silver", "members", rows=2, version=3, committed=NOW, newest=NOW - age)
    return Health(
        now=NOW,
        contracts=load_contracts(tmp_path),
        tables=[
            silver,
            TableHealth("gold", "loans_daily", rows=1, version=1, committed=NOW - age, newest=None),
        ],
        rows_changed=[],
        checks=[CheckHealth("silver", "members", "unique", passed, "error", {})],
        jobs=[
            JobHealth("ingest", last={"success": last_run}, baseline=10.0, running=None),
            JobHealth("new_job", last={"success": 1000.0}, baseline=None, running=5000.0),
        ],
        landing=[LandingHealth("visits", 0 if waited is None else 2, waited)],
        slot_lag={},
        unreadable={("bronze", "loans"): BROKEN} if broken else {},
    )


def test_each_rule_finds_its_breach_and_nothing_else(tmp_path: Path) -> None:
    healthy = _health(tmp_path, timedelta(minutes=30), True, 10 * SLOW_RUN_FACTOR, WAIT_LIMIT)
    assert breaches(healthy, WAIT_LIMIT) == {}

    found = breaches(
        _health(tmp_path, timedelta(days=2), False, 10 * SLOW_RUN_FACTOR + 1, WAIT_LIMIT + 1, broken=True),
        WAIT_LIMIT,
    )
    # Stale past both SLAs (gold has none); the check; the slow run (a job with no usual
    # duration never is); the waiting files; the table whose log is broken.
    assert sorted(found) == [
        "check_failed:silver/members:unique",
        "landing_waiting:visits",
        "run_slow:ingest",
        "table_stale:error:silver/members",
        "table_stale:warn:silver/members",
        "table_unreadable:bronze/loans",
    ]
    assert found["table_unreadable:bronze/loans"].message == BROKEN
    warned = breaches(_health(tmp_path, timedelta(hours=2), True, 1, None), WAIT_LIMIT)
    assert list(warned) == ["table_stale:warn:silver/members"]


def test_a_breach_is_alerted_once_when_it_starts_and_once_when_it_ends(tmp_path: Path) -> None:
    stale = breaches(_health(tmp_path, timedelta(hours=2), True, 1, None), WAIT_LIMIT)
    failing = breaches(_health(tmp_path, timedelta(hours=2), False, 1, None), WAIT_LIMIT)

    sent, alerted = changes({}, stale, NOW)
    assert [(alert["kind"], alert["status"]) for alert in sent] == [("table_stale", "firing")]
    assert changes(alerted, stale, NOW) == ([], alerted)

    sent, alerted = changes(alerted, failing, NOW)
    assert [(alert["kind"], alert["status"]) for alert in sent] == [("check_failed", "firing")]

    sent, alerted = changes(alerted, {}, NOW + timedelta(hours=1))
    assert sorted((alert["kind"], alert["status"]) for alert in sent) == [
        ("check_failed", "resolved"),
        ("table_stale", "resolved"),
    ]
    assert all(alert["at"] == (NOW + timedelta(hours=1)).isoformat() for alert in sent)
    assert alerted == {}
