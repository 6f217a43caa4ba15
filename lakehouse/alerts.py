"""Alerts: a JSON line in the alerts log, and a POST to a webhook when one is configured."""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import dagster as dg
import tenacity

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
        # The URL may carry a token: name the host only.
        host = urllib.parse.urlparse(self.webhook).hostname

        def post() -> None:
            request = urllib.request.Request(
                self.webhook, data=body, headers={"Content-Type": "application/json"}, method="POST"
            )
            with urllib.request.urlopen(request, timeout=self.timeout_seconds):
                pass

        def failed(attempt: tenacity.RetryCallState) -> None:
            error = attempt.outcome.exception() if attempt.outcome else None
            logger.warning(
                f"alert webhook at {host}: attempt {attempt.attempt_number}/{self.attempts} failed: {error}"
            )

        retrying = tenacity.Retrying(
            stop=tenacity.stop_after_attempt(self.attempts),
            wait=tenacity.wait_random_exponential(self.backoff_seconds),
            retry=tenacity.retry_if_exception_type((urllib.error.URLError, OSError, ValueError)),
            after=failed,
            retry_error_callback=lambda _attempt: False,
        )
        return retrying(post) is None


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
