"""Configuration from environment variables, each with a working local default."""

from __future__ import annotations

import os
from pathlib import Path

import dagster as dg

DEFAULTS = {
    "LAKEHOUSE_ROOT": "./data/lakehouse",
    "LAKEHOUSE_SOURCE_URL": "sqlite:///./data/source/shop.db",
    "LAKEHOUSE_LANDING": "./data/landing",
    "LAKEHOUSE_WAREHOUSE": "./data/warehouse.duckdb",
    "LAKEHOUSE_CONTRACTS": str(Path(__file__).parent / "contracts"),
    "LAKEHOUSE_ALERTS": "./data/alerts.jsonl",
    "LAKEHOUSE_ALERT_WEBHOOK": "",
    "LAKEHOUSE_PII_SALT": "lakehouse-development-salt-do-not-use-in-production",
}


def setting(name: str) -> str:
    """The variable's value, or its documented default (empty: not configured)."""
    return os.environ.get(name) or DEFAULTS[name]


def resource_value(name: str) -> str | dg.EnvVar:
    """An `EnvVar` when the variable is set, so the UI shows its name and never its value
    (the source URL may hold a password); the default otherwise."""
    return dg.EnvVar(name) if os.environ.get(name) else DEFAULTS[name]
