"""Writing the shop into its database: the same statements for SQLite and PostgreSQL."""

from __future__ import annotations

from typing import Any

import polars as pl
import polars.selectors as cs

from lakehouse.source import SQLITE_TIMESTAMP_FORMAT, SourceDatabase

TABLES = ("order_items", "orders", "products", "customers")  # drop order: children first

# {ts}, {money} and {int} differ between the dialects. order_items.product_id has no foreign
# key on purpose: the catalogue is maintained elsewhere, so items can refer to products the
# shop database does not know (one of the defects the lakehouse has to handle).
DDL = (
    """CREATE TABLE customers (
        customer_id {int} PRIMARY KEY, first_name TEXT NOT NULL, last_name TEXT NOT NULL,
        email TEXT NOT NULL, phone TEXT, street_address TEXT, city TEXT NOT NULL,
        country TEXT NOT NULL, created_at {ts} NOT NULL, updated_at {ts} NOT NULL)""",
    """CREATE TABLE products (
        product_id {int} PRIMARY KEY, sku TEXT NOT NULL UNIQUE, name TEXT NOT NULL,
        category TEXT NOT NULL, price {money} NOT NULL,
        created_at {ts} NOT NULL, updated_at {ts} NOT NULL)""",
    """CREATE TABLE orders (
        order_id {int} PRIMARY KEY, customer_id {int} NOT NULL REFERENCES customers (customer_id),
        status TEXT NOT NULL, total_amount {money} NOT NULL, currency TEXT NOT NULL,
        created_at {ts} NOT NULL, updated_at {ts} NOT NULL)""",
    """CREATE TABLE order_items (
        order_item_id {int} PRIMARY KEY, order_id {int} NOT NULL REFERENCES orders (order_id),
        product_id {int} NOT NULL, quantity {int} NOT NULL, unit_price {money} NOT NULL,
        created_at {ts} NOT NULL, updated_at {ts} NOT NULL)""",
    "CREATE INDEX customers_updated_at ON customers (updated_at)",
    "CREATE INDEX products_updated_at ON products (updated_at)",
    "CREATE INDEX orders_updated_at ON orders (updated_at)",
    "CREATE INDEX orders_status ON orders (status)",
    "CREATE INDEX order_items_updated_at ON order_items (updated_at)",
)
TYPES = {
    "sqlite": {"int": "INTEGER", "ts": "TEXT", "money": "REAL"},
    "postgresql": {"int": "BIGINT", "ts": "TIMESTAMPTZ", "money": "DOUBLE PRECISION"},
}


def _for_dialect(frame: pl.DataFrame, dialect: str) -> Any:
    """SQLite has no timestamp type: timestamps go in as fixed-format UTC text."""
    if dialect == "sqlite":
        frame = frame.with_columns(
            cs.datetime().dt.convert_time_zone("UTC").dt.strftime(SQLITE_TIMESTAMP_FORMAT)
        )
    return frame.to_arrow(compat_level=pl.CompatLevel.oldest())


def recreate_schema(source: SourceDatabase) -> None:
    """Drop the shop's tables if present and create them empty."""
    if source.dialect == "sqlite":
        source.sqlite_path.parent.mkdir(parents=True, exist_ok=True)
        source.sqlite_path.unlink(missing_ok=True)
        source.sqlite_path.touch()
    with source.connect() as connection:
        cursor = connection.cursor()
        cascade = " CASCADE" if source.dialect == "postgresql" else ""
        for table in TABLES:
            cursor.execute(f"DROP TABLE IF EXISTS {table}{cascade}")
        for statement in DDL:
            cursor.execute(statement.format(**TYPES[source.dialect]))
        connection.commit()


def add_column(source: SourceDatabase, table: str, column: str) -> None:
    with source.connect() as connection:
        connection.cursor().execute(f"ALTER TABLE {table} ADD COLUMN {column} TEXT")
        connection.commit()


def insert(source: SourceDatabase, table: str, frame: pl.DataFrame) -> None:
    if frame.is_empty():
        return
    with source.connect() as connection:
        connection.cursor().adbc_ingest(table, _for_dialect(frame, source.dialect), mode="append")
        connection.commit()


def update(source: SourceDatabase, table: str, key: str, frame: pl.DataFrame) -> None:
    """Set the frame's columns on the rows with the same key, in one transaction."""
    if frame.is_empty():
        return
    stage = f"stage_{table}"
    assignments = ", ".join(f"{c} = {stage}.{c}" for c in frame.columns if c != key)
    with source.connect() as connection:
        cursor = connection.cursor()
        cursor.execute(f"DROP TABLE IF EXISTS {stage}")
        cursor.adbc_ingest(stage, _for_dialect(frame, source.dialect), mode="create")
        cursor.execute(f"UPDATE {table} SET {assignments} FROM {stage} WHERE {table}.{key} = {stage}.{key}")
        cursor.execute(f"DROP TABLE {stage}")
        connection.commit()


def read(source: SourceDatabase, query: str) -> pl.DataFrame:
    """A query's result with timestamp text from SQLite parsed back into UTC datetimes."""
    frame = source.read(query)
    text_times = [c for c in frame.columns if c.endswith("_at") and frame.schema[c] == pl.String]
    return frame.with_columns(
        pl.col(c).str.to_datetime(SQLITE_TIMESTAMP_FORMAT, time_unit="us").dt.convert_time_zone("UTC")
        for c in text_times
    )
