"""A second domain for the tests, not the shop: a library's members and the loans they take,
in a SQLite source of its own, with its contracts in a folder of their own."""

import sqlite3
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import polars as pl

from asset_checks import all_checks
from lakehouse.bronze.assets import bronze_assets
from lakehouse.resources import Clock, LakehouseStorage, LandingZone, PiiHasher, SourceDatabase
from lakehouse.silver.assets import silver_assets
from lakehouse.sources.contract import Contract
from lakehouse.sources.contract_files import load_contracts
from lakehouse.sources.timestamps import timestamp_text
from lakehouse.storage import delta

CLOCK = datetime(2026, 11, 2, 12, 0, tzinfo=UTC)
MEMBERS = """\
name: members
description: The library's members.
source: {kind: database, table: members}
primary_key: [member_id]
watermark: {column: updated_at}
columns:
  member_id: {type: int, nullable: false, unique: true}
  name: {type: string, nullable: false}
  updated_at: {type: timestamp, nullable: false}
"""
LOANS = """\
name: loans
description: Books lent to members.
source: {kind: database, table: loans}
primary_key: [loan_id]
watermark: {column: updated_at}
columns:
  loan_id: {type: int, nullable: false, unique: true}
  member_id: {type: int, nullable: true, references: members.member_id}
  status: {type: string, nullable: false, allowed_values: [open, returned]}
  updated_at: {type: timestamp, nullable: false}
"""
SCHEMA = """
create table members (member_id integer primary key, name text not null, updated_at text not null);
create table loans (
    loan_id integer primary key, member_id integer references members, status text not null,
    updated_at text not null
);
"""


@dataclass
class Library:
    """The library's source, contracts and lakehouse under `folder` (or on `lake`)."""

    folder: Path
    instance: dg.DagsterInstance
    lake: LakehouseStorage | None = None

    @property
    def contracts_folder(self) -> Path:
        return self.folder / "contracts"

    @property
    def database(self) -> Path:
        return self.folder / "source" / "library.db"

    @property
    def source_url(self) -> str:
        return f"sqlite:///{self.database}"

    @property
    def storage(self) -> LakehouseStorage:
        return self.lake or LakehouseStorage(root=str(self.folder / "lakehouse"))

    @property
    def contracts(self) -> list[Contract]:
        return load_contracts(self.contracts_folder)

    def create(self, loans_sla: str = "", members_deletes: str = "") -> None:
        """The contracts (the loans' with an `sla:` block, the members' with a `deletes:` line,
        when given) and an empty source."""
        self.contracts_folder.mkdir(parents=True)
        (self.contracts_folder / "members.yaml").write_text(MEMBERS + members_deletes)
        (self.contracts_folder / "loans.yaml").write_text(LOANS + loans_sla)
        self.database.parent.mkdir(parents=True)
        with sqlite3.connect(self.database) as connection:
            connection.executescript(SCHEMA)

    def add(self, table: str, rows: list[tuple]) -> None:
        """Rows updated now (a minute after the previous batch), in the table's column order."""
        with sqlite3.connect(self.database) as connection:
            (latest,) = connection.execute(f"select max(updated_at) from {table}").fetchone()
            stamp = timestamp_text(
                CLOCK if latest is None else datetime.fromisoformat(latest) + timedelta(minutes=1)
            )
            marks = ", ".join("?" * (len(rows[0]) + 1))
            connection.executemany(f"insert into {table} values ({marks})", [(*row, stamp) for row in rows])

    def insert(self, table: str, rows: list[tuple]) -> None:
        """Rows as given, their watermark last."""
        with sqlite3.connect(self.database) as connection:
            marks = ", ".join("?" * len(rows[0]))
            connection.executemany(f"insert into {table} values ({marks})", rows)

    def update(self, table: str, key: str, value: int, **changes: object) -> None:
        """Change one row's columns, updated now (a minute after the previous batch)."""
        with sqlite3.connect(self.database) as connection:
            (latest,) = connection.execute(f"select max(updated_at) from {table}").fetchone()
            stamp = timestamp_text(datetime.fromisoformat(latest) + timedelta(minutes=1))
            columns = ", ".join(f"{name} = ?" for name in [*changes, "updated_at"])
            connection.execute(
                f"update {table} set {columns} where {key} = ?", [*changes.values(), stamp, value]
            )

    def delete(self, table: str, key: str, ids: list[int]) -> None:
        """Delete the rows whose `key` is one of `ids`, as the source's users do."""
        with sqlite3.connect(self.database) as connection:
            connection.executemany(f"delete from {table} where {key} = ?", [(value,) for value in ids])

    def materialize(
        self, selection: list[str] | dg.AssetSelection | None = None
    ) -> dg.ExecuteInProcessResult:
        """The `selection` (by default bronze and silver of every contract) with its checks, in
        one run."""
        contracts = self.contracts
        return dg.materialize(
            [*bronze_assets(contracts), *silver_assets(contracts), *all_checks(contracts)],
            selection=selection,
            resources={
                "source": SourceDatabase(url=self.source_url, backoff_seconds=0.05),
                "lakehouse": self.storage,
                "landing": LandingZone(path=str(self.folder / "landing")),
                "pii": PiiHasher(salt="test-salt"),
                "clock": Clock(now=CLOCK.isoformat()),
            },
            instance=self.instance,
            raise_on_error=False,
        )

    def table(self, layer: str, name: str) -> pl.DataFrame:
        return delta.scan(self.storage.table_uri(layer, name)).collect()


def evaluations(result: dg.ExecuteInProcessResult, asset: dg.AssetKey) -> dict[str, dg.AssetCheckEvaluation]:
    """The run's check evaluations on `asset`, by check name."""
    return {
        found.check_name: found for found in result.get_asset_check_evaluations() if found.asset_key == asset
    }


def value(evaluation: dg.AssetCheckEvaluation, name: str) -> object:
    """The value of one of the evaluation's metadata entries."""
    return evaluation.metadata[name].value
