"""What a failing check shows in the UI: a sample of the rows at fault."""

import dagster as dg
import polars as pl

SAMPLE_ROWS = 10


def sample(frame: pl.DataFrame, rows: int = SAMPLE_ROWS) -> dg.MetadataValue:
    """The first `rows` rows (ten by default) as a table the UI renders with its columns."""
    head = frame.head(rows)
    return dg.MetadataValue.table(
        records=[
            dg.TableRecord({k: _plain(v) for k, v in row.items()}) for row in head.iter_rows(named=True)
        ],
        schema=dg.TableSchema(
            columns=[dg.TableColumn(name, str(dtype)) for name, dtype in head.schema.items()]
        ),
    )


def _plain(value: object) -> str | int | float | bool | None:
    # A table record holds plain values only: timestamps, decimals and the like go as text.
    return value if value is None or isinstance(value, str | int | float | bool) else str(value)
