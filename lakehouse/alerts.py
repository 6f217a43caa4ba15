"""Alerts: a JSON line in the alerts log, and a POST to a webhook when one is configured."""

from __future__ import annotations

import json
import random
import time
import urllib.error
import urllib.parse
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import dagster as dg

logger = dg.get_dagster_logger()


class AlertSink(dg.ConfigurableResource):
    """Where alerts go: always a line in `log_path`; also a JSON POST to `webhook` when set,
    retried with exponential backoff and jitter. Sending never raises: an alert that cannot be
    delivered is logged, and the log line is there whatever the webhook does."""

    log_path: str
    webhook: str = ""
    attempts: int = 3
    backoff_seconds: float = 1.0
    timeout_seconds: float = 5.0

    def send(self, alert: dict[str, Any]) -> bool:
        """Record the alert; True when every configured destination took it."""
        recorded = self._append(alert)
        return self._post(alert) and recorded if self.webhook else recorded

    def _append(self, alert: dict[str, Any]) -> bool:
        path = Path(self.log_path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("a") as log:
                log.write(json.dumps(alert, sort_keys=True) + "\n")
        except OSError as error:
            logger.error(f"could not write the alert to {path}: {error}")
            return False
        return True

    def _post(self, alert: dict[str, Any]) -> bool:
        body = json.dumps(alert).encode()
        for attempt in range(1, self.attempts + 1):
            request = urllib.request.Request(
                self.webhook, data=body, headers={"Content-Type": "application/json"}, method="POST"
            )
            try:
                with urllib.request.urlopen(request, timeout=self.timeout_seconds):
                    return True
            except (urllib.error.URLError, OSError, ValueError) as error:
                # The URL may carry a token: name the host only.
                host = urllib.parse.urlparse(self.webhook).hostname
                logger.warning(f"alert webhook at {host}: attempt {attempt}/{self.attempts} failed: {error}")
            if attempt < self.attempts:
                time.sleep(self.backoff_seconds * 2 ** (attempt - 1) * random.uniform(0.5, 1.5))
        return False


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
