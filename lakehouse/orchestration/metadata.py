"""What every materialisation and check reports in the UI about its Delta table."""

from __future__ import annotations

import time
from typing import Any

import dagster as dg
from deltalake import DeltaTable

from lakehouse.storage.delta import arrow_schema, footprint, row_count


def elapsed(started: float) -> dict[str, dg.MetadataValue]:
    """The step's duration as metadata, so the UI plots it per materialisation."""
    return {"duration_seconds": dg.MetadataValue.float(round(time.monotonic() - started, 3))}


def table_metadata(table: DeltaTable | None) -> dict[str, Any]:
    """What every materialisation reports about its table (None: not created yet, no rows)."""
    if table is None:
        return {"dagster/row_count": 0, "delta_files": 0, "delta_bytes": 0}
    schema = arrow_schema(table)
    files, size = footprint(table)
    return {
        "dagster/row_count": row_count(table),
        "delta_files": files,
        "delta_bytes": size,
        "delta_version": table.version(),
        "dagster/uri": table.table_uri,
        "dagster/column_schema": dg.TableSchema(
            columns=[dg.TableColumn(field.name, str(field.type)) for field in schema]
        ),
    }
