"""A user's own source: contracts scaffolded from its schema, then bronze and silver on it.

The source is a library (tests/library_source.py), not the demo shop, in SQLite and in
PostgreSQL: composite keys, a nullable foreign key with orphans, reserved-word column names,
timestamps with and without an offset.
"""

import sqlite3
from pathlib import Path

import dagster as dg
import polars as pl
import pytest
from conftest import POSTGRES_URL, TEST_SALT, postgres_source, run_command
from library_source import ORPHAN_MEMBERS, PLAIN_NAMES, TABLES, LibrarySource, Naming, materialize

from lakehouse.cli.main import main
from lakehouse.resources import LakehouseStorage, SourceDatabase
from lakehouse.sources.contract import Contract
from lakehouse.sources.contract_files import ContractError, load_contract, load_contracts
from lakehouse.sources.scaffold import watermark_column
from lakehouse.sources.table_schema import TableSchema, declared_type
from lakehouse.storage import delta

SCHEMA = "library"


def _sqlite(folder: Path) -> SourceDatabase:
    return SourceDatabase(url=f"sqlite:///{folder / 'source' / 'library.db'}", backoff_seconds=0.05)


def _postgres(search_path: bool = False) -> SourceDatabase:
    """The test database; with `search_path`, one whose unqualified names find the library."""
    source = postgres_source()
    if not search_path:
        return source
    joiner = "&" if "?" in source.url else "?"
    return SourceDatabase(url=f"{source.url}{joiner}options=-csearch_path%3D{SCHEMA}", backoff_seconds=0.05)


def library(dialect: str, folder: Path, realistic: bool = True) -> LibrarySource:
    """The library built in `dialect`. `realistic`: reserved-word columns, naive timestamps and
    (PostgreSQL) `schema.table` names; otherwise plain names, offsets and the search path."""
    postgres = dialect == "postgresql"
    built = LibrarySource(
        _postgres(search_path=not realistic) if postgres else _sqlite(folder),
        naive=realistic,
        names=Naming() if realistic else PLAIN_NAMES,
        schema=SCHEMA if postgres else None,
        qualified=realistic,
    )
    built.build()
    return built


def scaffold_contracts(built: LibrarySource, folder: Path) -> list[Contract]:
    """Scaffold every table's contract, and make the one edit a reviewer must: the description."""
    for name in TABLES:
        assert main(["contract", "scaffold", built.table(name), "--source", built.source.url,
                     "--output", str(folder)]) == 0  # fmt: skip
        path = folder / f"{name}.yaml"
        lines = path.read_text().splitlines()
        described = [f"description: The library's {name}." if line.startswith("description:") else line
                     for line in lines]  # fmt: skip
        path.write_text("\n".join(described) + "\n")
    return load_contracts(folder)


# --- the scaffold, as a user runs it ------------------------------------------------------


@pytest.mark.parametrize("dialect", ["sqlite", "postgresql"])
def test_scaffold_writes_a_contract_from_the_schema(dialect: str, tmp_path: Path) -> None:
    built = library(dialect, tmp_path)
    contracts = tmp_path / "contracts"
    done = run_command(
        ["lakehouse", "contract", "scaffold", built.table("loans"), "--source", built.source.url],
        tmp_path, LAKEHOUSE_CONTRACTS=str(contracts),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "loans.yaml" in done.stdout and "description" in done.stdout
    text = (contracts / "loans.yaml").read_text()
    assert "description: 'TODO: what one row of" in text
    loans = load_contract(contracts / "loans.yaml")
    assert loans.source.table == built.table("loans")
    assert loans.primary_key == ["branch_id", "book_no", "order"]
    assert loans.watermark.column == "updated_at"
    types = {name: (column.type, column.nullable) for name, column in loans.columns.items()}
    assert types == {
        "branch_id": ("int", False),
        "book_no": ("int", False),
        "order": ("int", False),
        "member_id": ("int", True),
        "lent_at": ("timestamp", False),
        "returned_at": ("timestamp", True),
        "updated_at": ("timestamp", False),
    }
    # The composite foreign key to books names two columns: no single-column reference.
    assert {name: column.references for name, column in loans.columns.items() if column.references} == {
        "member_id": "members.member_id"
    }
    assert main(["contract", "scaffold", built.table("books"), "--source", built.source.url,
                 "--output", str(contracts)]) == 0  # fmt: skip
    books = load_contract(contracts / "books.yaml")
    assert books.primary_key == ["branch_id", "book_no"]
    assert {name: column.type for name, column in books.columns.items()} == {
        "branch_id": "int", "book_no": "int", "title": "string", "select": "bool",
        "price": "decimal(8,2)", "updated_at": "timestamp",
    }  # fmt: skip


def test_scaffold_refuses_to_replace_a_contract_without_force(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    built = library("sqlite", tmp_path)
    contracts = tmp_path / "contracts"
    monkeypatch.setenv("LAKEHOUSE_CONTRACTS", str(contracts))
    contracts.mkdir()
    reviewed = "name: members\ndescription: reviewed by hand\n"
    (contracts / "members.yml").write_text(reviewed)
    args = ["contract", "scaffold", "members", "--source", built.source.url]
    assert main(args) == 2
    assert capsys.readouterr().err.strip().endswith("members.yml exists; --force replaces it")
    assert (contracts / "members.yml").read_text() == reviewed
    assert not (contracts / "members.yaml").exists()
    assert main([*args, "--force"]) == 0
    assert "member_id: {type: int, nullable: false, unique: true}" in (contracts / "members.yml").read_text()


def test_scaffold_prints_to_stdout(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    built = library("sqlite", tmp_path)
    assert main(["contract", "scaffold", "books", "--source", built.source.url, "--output", "-"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("# Scaffolded from the source table books")
    (tmp_path / "books.yaml").write_text(out)
    assert load_contract(tmp_path / "books.yaml").name == "books"


def _readings(path: Path) -> None:
    """Sensor readings: no updated_at, one text timestamp named like nothing, no key on log."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(path) as connection:
        connection.executescript(
            """CREATE TABLE readings (sensor_id INTEGER NOT NULL, taken TEXT NOT NULL, value REAL,
                   seen_at TEXT, PRIMARY KEY (sensor_id, taken));
               CREATE INDEX readings_taken ON readings (taken);
               INSERT INTO readings VALUES (1, '2013-06-30 18:00:00', 20.5, NULL),
                   (1, '2013-06-30T18:05:00.250Z', 20.75, NULL);
               CREATE TABLE log (line TEXT, logged_at TEXT);"""
        )
    connection.close()


def test_scaffold_without_a_watermark_explains_what_to_do(tmp_path: Path) -> None:
    path = tmp_path / "sensors.db"
    _readings(path)
    done = run_command(
        ["lakehouse", "contract", "scaffold", "readings", "--source", f"sqlite:///{path}", "--output", "-"],
        tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert "has no watermark column" in done.stderr and "Traceback" not in done.stderr
    text = done.stdout
    assert "# A database source needs one" in text and "#   column: taken" in text
    contract = tmp_path / "readings.yaml"
    contract.write_text(text)
    with pytest.raises(ContractError, match="a database source needs a watermark column"):
        load_contract(contract)
    # The text column is a timestamp by its values, the empty one by its name.
    contract.write_text(
        text.replace("# watermark:\n#   column: taken\n#   lookback: 1h", "watermark:\n  column: taken")
    )
    readings = load_contract(contract)
    assert {name: column.type for name, column in readings.columns.items()} == {
        "sensor_id": "int", "taken": "timestamp", "value": "float", "seen_at": "timestamp"
    }  # fmt: skip
    assert readings.primary_key == ["sensor_id", "taken"]


@pytest.mark.parametrize(
    ("table", "source", "message"),
    [
        ("shelves", "sqlite:///{db}", "sqlite:sensors.db: table 'shelves' does not exist"),
        ("log", "sqlite:///{db}", "log: the table has no primary key; declare one in the source"),
        ("readings", "mysql://localhost/library", "unsupported scheme 'mysql'"),
        ("readings", "sqlite:///{folder}/missing.db", "missing.db does not exist"),
    ],
)
def test_scaffold_errors_are_one_line_with_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture, table: str, source: str, message: str
) -> None:
    _readings(tmp_path / "sensors.db")
    url = source.format(db=tmp_path / "sensors.db", folder=tmp_path)
    assert (
        main(["contract", "scaffold", table, "--source", url, "--output", str(tmp_path / "contracts")]) == 2
    )
    error = capsys.readouterr().err
    assert len(error.strip().splitlines()) == 1 and message in error, error
    assert not (tmp_path / "contracts").exists()


@pytest.mark.slow
def test_scaffold_names_an_unknown_postgres_table(capsys: pytest.CaptureFixture) -> None:
    assert main(["contract", "scaffold", "nowhere.shelves", "--source", postgres_source().url]) == 2
    assert "table 'nowhere.shelves' does not exist" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("declared", "expected"),
    [
        ("INTEGER", "int"), ("bigint", "int"), ("smallint", "int"), ("UNSIGNED BIG INT", "int"),
        ("REAL", "float"), ("double precision", "float"), ("FLOAT", "float"), ("numeric", "float"),
        ("numeric(12,2)", "decimal(12,2)"), ("DECIMAL(8, 3)", "decimal(8,3)"),
        ("TEXT", "string"), ("character varying(40)", "string"), ("NVARCHAR(10)", "string"),
        ("uuid", "string"),
        ("", "string"), ("interval", "string"), ("point", "string"), ("BOOLEAN", "bool"), ("DATE", "date"),
        ("DATETIME", "timestamp"), ("timestamp without time zone", "timestamp"),
        ("timestamp with time zone", "timestamp"), ("jsonb", "json"),
    ],
)  # fmt: skip
def test_declared_types_map_to_contract_types(declared: str, expected: str) -> None:
    assert declared_type(declared) == expected


def test_the_watermark_is_an_indexed_update_time_first() -> None:
    def schema(indexed: set[str]) -> TableSchema:
        return TableSchema("t", [], ["id"], indexed, set(), {})

    types = {"id": "int", "created_at": "timestamp", "updated_at": "timestamp", "modified_at": "timestamp"}
    assert watermark_column(schema(set()), types) == "updated_at"
    assert watermark_column(schema({"modified_at"}), types) == "modified_at"
    assert watermark_column(schema({"created_at"}), {"id": "int", "created_at": "timestamp"}) is None


# --- bronze and silver on the library, end to end -------------------------------------------


def _moments(column: pl.Series) -> pl.Series:
    """A watermark column as UTC moments, whichever form bronze holds it in (SQLite text)."""
    if column.dtype != pl.String:
        return column.dt.convert_time_zone("UTC")
    with_offset = column.str.to_datetime("%Y-%m-%d %H:%M:%S%.f%:z", strict=False, time_unit="us")
    naive = column.str.to_datetime("%Y-%m-%d %H:%M:%S", strict=False, time_unit="us").dt.replace_time_zone(
        "UTC"
    )
    return with_offset.dt.convert_time_zone("UTC").fill_null(naive)


def _versions(frame: pl.DataFrame, key: list[str]) -> set[tuple]:
    return set(frame.select(*key, _moments(frame.get_column("updated_at"))).iter_rows())


def _keys(frame: pl.DataFrame, key: list[str]) -> set[tuple]:
    return set(frame.select(key).iter_rows())


def _silver_counts(result: dg.ExecuteInProcessResult, name: str) -> dict:
    [event] = [
        e for e in result.get_asset_materialization_events() if e.asset_key == dg.AssetKey(["silver", name])
    ]
    metadata = event.materialization.metadata
    return {field: metadata[field].value for field in ("rows_inserted", "rows_updated", "rows_quarantined")}


def _assert_run(result: dg.ExecuteInProcessResult, orphans: int) -> None:
    """The run succeeded and every check passed but the one that reports orphans, when any."""
    assert result.success, [event.step_key for event in result.get_step_failure_events()]
    failed = [
        (e.asset_key.to_user_string(), e.check_name)
        for e in result.get_asset_check_evaluations()
        if not e.passed
    ]
    assert failed == ([("silver/loans", "references")] if orphans else []), failed


@pytest.mark.slow
@pytest.mark.parametrize(
    "realistic", [True, False], ids=["reserved-names-naive-timestamps", "plain-names-offsets"]
)
@pytest.mark.parametrize("dialect", ["sqlite", "postgresql"])
def test_library_end_to_end(dialect: str, realistic: bool, tmp_path: Path) -> None:
    if dialect == "postgresql" and not POSTGRES_URL:
        postgres_source()  # skips (or fails in CI) with the reason
    built = library(dialect, tmp_path, realistic)
    contracts = scaffold_contracts(built, tmp_path / "contracts")
    storage = LakehouseStorage(root=str(tmp_path / "lakehouse"))
    instance = dg.DagsterInstance.ephemeral()
    keys = {name: built.primary_key(name) for name in TABLES}

    first = materialize(contracts, built.source, tmp_path, instance, TEST_SALT)
    _assert_run(first, len(built.orphans()))
    before = {name: _versions(built.truth(name), keys[name]) for name in TABLES}
    orphans_before = built.orphans()
    _assert_lake(built, storage, keys, before)

    changes = built.change()
    second = materialize(contracts, built.source, tmp_path, instance, TEST_SALT)
    _assert_run(second, len(built.orphans()))
    # Bronze holds every version the source has shown: the first ones and the changed ones.
    shown = {name: before[name] | _versions(built.truth(name), keys[name]) for name in TABLES}
    _assert_lake(built, storage, keys, shown)
    # The member that arrived resolves exactly its loans' orphan flags (checked in _assert_lake).
    assert built.orphans() == orphans_before - _orphan_loans(built, ORPHAN_MEMBERS[0]) != orphans_before
    for name in TABLES:
        key, now = keys[name], _versions(built.truth(name), keys[name])
        bronze = pl.read_delta(storage.table_uri("bronze", name))
        # The incremental run appended exactly the new versions: the changed and the new rows.
        appended = _versions(bronze.filter(pl.col("_run_id") == second.run_id), key)
        assert appended == now - before[name]
        assert {version[:-1] for version in appended} == changes[name].updated | changes[name].inserted
        # ... and silver updated exactly those keys (plus loans whose member has arrived).
        assert _silver_counts(second, name) == {
            "rows_inserted": len(changes[name].inserted),
            "rows_updated": len(changes[name].updated),
            "rows_quarantined": 0,
        }
        silver = pl.read_delta(storage.table_uri("silver", name))
        first_load = silver.get_column("_loaded_at").min()
        touched = _keys(silver.filter(pl.col("_loaded_at") > first_load), key)
        resolved = orphans_before - built.orphans() if name == "loans" else set()
        assert touched == changes[name].updated | changes[name].inserted | resolved


def _orphan_loans(built: LibrarySource, member_id: int) -> set[tuple]:
    return {built.key_of("loans", row) for row in built.rows["loans"] if row["member_id"] == member_id}


def _assert_lake(
    built: LibrarySource, storage: LakehouseStorage, keys: dict[str, list[str]], shown: dict[str, set[tuple]]
) -> None:
    """Source = bronze's versions = silver + quarantine, per key, with the source's values."""
    for name in TABLES:
        key, truth = keys[name], built.truth(name)
        bronze = pl.read_delta(storage.table_uri("bronze", name))
        # Every version the source has `shown` is in bronze, once.
        assert bronze.select(*key, "updated_at").is_duplicated().sum() == 0
        assert _versions(bronze, key) == shown[name]
        quarantine = delta.open_table(storage.table_uri("quarantine", name))
        assert quarantine is None or pl.read_delta(storage.table_uri("quarantine", name)).is_empty()
        silver = pl.read_delta(storage.table_uri("silver", name))
        # Every value, null and type as the source holds it (naive timestamps read as UTC).
        assert silver.select(truth.columns).sort(key).equals(truth.sort(key)), name
        assert silver.select(truth.columns).schema == truth.schema
    loans = pl.read_delta(storage.table_uri("silver", "loans"))
    flagged = loans.filter(pl.col("_orphan").is_not_null())
    assert _keys(flagged, keys["loans"]) == built.orphans()
    assert set(flagged.get_column("_orphan")) <= {"member_id not in members"}
