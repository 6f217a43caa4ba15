"""Identifiers in generated SQL: every statement the lakehouse builds names tables and columns
through here, so reserved words (`order`, `group`, `select`) and schema-qualified tables work in
SQLite, PostgreSQL, DuckDB and Delta predicates alike (all accept double-quoted identifiers)."""


def quoted(name: str) -> str:
    """One identifier in double quotes, an embedded double quote doubled."""
    return '"' + name.replace('"', '""') + '"'


def qualified(table: str) -> str:
    """A table name, `table` or `schema.table`, with each part quoted."""
    return ".".join(quoted(part) for part in table.split("."))
