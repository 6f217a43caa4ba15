"""Alerts: a JSON line in the alerts log, and a POST to a webhook when one is configured."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import dagster as dg

logger = dg.get_dagster_logger()


def run_failure_alert(run: dg.DagsterRun, failed_steps: list[str], message: str) -> dict[str, Any]:
    """The alert for a failed run, whoever noticed the failure."""
    return {
        "at": datetime.now(UTC).isoformat(),
        "kind": "run_failure",
        "run_id": run.run_id,
        "job": run.job_name,
        "failed_steps": failed_steps,
        "message": message,
    }
