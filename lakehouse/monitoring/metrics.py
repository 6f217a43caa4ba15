"""The lakehouse's metrics for Prometheus (OpenMetrics), computed from its health at each scrape."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import dagster as dg
from prometheus_client import make_wsgi_app
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import ThreadingWSGIServer
from prometheus_client.registry import Collector, CollectorRegistry

from asset_checks.slot_lag import max_slot_lag_bytes
from lakehouse.monitoring.health import Health, landing_wait_limit, observe
from lakehouse.resources import LakehouseStorage, LandingZone, SourceDatabase
from lakehouse.sources.contract import Contract


def _gauge(
    name: str, documentation: str, labels: list[str], samples: list[tuple[list[str], float]]
) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, documentation, labels=labels)
    for values, value in samples:
        family.add_metric(values, value)
    return family


def families(health: Health, landing_wait_limit: float, slot_lag_limit: int) -> list[GaugeMetricFamily]:
    """Every metric of the lakehouse's health (docs/operations.md lists them with their meaning)."""
    slas = [
        ([contract.name, level], limit.total_seconds())
        for contract in health.contracts
        if contract.freshness is not None
        for level, limit in (
            ("warn", contract.freshness.warn_after),
            ("error", contract.freshness.error_after),
        )
    ]
    return [
        _gauge(
            "lakehouse_table_rows",
            "Rows in the table's current version, from its Delta log.",
            ["layer", "table"],
            [([table.layer, table.name], table.rows) for table in health.tables],
        ),
        _gauge(
            "lakehouse_table_version",
            "The table's current Delta version.",
            ["layer", "table"],
            [([table.layer, table.name], table.version) for table in health.tables],
        ),
        _gauge(
            "lakehouse_table_unreadable",
            "1 for a table whose Delta log cannot be read (`lakehouse table check` names the file).",
            ["layer", "table"],
            [([layer, name], 1) for layer, name in health.unreadable],
        ),
        _gauge(
            "lakehouse_table_freshness_seconds",
            "Age of the table's newest data by its contract's freshness column, or of its last commit.",
            ["layer", "table"],
            [([table.layer, table.name], table.age(health.now)) for table in health.tables],
        ),
        _gauge(
            "lakehouse_table_freshness_sla_seconds",
            "The contract's freshness SLA: the age past which its bronze and silver tables warn or fail.",
            ["table", "level"],
            slas,
        ),
        _gauge(
            "lakehouse_rows_changed",
            "Rows the table's last materialisation changed, by kind.",
            ["layer", "table", "kind"],
            [([layer, table, kind], rows) for layer, table, kind, rows in health.rows_changed],
        ),
        _gauge(
            "lakehouse_quarantine_ratio",
            "Share of the bronze rows of silver's last load that went to quarantine.",
            ["table"],
            [([table], ratio) for table, ratio in health.quarantine_ratio().items()],
        ),
        _gauge(
            "lakehouse_check_failed",
            "1 when the check's latest evaluation failed, 0 when it passed.",
            ["layer", "table", "check", "severity"],
            [
                ([check.layer, check.table, check.check, check.severity], 0 if check.passed else 1)
                for check in health.checks
            ],
        ),
        _gauge(
            "lakehouse_run_duration_seconds",
            "Seconds the job's newest finished run with this status took.",
            ["dagster_job", "status"],
            [([job.job, status], seconds) for job in health.jobs for status, seconds in job.last.items()],
        ),
        _gauge(
            "lakehouse_run_duration_median_seconds",
            "Median seconds of the job's last ten successful runs before its newest one.",
            ["dagster_job"],
            [([job.job], job.baseline) for job in health.jobs if job.baseline is not None],
        ),
        _gauge(
            "lakehouse_run_running_seconds",
            "Seconds the job's longest unfinished run has been running.",
            ["dagster_job"],
            [([job.job], job.running) for job in health.jobs if job.running is not None],
        ),
        _gauge(
            "lakehouse_landing_files_waiting",
            "Landing files bronze has not ingested.",
            ["dataset"],
            [([landing.dataset], landing.waiting) for landing in health.landing],
        ),
        _gauge(
            "lakehouse_landing_oldest_waiting_seconds",
            "Seconds since the oldest landing file bronze has not ingested last changed (0: none waits).",
            ["dataset"],
            [([landing.dataset], landing.oldest or 0) for landing in health.landing],
        ),
        _gauge(
            "lakehouse_landing_max_wait_seconds",
            "How long a landing file may wait for its ingestion (LAKEHOUSE_LANDING_MAX_WAIT_SECONDS).",
            [],
            [([], landing_wait_limit)],
        ),
        _gauge(
            "lakehouse_cdc_slot_lag_bytes",
            "Bytes of WAL the change-captured table's replication slot keeps on the source.",
            ["table"],
            [([table], lag) for table, lag in health.slot_lag.items()],
        ),
        _gauge(
            "lakehouse_cdc_slot_lag_max_bytes",
            "The slot lag past which the slot's check fails (LAKEHOUSE_CDC_MAX_SLOT_LAG_BYTES).",
            [],
            [([], slot_lag_limit)],
        ),
    ]


class HealthCollector(Collector):
    """Observes the health anew at each scrape."""

    def __init__(self, observe: Callable[[], Health], landing_wait_limit: float, slot_lag_limit: int) -> None:
        self._observe = observe
        self._landing_wait_limit = landing_wait_limit
        self._slot_lag_limit = slot_lag_limit

    def collect(self) -> Iterator[GaugeMetricFamily]:
        yield from families(self._observe(), self._landing_wait_limit, self._slot_lag_limit)


def health_collector(
    instance: dg.DagsterInstance,
    contracts: list[Contract],
    check_keys: list[dg.AssetCheckKey],
    lakehouse: LakehouseStorage,
    landing: LandingZone,
    source: SourceDatabase,
) -> HealthCollector:
    """The collector of the lakehouse's health as of each scrape's moment."""
    return HealthCollector(
        lambda: observe(instance, contracts, check_keys, lakehouse, landing, source, datetime.now(UTC)),
        landing_wait_limit(),
        max_slot_lag_bytes(),
    )


def serve(collector: HealthCollector, host: str, port: int) -> WSGIServer:
    """A server of the metrics at http://host:port/metrics, listening; `serve_forever` answers."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return make_server(host, port, make_wsgi_app(registry), ThreadingWSGIServer, handler_class=_SilentHandler)


class _SilentHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        """Prometheus scrapes every few seconds: no line per request."""
