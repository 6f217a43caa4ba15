"""Writing the shop into its database: the same statements for SQLite and PostgreSQL.

The demo only ever builds, rebuilds or advances a database it created itself: one with no
tables yet, or one holding its marker table (written in the same transaction as the shop's
tables). Any other database is a user's, and the demo leaves it exactly as it is.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import polars as pl
import polars.selectors as cs

from lakehouse.resources import SourceDatabase
from lakehouse.sources.timestamps import SQLITE_TIMESTAMP_FORMAT

TABLES = ("order_items", "orders", "products", "customers")  # drop order: children first
# The marker: its one row names the demo (the id its landing manifest carries too).
MARKER_TABLE = "lakehouse_demo"
SQLITE_HEADER = b"SQLite format 3\x00"

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


class NotADemoError(Exception):
    """The source is not a database the demo created, or holds no demo: it stays untouched."""


def shown_url(source: SourceDatabase) -> str:
    """The source URL as a message may show it: without a password."""
    parts = urlsplit(source.url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    if parts.password is None and all(name.lower() != "password" for name, _ in query):
        return source.url
    netloc = parts.netloc.replace(f":{parts.password}@", "@", 1) if parts.password else parts.netloc
    kept = urlencode([(name, value) for name, value in query if name.lower() != "password"])
    return urlunsplit(parts._replace(netloc=netloc, query=kept))


def _sqlite_is_database(path: Path) -> bool:
    """An empty file is an empty SQLite database; any other must start with SQLite's header."""
    with path.open("rb") as file:
        head = file.read(len(SQLITE_HEADER))
    return not head or head == SQLITE_HEADER


def _tables(source: SourceDatabase) -> list[str]:
    """The tables and views where the demo would create its own (PostgreSQL: the current schema)."""
    if source.dialect == "sqlite":
        if not source.sqlite_path.exists():
            return []
        if not _sqlite_is_database(source.sqlite_path):
            raise NotADemoError(f"{shown_url(source)} is not a SQLite database; the demo leaves it untouched")
        query = "SELECT name FROM sqlite_master WHERE type IN ('table', 'view') AND name NOT LIKE 'sqlite_%'"
    else:
        query = "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()"
    return sorted(source.read(query, what="listing tables").to_series())


def _marked(source: SourceDatabase) -> tuple[str | None, list[str]]:
    """The demo's id (None for an absent or empty database) and the tables beside it."""
    tables = _tables(source)
    if not tables:
        return None, tables
    if MARKER_TABLE not in tables:
        shown = ", ".join(tables[:5]) + (", ..." if len(tables) > 5 else "")
        # A demo source built before the marker existed looks the same: only its owner may drop it.
        earlier = (
            "; a demo an earlier version built must be deleted by hand" if set(TABLES) <= set(tables) else ""
        )
        raise NotADemoError(
            f"{shown_url(source)} holds tables the demo did not create ({shown}) and no "
            f"{MARKER_TABLE} marker; the demo never changes such a database: point "
            f"LAKEHOUSE_SOURCE_URL at a new file or an empty database{earlier}"
        )
    marker = source.read(f"SELECT demo_id FROM {MARKER_TABLE}", what="reading the demo marker")
    if marker.height != 1:
        raise NotADemoError(f"{shown_url(source)}: the {MARKER_TABLE} marker must hold exactly one row")
    return str(marker.item()), tables


def demo_id(source: SourceDatabase) -> str | None:
    """The id of the demo that created the source, None when the database is absent or empty.

    Raises NotADemoError for a database holding tables without the demo's marker."""
    return _marked(source)[0]


def create_schema(source: SourceDatabase, new_id: str) -> None:
    """Create the shop's tables empty and mark the database as demo `new_id`, in one transaction,
    replacing the shop's tables of an earlier demo; tables a user added beside them stay."""
    _, tables = _marked(source)
    if source.dialect == "sqlite" and not source.sqlite_path.exists():
        source.sqlite_path.parent.mkdir(parents=True, exist_ok=True)
        source.sqlite_path.touch()
    with source.connect() as connection:
        cursor = connection.cursor()
        # Only the demo's own tables, found in the schema it writes to, and no CASCADE: a user's
        # object that depends on one of them makes this fail rather than vanish.
        for table in (*TABLES, MARKER_TABLE):
            if table in tables:
                cursor.execute(f"DROP TABLE {table}")
        for statement in DDL:
            cursor.execute(statement.format(**TYPES[source.dialect]))
        cursor.execute(f"CREATE TABLE {MARKER_TABLE} (demo_id TEXT NOT NULL)")
        cursor.execute(f"INSERT INTO {MARKER_TABLE} (demo_id) VALUES ('{new_id}')")
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


def delete(source: SourceDatabase, table: str, key: str, ids: list[int]) -> None:
    """Delete the rows whose `key` is one of `ids`, in one transaction."""
    if not ids:
        return
    places = ", ".join(source.placeholder(position) for position in range(1, len(ids) + 1))
    with source.connect() as connection:
        connection.cursor().execute(f"DELETE FROM {table} WHERE {key} IN ({places})", ids)
        connection.commit()


def read(source: SourceDatabase, query: str) -> pl.DataFrame:
    """A query's result with timestamp text from SQLite parsed back into UTC datetimes."""
    frame = source.read(query)
    text_times = [c for c in frame.columns if c.endswith("_at") and frame.schema[c] == pl.String]
    return frame.with_columns(
        pl.col(c).str.to_datetime(SQLITE_TIMESTAMP_FORMAT, time_unit="us").dt.convert_time_zone("UTC")
        for c in text_times
    )
