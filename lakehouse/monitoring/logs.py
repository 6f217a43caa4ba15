"""Log lines a log search can group by: with `LAKEHOUSE_LOG_FORMAT=json`, every line a run logs
is one JSON object with the run id (the correlation id across its steps and processes), the job,
the step, and for a materialisation its asset, table, rows and duration."""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

import dagster as dg

from lakehouse.settings import SettingsError, setting

FORMATS = ("text", "json")
# What a materialisation's metadata says of its rows and duration, as the line's fields.
ROW_FIELDS = {"dagster/row_count": "rows", "duration_seconds": "duration_seconds"}


def _event_fields(event: dg.DagsterEvent) -> dict[str, Any]:
    fields: dict[str, Any] = {"event": event.event_type_value}
    if event.asset_key is not None:
        fields["asset"] = fields["table"] = event.asset_key.to_user_string()
    if event.is_step_success:
        fields["duration_seconds"] = round(event.event_specific_data.duration_ms / 1000, 3)
    if event.is_step_materialization:
        metadata = event.step_materialization_data.materialization.metadata
        for name, value in metadata.items():
            if name in ROW_FIELDS:
                fields[ROW_FIELDS[name]] = value.value
            elif name.startswith("rows_"):
                fields[name] = value.value
    return fields


class JsonLines(logging.Formatter):
    """One JSON object per record. Dagster attaches what the record is about (run, step, event)
    to each record it logs as `dagster_meta`: tests/test_monitoring.py fails if it stops."""

    def format(self, record: logging.LogRecord) -> str:
        about = getattr(record, "dagster_meta", None) or {}
        line: dict[str, Any] = {
            "at": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname.lower(),
            "message": about.get("orig_message") or record.getMessage(),
            "run_id": about.get("run_id"),
            "job": about.get("job_name"),
            "step": about.get("step_key"),
        }
        event = about.get("dagster_event")
        if event is not None:
            line.update(_event_fields(event))
        if record.exc_info:
            line["error"] = self.formatException(record.exc_info)
        return json.dumps({name: value for name, value in line.items() if value is not None}, default=str)


@dg.logger(
    config_schema={"log_level": dg.Field(str, is_required=False, default_value="DEBUG")},
    description="One JSON object per line on stderr: run id, job, step, asset, table, rows, duration.",
)
def json_lines(init_context: dg.InitLoggerContext) -> logging.Logger:
    logger = logging.Logger("lakehouse", level=init_context.logger_config["log_level"])
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLines())
    logger.addHandler(handler)
    return logger


def json_logs() -> bool:
    form = setting("LAKEHOUSE_LOG_FORMAT")
    if form not in FORMATS:
        raise SettingsError(f"LAKEHOUSE_LOG_FORMAT must be text or json, not '{form}'")
    return form == "json"


def run_loggers() -> dict[str, dg.LoggerDefinition]:
    """The runs' console logger: Dagster's readable text, or JSON lines (`LAKEHOUSE_LOG_FORMAT`)."""
    return {"console": json_lines} if json_logs() else {}


def run_config() -> dict[str, Any] | None:
    """The run config that turns the JSON console logger on: Dagster starts a run's loggers only
    when its run config names them, so every job of the lakehouse carries this by default, and a
    run of an asset selection (`dagster asset materialize`, the UI's Materialize) takes it as
    `--config-json '{"loggers": {"console": {}}}'` or in the launchpad."""
    return {"loggers": {"console": {}}} if json_logs() else None
