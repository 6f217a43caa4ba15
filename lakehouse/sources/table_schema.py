"""What a source database declares about a table, read for the contract scaffold.

The database knows each column's type and nullability, the primary key, the indexes and the
foreign keys; this module reads them from SQLite's pragmas or PostgreSQL's catalogue, and
maps each declared column type to a contract type.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import adbc_driver_manager

from lakehouse.resources import SourceDatabase
from lakehouse.sources.errors import SourceUnavailableError

# SQLite has no timestamp type: text columns named like these hold timestamps.
TIMESTAMP_NAME = re.compile(r"(_at|_time|_ts|^timestamp|^datetime)$", re.IGNORECASE)
TIMESTAMP_TEXT = re.compile(r"^\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}(:?\d{2})?)?$")
DATE_TEXT = re.compile(r"^\d{4}-\d{2}-\d{2}$")
SAMPLE_ROWS = 100
DECIMAL = re.compile(r"^(?:numeric|decimal)\s*\(\s*(\d+)\s*,\s*(\d+)\s*\)$")


class ScaffoldError(ValueError):
    """The table cannot be scaffolded; the message says why and what to do."""


@dataclass(frozen=True)
class SourceColumn:
    name: str
    declared: str  # the type as the database declares it, e.g. 'numeric(12,2)', 'TEXT'
    nullable: bool


@dataclass(frozen=True)
class TableSchema:
    """What the database says about a table."""

    table: str  # as the user named it, `schema.table` allowed in PostgreSQL
    columns: list[SourceColumn]
    primary_key: list[str]
    indexed: set[str]  # columns that lead an index, so a range on them is served
    unique: set[str]  # columns unique on their own
    references: dict[str, str]  # column -> 'parent_table.parent_column'


def _quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _qualified(table: str) -> str:
    return ".".join(_quoted(part) for part in table.split("."))


def _rows(source: SourceDatabase, query: str, parameters: list[str]) -> list[dict]:
    """The query's rows; a database error becomes one line naming the source."""
    try:
        return source.read(query, parameters, what="reading the schema").to_dicts()
    except (adbc_driver_manager.Error, SourceUnavailableError) as error:
        raise ScaffoldError(f"{source.label}: {str(error).splitlines()[0]}") from error


def _sqlite_schema(source: SourceDatabase, table: str) -> TableSchema:
    columns = _rows(
        source, 'SELECT name, type, "notnull", pk FROM pragma_table_info(?) ORDER BY cid', [table]
    )
    if not columns:
        raise ScaffoldError(f"{source.label}: table '{table}' does not exist")
    indexes = _rows(
        source,
        'SELECT l.name AS "index", l."unique" AS is_unique, i.seqno, i.name AS "column", '
        "(SELECT count(*) FROM pragma_index_info(l.name)) AS width "
        "FROM pragma_index_list(?) AS l, pragma_index_info(l.name) AS i",
        [table],
    )
    keys = _rows(source, 'SELECT id, "table", "from", "to" FROM pragma_foreign_key_list(?)', [table])
    primary_key = [row["name"] for row in sorted((r for r in columns if r["pk"]), key=lambda r: r["pk"])]
    references = {}
    for row in keys:
        if sum(1 for other in keys if other["id"] == row["id"]) > 1:
            continue  # a composite foreign key: a contract reference names one column
        # Without a column, the foreign key names the parent's primary key.
        parent_column = row["to"] or _sqlite_single_key(source, row["table"])
        if parent_column:
            references[row["from"]] = f"{row['table']}.{parent_column}"
    return TableSchema(
        table=table,
        columns=[SourceColumn(row["name"], row["type"] or "", not row["notnull"]) for row in columns],
        primary_key=primary_key,
        indexed={row["column"] for row in indexes if row["seqno"] == 0} | set(primary_key[:1]),
        unique={row["column"] for row in indexes if row["is_unique"] and row["width"] == 1}
        | (set(primary_key) if len(primary_key) == 1 else set()),
        references=references,
    )


def _sqlite_single_key(source: SourceDatabase, table: str) -> str | None:
    key = _rows(source, "SELECT name FROM pragma_table_info(?) WHERE pk > 0", [table])
    return key[0]["name"] if len(key) == 1 else None


# The table's columns, indexes (with each column's position) and single-column foreign keys,
# by the oid PostgreSQL resolves the name to (through the search path when unqualified).
POSTGRES_COLUMNS = """
SELECT a.attname::text AS name, format_type(a.atttypid, a.atttypmod) AS type,
       NOT a.attnotnull AS nullable
FROM pg_attribute a WHERE a.attrelid = $1::oid AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attnum"""
POSTGRES_INDEXES = """
SELECT a.attname::text AS column, k.n AS position, i.indisprimary AS is_primary,
       i.indisunique AS is_unique, i.indnkeyatts AS width
FROM pg_index i CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, n)
JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
WHERE i.indrelid = $1::oid AND k.n <= i.indnkeyatts ORDER BY k.n"""
POSTGRES_FOREIGN_KEYS = """
SELECT a.attname::text AS column, p.relname::text AS parent, pa.attname::text AS parent_column
FROM pg_constraint c
JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = c.conkey[1]
JOIN pg_class p ON p.oid = c.confrelid
JOIN pg_attribute pa ON pa.attrelid = c.confrelid AND pa.attnum = c.confkey[1]
WHERE c.conrelid = $1::oid AND c.contype = 'f' AND cardinality(c.conkey) = 1"""


def _postgres_schema(source: SourceDatabase, table: str) -> TableSchema:
    found = _rows(source, "SELECT to_regclass($1)::oid::text AS oid", [_qualified(table)])
    if found[0]["oid"] is None:
        raise ScaffoldError(f"{source.label}: table '{table}' does not exist (or is not on the search path)")
    oid = [found[0]["oid"]]
    columns = _rows(source, POSTGRES_COLUMNS, oid)
    indexes = _rows(source, POSTGRES_INDEXES, oid)
    return TableSchema(
        table=table,
        columns=[SourceColumn(row["name"], row["type"], row["nullable"]) for row in columns],
        primary_key=[row["column"] for row in indexes if row["is_primary"]],
        indexed={row["column"] for row in indexes if row["position"] == 1},
        unique={row["column"] for row in indexes if row["is_unique"] and row["width"] == 1},
        references={
            row["column"]: f"{row['parent']}.{row['parent_column']}"
            for row in _rows(source, POSTGRES_FOREIGN_KEYS, oid)
        },
    )


def read_schema(source: SourceDatabase, table: str) -> TableSchema:
    """The table's columns, keys and indexes as the source database declares them."""
    if source.dialect == "sqlite":
        if not source.sqlite_path.is_file():
            raise ScaffoldError(f"source database {source.sqlite_path} does not exist")
        return _sqlite_schema(source, table)
    return _postgres_schema(source, table)


def declared_type(declared: str) -> str:
    """The contract type for a declared column type, by name first, then by SQLite's affinity
    rules (which also cover PostgreSQL's names)."""
    text = declared.strip().lower()
    decimal = DECIMAL.match(text)
    if decimal:
        return f"decimal({decimal.group(1)},{decimal.group(2)})"
    if text.startswith("bool"):
        return "bool"
    if text.startswith(("timestamp", "datetime")):
        return "timestamp"
    if text == "date":
        return "date"
    if text in ("json", "jsonb"):
        return "json"
    # SQLite's first affinity rule; PostgreSQL's interval and point only look like it.
    if "int" in text and not text.startswith(("interval", "point")):
        return "int"
    if any(marker in text for marker in ("char", "clob", "text")):
        return "string"
    if any(marker in text for marker in ("real", "floa", "doub", "numeric", "decimal")):
        return "float"
    return "string"


def _sampled_form(source: SourceDatabase, table: str, column: str) -> str | None:
    """What a text column's sampled values look like: 'timestamp' or 'date' when every one has
    that form, 'string' otherwise; None when it holds no values to go by."""
    values = _rows(
        source,
        f"SELECT CAST({_quoted(column)} AS TEXT) AS value FROM {_qualified(table)} "
        f"WHERE {_quoted(column)} IS NOT NULL LIMIT {SAMPLE_ROWS}",
        [],
    )
    texts = [row["value"] for row in values]
    if not texts:
        return None
    for form, pattern in (("timestamp", TIMESTAMP_TEXT), ("date", DATE_TEXT)):
        if all(pattern.match(text) for text in texts):
            return form
    return "string"


def column_type(source: SourceDatabase, schema: TableSchema, column: SourceColumn) -> str:
    """The contract type of one column: SQLite's text columns are proposed as timestamps (or
    dates) when their values have that form, or, with no values to go by, their name says so."""
    proposed = declared_type(column.declared)
    if source.dialect != "sqlite" or proposed != "string":
        return proposed
    form = _sampled_form(source, schema.table, column.name)
    if form is None:
        return "timestamp" if TIMESTAMP_NAME.search(column.name) else "string"
    return form
