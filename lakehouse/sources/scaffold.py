"""A first contract for a source table, read from the database's own schema.

The database knows each column's type and nullability, the primary key, the indexes and the
foreign keys; the scaffold turns them into a contract the user reviews: a description to
write, a watermark to confirm (or to create, when the table has no candidate), rules to add.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import adbc_driver_manager
import yaml

from lakehouse.resources import SourceDatabase
from lakehouse.sources.contract import IDENTIFIER
from lakehouse.sources.errors import SourceUnavailableError

# Column names a watermark usually has, most likely first; only names like these are proposed,
# since a creation time does not move when a row is updated.
WATERMARK_NAMES = ("updated_at", "modified_at", "last_modified", "changed_at", "last_updated", "updated")
WATERMARK_LIKE = re.compile(r"updat|modif|chang", re.IGNORECASE)
# SQLite has no timestamp type: text columns named like these hold timestamps.
TIMESTAMP_NAME = re.compile(r"(_at|_time|_ts|^timestamp|^datetime)$", re.IGNORECASE)
TIMESTAMP_TEXT = re.compile(r"^\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}(:?\d{2})?)?$")
DATE_TEXT = re.compile(r"^\d{4}-\d{2}-\d{2}$")
SAMPLE_ROWS = 100
DECIMAL = re.compile(r"^(?:numeric|decimal)\s*\(\s*(\d+)\s*,\s*(\d+)\s*\)$")
LOOKBACK = "1h"


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


def watermark_column(schema: TableSchema, types: dict[str, str]) -> str | None:
    """The timestamp column most likely set by every insert and update: indexed ones first (the
    extraction's range query needs the index), then by how watermark-like the name is."""
    candidates = [name for name, kind in types.items() if kind == "timestamp" and WATERMARK_LIKE.search(name)]

    def rank(name: str) -> tuple[bool, int]:
        lowered = name.lower()
        named = WATERMARK_NAMES.index(lowered) if lowered in WATERMARK_NAMES else len(WATERMARK_NAMES)
        return (name not in schema.indexed, named)

    return min(candidates, key=rank, default=None)


def _dump(value: dict, flow_leaves: bool = False) -> str:
    """YAML in block style; with `flow_leaves`, lists and mappings of plain values on one line
    (`primary_key: [a, b]`, one line per column)."""
    return yaml.safe_dump(
        value, sort_keys=False, default_flow_style=None if flow_leaves else False, width=110
    )


def _no_watermark(schema: TableSchema, types: dict[str, str]) -> str:
    timestamps = [name for name, kind in types.items() if kind == "timestamp"]
    example = timestamps[0] if timestamps else "updated_at"
    seen = f" (its timestamp columns: {', '.join(timestamps)})" if timestamps else ""
    return (
        f"# No watermark: {schema.table} has no timestamp column named like updated_at{seen}.\n"
        "# A database source needs one: a timestamp every insert and update sets, so a run reads\n"
        "# only the rows changed since the last. Add such a column to the table (with an index),\n"
        "# or name an existing column that moves on every change, and uncomment:\n"
        f"# watermark:\n#   column: {example}\n#   lookback: {LOOKBACK}\n"
    )


def contract_name(table: str) -> str:
    """The dataset name for a source table: its name without the schema, as an identifier."""
    name = re.sub(r"\W", "_", table.split(".")[-1])
    return name if re.match(IDENTIFIER, name) else f"t_{name}"


def render(schema: TableSchema, types: dict[str, str], watermark: str | None) -> str:
    """The contract's YAML text, with comments where the user has to decide."""
    name = contract_name(schema.table)
    bad = [column.name for column in schema.columns if not re.match(IDENTIFIER, column.name)]
    if bad:
        raise ScaffoldError(
            f"{schema.table}: column {', '.join(bad)} is not a plain identifier (letters, digits, "
            "underscore); rename it in the source or expose the table through a view"
        )
    if not schema.primary_key:
        raise ScaffoldError(
            f"{schema.table}: the table has no primary key; declare one in the source (ALTER TABLE "
            "... ADD PRIMARY KEY), or write the contract by hand with a primary_key whose columns "
            "identify a row"
        )
    columns = {}
    for column in schema.columns:
        spec: dict = {
            "type": types[column.name],
            "nullable": column.nullable and column.name not in schema.primary_key,
        }
        if column.name in schema.unique:
            spec["unique"] = True
        if column.name in schema.references:
            spec["references"] = schema.references[column.name]
        columns[column.name] = spec
    parts = [
        f"# Scaffolded from the source table {schema.table}: review it, write the description, add\n"
        "# rules (allowed_values, range, pii, freshness) and commit it. See docs/contracts.md.\n",
        _dump({"name": name, "description": f"TODO: what one row of {schema.table} is"}),
        _dump({"source": {"kind": "database", "table": schema.table}}),
        _dump({"primary_key": schema.primary_key}, flow_leaves=True),
        _dump({"watermark": {"column": watermark, "lookback": LOOKBACK}})
        if watermark
        else _no_watermark(schema, types),
        _dump({"columns": columns}, flow_leaves=True),
    ]
    return "".join(parts)


@dataclass(frozen=True)
class Scaffold:
    name: str  # the contract's, and its file's
    text: str  # the contract's YAML
    watermark: str | None  # the column proposed; without one the contract does not load yet


def scaffold(source: SourceDatabase, table: str) -> Scaffold:
    """A first contract for a source table, from the database's schema."""
    schema = read_schema(source, table)
    types = {column.name: column_type(source, schema, column) for column in schema.columns}
    watermark = watermark_column(schema, types)
    return Scaffold(contract_name(table), render(schema, types, watermark), watermark)


def write_contract(folder: Path, name: str, text: str, force: bool = False) -> Path:
    """Write `<name>.yaml` into the contracts folder; an existing contract of that name (.yaml
    or .yml) is only replaced with `force`."""
    existing = [path for path in (folder / f"{name}.yaml", folder / f"{name}.yml") if path.exists()]
    if existing and not force:
        raise ScaffoldError(f"{existing[0]} exists; --force replaces it")
    target = existing[0] if existing else folder / f"{name}.yaml"
    folder.mkdir(parents=True, exist_ok=True)
    target.write_text(text)
    return target
