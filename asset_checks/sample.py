"""What a failing check shows in the UI: a markdown sample of the rows at fault."""

import dagster as dg
import polars as pl

SAMPLE_ROWS = 10


def sample(frame: pl.DataFrame) -> dg.MetadataValue:
    """Up to ten rows as a markdown table, so the UI shows what is wrong."""
    head = frame.head(SAMPLE_ROWS)
    header = "| " + " | ".join(head.columns) + " |\n|" + " --- |" * len(head.columns)
    body = "\n".join("| " + " | ".join(str(value) for value in row) + " |" for row in head.iter_rows())
    return dg.MetadataValue.md(f"{header}\n{body}")
