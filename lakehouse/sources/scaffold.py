"""A first contract for a source table, from the database's own schema (`table_schema`).

The scaffold turns the table's schema into a contract the user reviews: a description to
write, a watermark to confirm (or to create, when the table has no candidate), rules to add.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from lakehouse.resources import SourceDatabase
from lakehouse.sources.contract import IDENTIFIER
from lakehouse.sources.table_schema import ScaffoldError, TableSchema, column_type, read_schema

# Column names a watermark usually has, most likely first; only names like these are proposed,
# since a creation time does not move when a row is updated.
WATERMARK_NAMES = ("updated_at", "modified_at", "last_modified", "changed_at", "last_updated", "updated")
WATERMARK_LIKE = re.compile(r"updat|modif|chang", re.IGNORECASE)
LOOKBACK = "1h"


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
