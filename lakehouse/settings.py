"""Configuration from environment variables, each with a working local default.

`LAKEHOUSE_DEPLOYMENT` is the one switch between the local default and a shared deployment:
`shared` refuses every local default, so a deployment can never silently write to ./data, hash
PII with the development salt or lose its alerts (see deploy/shared.env.example).
"""

from __future__ import annotations

import os
from pathlib import Path

import dagster as dg

DEPLOYMENTS = ("local", "shared")
# What a shared deployment must set: where data lives and comes from, where Dagster keeps its
# history (read by dagster.yaml), where alerts go, and the secret salt.
SHARED_REQUIRED = (
    "LAKEHOUSE_ROOT",
    "LAKEHOUSE_SOURCE_URL",
    "LAKEHOUSE_LANDING",
    "LAKEHOUSE_WAREHOUSE",
    "LAKEHOUSE_INSTANCE_DB",
    "LAKEHOUSE_ALERT_WEBHOOK",
    "LAKEHOUSE_PII_SALT",
)

DEFAULTS = {
    "LAKEHOUSE_ROOT": "./data/lakehouse",
    "LAKEHOUSE_SOURCE_URL": "sqlite:///./data/source/shop.db",
    "LAKEHOUSE_LANDING": "./data/landing",
    "LAKEHOUSE_WAREHOUSE": "./data/warehouse.duckdb",
    "LAKEHOUSE_CONTRACTS": str(Path(__file__).parent / "contracts"),
    "LAKEHOUSE_ALERTS": "./data/alerts.jsonl",
    "LAKEHOUSE_LANDING_POLL_SECONDS": "30",
    "LAKEHOUSE_LANDING_SETTLE_SECONDS": "10",
    "LAKEHOUSE_LANDING_RETRY_SECONDS": "5",
    "LAKEHOUSE_REUSE_CHECK_PASSES": "true",
    # How often running runs and the daemon look for runs whose process is gone: a dead run holds
    # the queue and its pool slots until then.
    "LAKEHOUSE_DEAD_RUN_SWEEP_SECONDS": "30",
    # Cron expressions in UTC. Maintenance at half past, clear of the hourly ingest and the daily
    # transform, whose commits would race it.
    "LAKEHOUSE_INGEST_SCHEDULE": "0 * * * *",
    "LAKEHOUSE_TRANSFORM_SCHEDULE": "0 2 * * *",
    "LAKEHOUSE_MAINTENANCE_SCHEDULE": "30 3 * * 0",
    # The first day the `backfill_event_days` job offers (its daily partitions end today).
    "LAKEHOUSE_BACKFILL_FIRST_DAY": "2024-01-01",
    "LAKEHOUSE_ALERT_WEBHOOK": "",
    # Where a run's steps execute: in_process or celery (lakehouse/orchestration/executors.py).
    "LAKEHOUSE_EXECUTOR": "in_process",
    "LAKEHOUSE_CELERY_BROKER": "redis://127.0.0.1:6379/0",
    # Past this much WAL kept by a change-captured table's slot (1 GiB), its check fails and alerts.
    "LAKEHOUSE_CDC_MAX_SLOT_LAG_BYTES": str(2**30),
    "LAKEHOUSE_PII_SALT": "lakehouse-development-salt-do-not-use-in-production",
    # Pipeline health (docs/operations.md): the metrics endpoint, how often the daemon looks for
    # breaches to alert, how long a landing file may wait, and the log lines' form (text or json).
    "LAKEHOUSE_METRICS_HOST": "127.0.0.1",
    "LAKEHOUSE_METRICS_PORT": "9464",
    "LAKEHOUSE_HEALTH_POLL_SECONDS": "60",
    "LAKEHOUSE_LANDING_MAX_WAIT_SECONDS": "3600",
    "LAKEHOUSE_LOG_FORMAT": "text",
}


class SettingsError(RuntimeError):
    """The environment does not describe a usable deployment."""


def check_deployment() -> str:
    """The deployment named by `LAKEHOUSE_DEPLOYMENT`, once its required variables are set."""
    deployment = os.environ.get("LAKEHOUSE_DEPLOYMENT") or "local"
    if deployment not in DEPLOYMENTS:
        raise SettingsError(f"LAKEHOUSE_DEPLOYMENT must be local or shared, not '{deployment}'")
    if deployment == "shared":
        missing = [name for name in SHARED_REQUIRED if not os.environ.get(name)]
        if missing:
            raise SettingsError(
                f"LAKEHOUSE_DEPLOYMENT=shared needs {', '.join(missing)} set "
                "(no local defaults in a shared deployment; see deploy/shared.env.example)"
            )
        if os.environ["LAKEHOUSE_PII_SALT"] == DEFAULTS["LAKEHOUSE_PII_SALT"]:
            raise SettingsError(
                "LAKEHOUSE_PII_SALT is the development salt: a shared deployment needs a secret"
            )
    return deployment


def setting(name: str) -> str:
    """The variable's value, or its documented default (empty: not configured)."""
    return os.environ.get(name) or DEFAULTS[name]


def seconds(name: str) -> float:
    """A setting that is a number of seconds, 0 or more."""
    value = setting(name)
    try:
        parsed = float(value)
    except ValueError:
        parsed = -1.0
    if not parsed >= 0:  # also refuses NaN
        raise SettingsError(f"{name} must be a number of seconds (0 or more), not '{value}'")
    return parsed


def resource_value(name: str) -> str | dg.EnvVar:
    """An `EnvVar` when the variable is set, so the UI shows its name and never its value
    (the source URL may hold a password); the default otherwise."""
    return dg.EnvVar(name) if os.environ.get(name) else DEFAULTS[name]
