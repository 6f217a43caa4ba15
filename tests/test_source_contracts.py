"""A user's own source, not the shop: a library's members, books and loans.

Its columns are named with SQL reserved words (`order`, `group`, `select`), loans have a
composite primary key, a nullable foreign key and real orphans, and in PostgreSQL the tables
live in a schema outside the search path (contracts name them `schema.table`). The same
contracts run in SQLite and PostgreSQL; errors that can never succeed fail at once, naming
the contract and the source table.
"""

import sqlite3
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import polars as pl
import pytest
from conftest import postgres_source

from asset_checks.bronze_reconciliation import bronze_reconciliation_checks
from asset_checks.check import per_asset
from asset_checks.row_checks import contract_checks
from asset_checks.silver_reconciliation import silver_reconciliation_checks
from lakehouse.bronze.assets import bronze_assets
from lakehouse.resources import LakehouseStorage, PiiHasher, SourceDatabase
from lakehouse.silver.assets import silver_assets
from lakehouse.sources.contract import Contract
from lakehouse.sources.contract_files import load_contracts
from lakehouse.sources.errors import SourceError, SourceUnavailableError, is_transient
from lakehouse.storage.sql import qualified, quoted

T0 = "2026-11-02 10:00:00.000000+00:00"
T1 = "2026-11-02 11:00:00.000000+00:00"

MEMBERS = """\
name: members
description: Library members.
source: {{kind: database, table: {table}}}
primary_key: [member_id]
watermark: {{column: updated_at}}
columns:
  member_id: {{type: int, nullable: false}}
  name: {{type: string}}
  group: {{type: string, allowed_values: [adult, child]}}
  updated_at: {{type: timestamp, nullable: false}}
"""
BOOKS = """\
name: books
description: Books the library holds.
source: {{kind: database, table: {table}}}
primary_key: [isbn]
watermark: {{column: updated_at}}
columns:
  isbn: {{type: string, nullable: false}}
  title: {{type: string}}
  select: {{type: int}}
  updated_at: {{type: timestamp, nullable: false}}
"""
LOANS = """\
name: loans
description: Loans, numbered per member.
source: {{kind: database, table: {table}}}
primary_key: [member_id, order]
watermark: {{column: updated_at}}
columns:
  member_id: {{type: int, nullable: false, references: members.member_id}}
  order: {{type: int, nullable: false}}
  isbn: {{type: string, references: books.isbn}}
  group: {{type: string}}
  select: {{type: string}}
  updated_at: {{type: timestamp, nullable: false}}
"""

DDL = [
    'CREATE TABLE {members} (member_id INTEGER PRIMARY KEY, name TEXT, "group" TEXT, updated_at {ts})',
    'CREATE TABLE {books} (isbn TEXT PRIMARY KEY, title TEXT, "select" INTEGER, updated_at {ts})',
    # `note` is a source column the contract does not list.
    'CREATE TABLE {loans} (member_id INTEGER NOT NULL, "order" INTEGER NOT NULL, isbn TEXT, "group" TEXT, '
    '"select" TEXT, note TEXT, updated_at {ts}, PRIMARY KEY (member_id, "order"))',
    f"INSERT INTO {{members}} VALUES (1, 'Ada', 'adult', '{T0}'), (2, 'Bo', 'child', '{T0}')",
    f"INSERT INTO {{books}} VALUES ('b1', 'Emma', 1, '{T0}'), ('b2', 'Ulysses', 0, '{T0}')",
    # (2, 1) has no book (nullable reference); (2, 2) names an unknown book and (9, 1) an
    # unknown member: the orphans.
    "INSERT INTO {loans} VALUES "
    f"(1, 1, 'b1', 'fiction', 'yes', 'due soon', '{T0}'), (1, 2, 'b2', 'classic', 'no', NULL, '{T0}'), "
    f"(2, 1, NULL, 'fiction', NULL, NULL, '{T0}'), (2, 2, 'b9', 'fiction', 'no', NULL, '{T0}'), "
    f"(9, 1, 'b1', 'poetry', 'no', NULL, '{T0}')",
]


@dataclass
class Library:
    """The library's source (SQLite file or PostgreSQL schema), its contracts and a lakehouse."""

    folder: Path
    source: SourceDatabase
    schema: str | None

    def table(self, name: str) -> str:
        return f"{self.schema}.{name}" if self.schema else name

    def execute(self, *statements: str) -> None:
        if self.source.dialect == "sqlite":
            with sqlite3.connect(self.source.sqlite_path) as connection:
                for statement in statements:
                    connection.execute(statement)
            return
        with self.source.connect() as connection:
            cursor = connection.cursor()
            for statement in statements:
                cursor.execute(statement)
            connection.commit()

    def contracts(self, **changes: tuple[str, str]) -> list[Contract]:
        """The library's contracts; `changes`: per dataset, a text to replace in its file."""
        folder = self.folder / "contracts"
        folder.mkdir(exist_ok=True)
        # One contract as .yml: both suffixes are contracts.
        for name, text, suffix in (
            ("members", MEMBERS, ".yml"),
            ("books", BOOKS, ".yaml"),
            ("loans", LOANS, ".yaml"),
        ):
            content = text.format(table=self.table(name))
            if name in changes:
                content = content.replace(*changes[name])
            (folder / f"{name}{suffix}").write_text(content)
        return load_contracts(folder)

    @property
    def storage(self) -> LakehouseStorage:
        return LakehouseStorage(root=str(self.folder / "lakehouse"))

    def materialize(
        self, contracts: list[Contract], raise_on_error: bool = True
    ) -> dg.ExecuteInProcessResult:
        checks = [
            check
            for contract in contracts
            for check in (
                *contract_checks(contract),
                *bronze_reconciliation_checks(contract),
                *silver_reconciliation_checks(contract),
            )
        ]
        return dg.materialize(
            [*bronze_assets(contracts), *silver_assets(contracts), *per_asset(checks)],
            resources={"source": self.source, "lakehouse": self.storage, "pii": PiiHasher(salt="test")},
            raise_on_error=raise_on_error,
        )

    def read(self, layer: str, name: str) -> pl.DataFrame:
        return pl.read_delta(self.storage.table_uri(layer, name))


@pytest.fixture(params=["sqlite", "postgresql"])
def library(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Library]:
    if request.param == "sqlite":
        source = SourceDatabase(url=f"sqlite:///{tmp_path / 'library.db'}", backoff_seconds=0.05)
        built = Library(tmp_path, source, None)
        built.execute(*(s.format(members="members", books="books", loans="loans", ts="TEXT") for s in DDL))
        yield built
        return
    # A schema of its own, outside the search path; created here, so dropped here.
    schema = f"library_{uuid.uuid4().hex[:8]}"
    built = Library(tmp_path, postgres_source(), schema)
    names = {name: qualified(built.table(name)) for name in ("members", "books", "loans")}
    built.execute(f"CREATE SCHEMA {quoted(schema)}", *(s.format(**names, ts="TIMESTAMPTZ") for s in DDL))
    try:
        yield built
    finally:
        built.execute(f"DROP SCHEMA {quoted(schema)} CASCADE")


def _failure(result: dg.ExecuteInProcessResult) -> tuple[str, str, str]:
    """The failed step, and the class and message of the error its code raised."""
    (failed,) = [event for event in result.all_events if event.event_type == dg.DagsterEventType.STEP_FAILURE]
    error = failed.step_failure_data.error
    raised = error.cause or error  # Dagster wraps what the asset raised
    # The message starts with the error's qualified class name.
    return failed.step_key, raised.cls_name, raised.message.strip().split(": ", 1)[1]


def test_reserved_words_composite_keys_and_schema_tables_load_and_update(library: Library) -> None:
    contracts = library.contracts()
    result = library.materialize(contracts)
    evaluations = result.get_asset_check_evaluations()
    assert {(e.asset_key.path[1], e.check_name) for e in evaluations if not e.passed} == {
        ("loans", "references")
    }, "only the orphans break a rule"

    silver = library.read("silver", "loans").sort("member_id", "order")
    assert silver.select("member_id", "order", "isbn", "group", "select").rows() == [
        (1, 1, "b1", "fiction", "yes"),
        (1, 2, "b2", "classic", "no"),
        (2, 1, None, "fiction", None),
        (2, 2, "b9", "fiction", "no"),
        (9, 1, "b1", "poetry", "no"),
    ]
    assert silver.get_column("_orphan").to_list() == [
        None, None, None, "isbn not in books", "member_id not in members"
    ]  # fmt: skip
    # A column only the source has: in bronze as the source typed it, and carried into silver.
    assert library.read("bronze", "loans").schema["note"] == pl.String
    assert silver.filter(pl.col("order") == 1, pl.col("member_id") == 1).get_column("note").to_list() == [
        "due soon"
    ]
    assert library.read("silver", "members").get_column("group").sort().to_list() == ["adult", "child"]
    assert library.read("silver", "books").get_column("select").sort().to_list() == [0, 1]

    loans = qualified(library.table("loans"))
    library.execute(
        f"UPDATE {loans} SET \"group\" = 'returned', updated_at = '{T1}' "
        'WHERE member_id = 1 AND "order" = 2',
        f"INSERT INTO {loans} VALUES (1, 3, 'b1', 'fiction', 'yes', NULL, '{T1}')",
    )
    library.materialize(contracts, raise_on_error=False)

    bronze = library.read("bronze", "loans")
    assert bronze.height == 7, "the changed and the new version appended, nothing else"
    silver = library.read("silver", "loans").sort("member_id", "order")
    assert silver.select("member_id", "order", "group").rows()[:3] == [
        (1, 1, "fiction"),
        (1, 2, "returned"),
        (1, 3, "fiction"),
    ]
    assert silver.height == 6


def test_a_contract_column_the_source_lacks_fails_the_extraction(library: Library) -> None:
    contracts = library.contracts(
        loans=("  select: {type: string}", "  select: {type: string}\n  due_on: {type: date}")
    )
    result = library.materialize(contracts, raise_on_error=False)

    _, error, message = _failure(result)
    assert error == "MissingColumnsError"
    assert message == (
        f"bronze/loans: source table {library.table('loans')} on {library.source.label} "
        "lacks column 'due_on' of contract loans"
    )
    assert not (library.folder / "lakehouse" / "bronze" / "loans").exists()


def test_a_missing_table_fails_at_once_naming_the_contract_and_the_table(library: Library) -> None:
    contracts = library.contracts(
        loans=(f"table: {library.table('loans')}", f"table: {library.table('lending')}")
    )
    result = library.materialize(contracts, raise_on_error=False)

    step, error, message = _failure(result)
    assert step == "bronze__loans" and error == "SourceError"
    assert message.startswith(f"bronze/loans: extracting source table {library.table('lending')} on ")
    assert "\n" not in message
    assert not any(event.event_type == dg.DagsterEventType.STEP_UP_FOR_RETRY for event in result.all_events)

    # The driver's own error, not its text, says it is permanent; no attempt count: one attempt.
    with pytest.raises(SourceError) as raised:
        library.source.read(f"SELECT * FROM {qualified(library.table('lending'))}", what="reading lending")
    assert not isinstance(raised.value, SourceUnavailableError)
    assert not is_transient(raised.value.__cause__)


@pytest.mark.slow
def test_refused_credentials_fail_at_once_and_a_refused_connection_is_retried() -> None:
    source = postgres_source()
    stranger = source.model_copy(
        update={
            "url": f"{source.url}{'&' if '?' in source.url else '?'}user=no_such_role_{uuid.uuid4().hex[:6]}"
        }
    )
    with pytest.raises(SourceError, match=r"^probing on postgresql:.* failed: .*no_such_role") as raised:
        stranger.read("SELECT 1", what="probing")
    assert not isinstance(raised.value, SourceUnavailableError)

    # Nothing listens on port 1: refused, retried (briefly here), then reported as unavailable.
    closed = SourceDatabase(url="postgresql://user@127.0.0.1:1/none", max_attempts=2, backoff_seconds=0.01)
    with pytest.raises(
        SourceUnavailableError, match=r"probing failed after 2 attempts against postgresql:127\.0\.0\.1"
    ):
        closed.read("SELECT 1", what="probing")


def test_identifiers_are_quoted_with_embedded_quotes_doubled() -> None:
    assert quoted("order") == '"order"'
    assert quoted('say "hi"') == '"say ""hi"""'
    assert qualified("library.loans") == '"library"."loans"'
