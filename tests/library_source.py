"""A small source that is not the shop: a library's members, books and loans.

It has what real operational databases have and the demo shop does not: composite primary
keys, a nullable foreign key with real orphans (loans of members the members table does not
hold, kept from before the constraint was added), a composite foreign key, columns named with
SQL reserved words, and timestamps without an offset (SQLite's `2013-06-30 18:00:00` text,
PostgreSQL `TIMESTAMP`) beside `TIMESTAMPTZ` ones.

The rows are generated in Python and kept as the truth the lakehouse is compared with: every
timestamp is a UTC moment, written in the form the dialect and the options ask for.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import dagster as dg
import polars as pl

from asset_checks import all_checks
from lakehouse.bronze.assets import bronze_assets
from lakehouse.resources import Clock, LakehouseStorage, LandingZone, PiiHasher, SourceDatabase
from lakehouse.silver.assets import silver_assets
from lakehouse.sources.contract import Contract

START = datetime(2013, 6, 30, 18, 0, tzinfo=UTC)
TABLES = ("members", "books", "loans")
ORPHAN_MEMBERS = (901, 902, 903)


@dataclass(frozen=True)
class Naming:
    """The names of the three columns that are SQL reserved words by default."""

    order: str = "order"
    group: str = "group"
    select: str = "select"


PLAIN_NAMES = Naming(order="seq", group="grp", select="pick")


@dataclass(frozen=True)
class Changes:
    """What `LibrarySource.change` did to one table: keys updated and keys inserted."""

    updated: set[tuple]
    inserted: set[tuple]


@dataclass
class LibrarySource:
    """The library in `source`. `naive`: timestamps without an offset where the dialect allows
    (all of SQLite's, the `TIMESTAMP` columns of PostgreSQL); otherwise every one carries its
    offset. `schema`: the PostgreSQL schema the tables live in (the test owns it), named as
    `schema.table` when `qualified`, else left to the connection's search path."""

    source: SourceDatabase
    naive: bool = True
    names: Naming = Naming()
    schema: str | None = None
    qualified: bool = True
    seed: int = 11
    rows: dict[str, list[dict]] = field(default_factory=dict)

    @property
    def postgres(self) -> bool:
        return self.source.dialect == "postgresql"

    def table(self, name: str) -> str:
        """The table's name as a user gives it to the scaffold."""
        return f"{self.schema}.{name}" if self.schema and self.qualified else name

    def primary_key(self, name: str) -> list[str]:
        return {
            "members": ["member_id"],
            "books": ["branch_id", "book_no"],
            "loans": ["branch_id", "book_no", self.names.order],
        }[name]

    def _types(self) -> dict[str, str]:
        """Column types per dialect: `local` timestamps are the naive ones."""
        if not self.postgres:
            return {"int": "INTEGER", "local": "TEXT", "zoned": "TEXT"}
        return {
            "int": "BIGINT",
            "local": "TIMESTAMP" if self.naive else "TIMESTAMPTZ",
            "zoned": "TIMESTAMPTZ",
        }

    def _ddl(self) -> list[str]:
        n, t = self.names, self._types()
        q = _quoted
        return [
            f"""CREATE TABLE {self._at("members")} (
                member_id {t["int"]} PRIMARY KEY, name TEXT NOT NULL, {q(n.group)} TEXT,
                joined_at {t["local"]} NOT NULL, updated_at {t["local"]} NOT NULL)""",
            f"""CREATE TABLE {self._at("books")} (
                branch_id {t["int"]} NOT NULL, book_no {t["int"]} NOT NULL, title TEXT NOT NULL,
                {q(n.select)} BOOLEAN NOT NULL, price NUMERIC(8,2), updated_at {t["zoned"]} NOT NULL,
                PRIMARY KEY (branch_id, book_no))""",
            f"""CREATE TABLE {self._at("loans")} (
                branch_id {t["int"]} NOT NULL, book_no {t["int"]} NOT NULL, {q(n.order)} {t["int"]} NOT NULL,
                member_id {t["int"]}, lent_at {t["zoned"]} NOT NULL, returned_at {t["local"]},
                updated_at {t["zoned"]} NOT NULL,
                PRIMARY KEY (branch_id, book_no, {q(n.order)}),
                FOREIGN KEY (branch_id, book_no) REFERENCES {self._at("books")} (branch_id, book_no)
                {"" if self.postgres else ", FOREIGN KEY (member_id) REFERENCES members (member_id)"})""",
            *(f"CREATE INDEX {name}_updated_at ON {self._at(name)} (updated_at)" for name in TABLES),
        ]

    def _at(self, name: str) -> str:
        return f"{_quoted(self.schema)}.{_quoted(name)}" if self.schema else _quoted(name)

    def _execute(self, statements: list[str]) -> None:
        with self.source.connect() as connection:
            cursor = connection.cursor()
            for statement in statements:
                cursor.execute(statement)
            connection.commit()

    def build(self) -> None:
        """Create the tables (replacing the test's own schema) and fill them."""
        rng = random.Random(self.seed)
        self.rows = {"members": [], "books": [], "loans": []}
        for number in range(1, 41):
            moment = START + timedelta(minutes=number)
            self.rows["members"].append(
                {
                    "member_id": number,
                    "name": f"member {number}",
                    self.names.group: None if number % 5 == 0 else rng.choice(["adult", "child", "staff"]),
                    "joined_at": moment - timedelta(days=rng.randint(1, 900)),
                    "updated_at": moment,
                }
            )
        for branch in (1, 2):
            for book in range(1, 31):
                self.rows["books"].append(
                    {
                        "branch_id": branch,
                        "book_no": book,
                        "title": f"book {branch}-{book}",
                        self.names.select: book % 4 == 0,
                        # Quarters: exact in the REAL SQLite stores a NUMERIC value as.
                        "price": None if book % 7 == 0 else Decimal(rng.randint(4, 160)) / 4,
                        "updated_at": START + timedelta(minutes=book, seconds=branch),
                    }
                )
        for number in range(150):
            self.rows["loans"].append(self._loan(rng, number, START + timedelta(minutes=number)))
        if self.postgres:
            assert self.schema, "the library lives in a schema of its own in PostgreSQL"
            schema = _quoted(self.schema)
            prelude = [f"DROP SCHEMA IF EXISTS {schema} CASCADE", f"CREATE SCHEMA {schema}"]
        else:
            self.source.sqlite_path.parent.mkdir(parents=True, exist_ok=True)
            self.source.sqlite_path.touch()
            prelude = []
        inserts = [self._insert(name, rows) for name, rows in self.rows.items()]
        # Loans of members removed long ago: the constraint came later and spared the old rows.
        constraint = (
            [
                f"ALTER TABLE {self._at('loans')} ADD FOREIGN KEY (member_id) "
                f"REFERENCES {self._at('members')} (member_id) NOT VALID"
            ]
            if self.postgres
            else []
        )
        self._execute([*prelude, *self._ddl(), *inserts, *constraint])

    def _loan(self, rng: random.Random, number: int, moment: datetime, orphans: bool = True) -> dict:
        member = None if number % 6 == 0 else rng.randint(1, 40)
        if orphans and number % 11 == 0:
            member = ORPHAN_MEMBERS[number % len(ORPHAN_MEMBERS)]
        return {
            "branch_id": 1 + number % 2,
            "book_no": 1 + number % 30,
            self.names.order: number,
            "member_id": member,
            "lent_at": moment - timedelta(days=3),
            "returned_at": None if number % 3 == 0 else moment - timedelta(hours=5),
            "updated_at": moment,
        }

    def change(self) -> dict[str, Changes]:
        """A day later: update some rows of every table and insert new ones; one of the new
        members is a member orphaned loans refer to."""
        rng = random.Random(self.seed + 1)
        moment = START + timedelta(days=1)
        changes = {name: Changes(set(), set()) for name in TABLES}
        statements = []
        for index, row in enumerate(self.rows["members"][3:8]):
            row.update(name=f"{row['name']} (moved)", updated_at=moment + timedelta(minutes=index))
            statements.append(self._update("members", row, ["name", "updated_at"]))
            changes["members"].updated.add(self.key_of("members", row))
        for index, row in enumerate(self.rows["books"][10:14]):
            row.update(
                price=None if index == 0 else Decimal(99), updated_at=moment + timedelta(minutes=index)
            )
            statements.append(self._update("books", row, ["price", "updated_at"]))
            changes["books"].updated.add(self.key_of("books", row))
        for index, row in enumerate(row for row in self.rows["loans"] if row["returned_at"] is None):
            if index == 8:
                break
            row.update(returned_at=moment, updated_at=moment + timedelta(seconds=index))
            statements.append(self._update("loans", row, ["returned_at", "updated_at"]))
            changes["loans"].updated.add(self.key_of("loans", row))
        new_members = [
            {"member_id": member_id, "name": f"member {member_id}", self.names.group: "adult",
             "joined_at": moment, "updated_at": moment + timedelta(hours=1)}
            for member_id in (41, 42, ORPHAN_MEMBERS[0])
        ]  # fmt: skip
        new_loans = [
            self._loan(rng, number, moment + timedelta(minutes=number - 140), orphans=False)
            for number in range(150, 160)
        ]
        for name, rows in (("members", new_members), ("loans", new_loans)):
            self.rows[name].extend(rows)
            statements.append(self._insert(name, rows))
            changes[name].inserted.update(self.key_of(name, row) for row in rows)
        self._execute(statements)
        return changes

    def key_of(self, name: str, row: dict) -> tuple:
        return tuple(row[column] for column in self.primary_key(name))

    def _local(self, name: str, column: str) -> bool:
        return column in {"members": ("joined_at", "updated_at"), "loans": ("returned_at",)}.get(name, ())

    def _literal(self, name: str, column: str, value: object) -> str:
        if value is None:
            return "NULL"
        if isinstance(value, bool):
            return "TRUE" if value else "FALSE"
        if isinstance(value, datetime):
            return (
                "'"
                + self._timestamp_text(value, self.naive and (self._local(name, column) or not self.postgres))
                + "'"
            )
        if isinstance(value, str):
            return "'" + value.replace("'", "''") + "'"
        return str(value)

    @staticmethod
    def _timestamp_text(value: datetime, naive: bool) -> str:
        # SQLite's CURRENT_TIMESTAMP form, or an ISO-8601 text with microseconds and offset.
        moment = value.astimezone(UTC)
        return (
            moment.strftime("%Y-%m-%d %H:%M:%S")
            if naive
            else moment.isoformat(sep=" ", timespec="microseconds")
        )

    def _insert(self, name: str, rows: list[dict]) -> str:
        columns = list(rows[0])
        values = ", ".join(
            "(" + ", ".join(self._literal(name, column, row[column]) for column in columns) + ")"
            for row in rows
        )
        return f"INSERT INTO {self._at(name)} ({', '.join(map(_quoted, columns))}) VALUES {values}"

    def _update(self, name: str, row: dict, columns: list[str]) -> str:
        assignments = ", ".join(f"{_quoted(c)} = {self._literal(name, c, row[c])}" for c in columns)
        match = " AND ".join(
            f"{_quoted(c)} = {self._literal(name, c, row[c])}" for c in self.primary_key(name)
        )
        return f"UPDATE {self._at(name)} SET {assignments} WHERE {match}"

    def truth(self, name: str) -> pl.DataFrame:
        """The table as the source holds it now, typed as the lakehouse stores it."""
        decimal = {"price": pl.Decimal(8, 2)} if name == "books" else {}
        return pl.DataFrame(self.rows[name], schema_overrides=decimal, infer_schema_length=None).with_columns(
            pl.selectors.datetime().dt.convert_time_zone("UTC")
        )

    def orphans(self) -> set[tuple]:
        """Keys of the loans whose member the members table does not hold."""
        members = {row["member_id"] for row in self.rows["members"]}
        return {
            self.key_of("loans", row)
            for row in self.rows["loans"]
            if row["member_id"] is not None and row["member_id"] not in members
        }


def materialize(
    contracts: list[Contract],
    source: SourceDatabase,
    folder: Path,
    instance: dg.DagsterInstance,
    salt: str,
    layers: tuple[str, ...] = ("bronze", "silver"),
) -> dg.ExecuteInProcessResult:
    """One in-process run of the library's `layers` with their checks, its lakehouse in `folder`."""
    return dg.materialize(
        [*bronze_assets(contracts), *silver_assets(contracts), *all_checks(contracts)],
        selection=dg.AssetSelection.groups(*layers),
        resources={
            "source": source,
            "lakehouse": LakehouseStorage(root=str(folder / "lakehouse")),
            "landing": LandingZone(path=str(folder / "landing")),
            "pii": PiiHasher(salt=salt),
            "clock": Clock(now="2013-07-02T00:00:00+00:00"),
        },
        instance=instance,
        raise_on_error=False,
    )


def _quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'
