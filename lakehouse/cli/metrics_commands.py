"""`lakehouse metrics serve`: the pipeline's health as OpenMetrics, for Prometheus to scrape."""

from __future__ import annotations

import argparse
import os

from lakehouse.settings import SettingsError, setting


def _port() -> int:
    value = setting("LAKEHOUSE_METRICS_PORT")
    if not value.isdigit() or not 0 < int(value) < 65536:
        raise SettingsError(f"LAKEHOUSE_METRICS_PORT must be a port number (1 to 65535), not '{value}'")
    return int(value)


def metrics_serve(args: argparse.Namespace) -> int:
    if not os.environ.get("DAGSTER_HOME"):
        raise SettingsError("the metrics read the Dagster instance: set DAGSTER_HOME as the daemon has it")
    host = args.host or setting("LAKEHOUSE_METRICS_HOST")
    port = args.port or _port()
    # The definitions load the contracts and every check, dbt's tests among them: seconds.
    import dagster as dg

    from lakehouse.definitions import check_keys, contracts
    from lakehouse.monitoring.metrics import health_collector, serve
    from lakehouse.resources import LakehouseStorage, LandingZone, SourceDatabase

    lakehouse = LakehouseStorage(root=setting("LAKEHOUSE_ROOT"))
    landing = LandingZone(path=setting("LAKEHOUSE_LANDING"))
    source = SourceDatabase(url=setting("LAKEHOUSE_SOURCE_URL"))
    with dg.DagsterInstance.get() as instance:
        collector = health_collector(instance, contracts, check_keys, lakehouse, landing, source)
        try:
            server = serve(collector, host, port)
        except OSError as error:
            raise SettingsError(f"cannot listen on {host}:{port}: {error.strerror or error}") from None
        print(f"lakehouse metrics on http://{host}:{port}/metrics (Ctrl-C stops)", flush=True)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass
        finally:
            server.server_close()
    return 0
