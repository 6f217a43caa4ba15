"""Change data capture from PostgreSQL: a library's members and loans, read from their change
stream into bronze.

The pgoutput decoder is tested on bytes; everything else runs against the real PostgreSQL
`.ci/run` starts (skipped without LAKEHOUSE_TEST_POSTGRES_URL), in a schema of its own that
each test drops with the slots and publications it made.
"""

import os
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import textwrap
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path

import dagster as dg
import polars as pl
import pytest
import yaml
from conftest import PROJECT, Lake, error_line, postgres_source, run_command

from asset_checks import all_checks
from lakehouse.bronze import cdc, cdc_slot, cdc_writer, pgoutput, tombstones
from lakehouse.bronze.assets import bronze_assets
from lakehouse.bronze.columns import DELETE, INSERT, LSN, OP, UPDATE
from lakehouse.monitoring.health import observe
from lakehouse.monitoring.metrics import families
from lakehouse.resources import AlertSink, Clock, LakehouseStorage, LandingZone, PiiHasher, SourceDatabase
from lakehouse.silver.assets import silver_assets
from lakehouse.sources.contract import Contract
from lakehouse.storage import delta, ledger

CONTRACTS = {
    "loans": """\
name: loans
description: Books lent to members.
source: {{kind: database, table: {schema}.loans, capture: cdc}}
primary_key: [loan_id]
watermark: {{column: updated_at}}
columns:
  loan_id: {{type: int, nullable: false}}
  member_id: {{type: int}}
  status: {{type: string}}
  updated_at: {{type: timestamp, nullable: false}}
""",
    "members": """\
name: members
description: The library's members.
source: {{kind: database, table: {schema}.members, capture: cdc}}
primary_key: [member_id]
watermark: {{column: updated_at}}
columns:
  member_id: {{type: int, nullable: false}}
  name: {{type: string}}
  updated_at: {{type: timestamp, nullable: false}}
""",
}
TABLES = [
    "CREATE TABLE {schema}.members (member_id bigint PRIMARY KEY, name text, "
    "updated_at timestamptz NOT NULL)",
    "CREATE TABLE {schema}.loans (loan_id bigint PRIMARY KEY, member_id bigint, status text, "
    "updated_at timestamptz NOT NULL DEFAULT now())",
    "INSERT INTO {schema}.loans (loan_id, member_id, status) VALUES (1, 1, 'open'), (2, 1, 'open'), "
    "(3, 2, 'open')",
]


@dataclass
class Library:
    """A library schema in the test PostgreSQL, its contracts and a lakehouse in a temp folder."""

    folder: Path
    source: SourceDatabase
    schema: str

    def execute(self, *statements: str) -> None:
        """Statements in one transaction, `{schema}` replaced by the test's schema."""
        self.source.execute([statement.format(schema=self.schema) for statement in statements])

    def contract(self, name: str, text: str | None = None) -> Contract:
        return Contract.model_validate(yaml.safe_load(self.contract_text(name, text)))

    def contract_text(self, name: str, text: str | None = None) -> str:
        return (text or CONTRACTS[name]).format(schema=self.schema)

    def uri(self, name: str) -> str:
        return LakehouseStorage(root=str(self.folder / "lakehouse")).table_uri("bronze", name)

    def capture(self, name: str = "loans", **options) -> cdc_writer.Capture:
        return cdc.capture(self.contract(name), self.source, self.uri(name), "test-run", **options)

    def bronze(self, name: str = "loans") -> pl.DataFrame:
        return pl.read_delta(self.uri(name)).sort(LSN, "loan_id" if name == "loans" else "member_id")

    def slot(self, name: str = "loans") -> dict | None:
        found = self.source.read(
            "SELECT (confirmed_flush_lsn - '0/0')::bigint AS confirmed FROM pg_replication_slots "
            "WHERE slot_name = $1",
            [cdc_slot.capture_name(self.contract(name), self.uri(name))],
        )
        return None if found.is_empty() else found.row(0, named=True)

    def ledger_lsn(self, name: str = "loans") -> int | None:
        return ledger.read(delta.open_table(self.uri(name)), ledger.bronze_lsn(name))


def live(library: Library, name: str = "loans") -> list[int]:
    """The keys bronze holds as present in the source."""
    contract = library.contract(name)
    keys = tombstones.live_keys(library.bronze(name), contract)
    return sorted(keys.get_column(contract.primary_key[0]).to_list())


@pytest.fixture
def library(tmp_path: Path) -> Iterator[Library]:
    source = postgres_source()
    built = Library(tmp_path, source, f"library_{uuid.uuid4().hex[:8]}")
    built.execute("CREATE SCHEMA {schema}", *TABLES)
    yield built
    for name in CONTRACTS:
        cdc_slot.release(built.contract(name), source, built.uri(name))
    built.execute("DROP SCHEMA {schema} CASCADE")


# The decoder, on bytes as pgoutput sends them.


def _tuple(*values: str | None) -> bytes:
    parts = [struct.pack(">h", len(values))]
    for value in values:
        parts.append(
            b"n" if value is None else b"t" + struct.pack(">i", len(value.encode())) + value.encode()
        )
    return b"".join(parts)


def test_the_decoder_reads_every_message_change_capture_needs() -> None:
    assert pgoutput.decode(b"B" + struct.pack(">Qqi", 0x1_0000_0010, 123, 77)) == pgoutput.Begin(
        0x1_0000_0010, 77
    )
    assert pgoutput.decode(b"C\0" + struct.pack(">QQq", 0x20, 0x48, 0)) == pgoutput.Commit(0x20, 0x48)
    relation = (
        b"R"
        + struct.pack(">I", 16386)
        + b"library\0loans\0d"
        + struct.pack(">h", 2)
        + b"\x01loan_id\0"
        + struct.pack(">Ii", 20, -1)
        + b"\x00status\0"
        + struct.pack(">Ii", 25, -1)
    )
    assert pgoutput.decode(relation) == pgoutput.Relation(
        16386,
        "library",
        "loans",
        "d",
        (pgoutput.RelationColumn("loan_id", True, 20, -1), pgoutput.RelationColumn("status", False, 25, -1)),
    )
    oid = struct.pack(">I", 16386)
    assert pgoutput.decode(b"I" + oid + b"N" + _tuple("7", "open")) == pgoutput.Insert(16386, ("7", "open"))
    assert pgoutput.decode(b"U" + oid + b"N" + _tuple("7", "gone")) == pgoutput.Update(
        16386, None, ("7", "gone")
    )
    assert pgoutput.decode(b"U" + oid + b"O" + _tuple("7", "open") + b"N" + _tuple("7", "é")) == (
        pgoutput.Update(16386, ("7", "open"), ("7", "é"))
    )
    assert pgoutput.decode(b"D" + oid + b"K" + _tuple("7", None)) == pgoutput.Delete(16386, ("7", None))
    unchanged = pgoutput.decode(b"U" + oid + b"N" + struct.pack(">h", 2) + b"t\0\0\0\x017u")
    assert unchanged == pgoutput.Update(16386, None, ("7", pgoutput.UNCHANGED))
    truncate = b"T" + struct.pack(">iB", 2, 0) + struct.pack(">II", 16386, 16390)
    assert pgoutput.decode(truncate) == pgoutput.Truncate((16386, 16390))
    assert pgoutput.decode(b"O" + struct.pack(">Q", 1) + b"origin\0") is None


def test_the_decoder_refuses_bytes_that_are_not_a_message() -> None:
    for data, reason in [
        (b"", "empty"),
        (b"B\0\0", "more expected"),
        (b"I\0\0\x40\x02X", "expected a tuple tagged N"),
        (b"I\0\0\x40\x02N\0\x01b", "unknown kind 'b'"),
        (b"Z", "unknown message kind"),
    ]:
        with pytest.raises(pgoutput.DecodeError, match=reason):
            pgoutput.decode(data)


# Against PostgreSQL.


@pytest.mark.slow
@pytest.mark.parametrize("batch_changes", [cdc.BATCH_CHANGES, 1])
def test_a_snapshot_then_every_insert_update_and_delete_in_commit_order(
    library: Library, batch_changes: int
) -> None:
    first = library.capture(batch_changes=batch_changes)
    bronze = library.bronze()
    assert first.snapshot_rows == 3 and first.lsn_before is None
    assert bronze.select("loan_id", OP).rows() == [(1, INSERT), (2, INSERT), (3, INSERT)]
    start = bronze.get_column(LSN).unique().item()
    assert first.lsn_after == start + 1 == library.ledger_lsn(), "just before the slot's start"

    library.execute(
        "UPDATE {schema}.loans SET status = 'returned' WHERE loan_id = 1",
        "DELETE FROM {schema}.loans WHERE loan_id = 2",
        "INSERT INTO {schema}.loans (loan_id, member_id, status) VALUES (4, 2, 'open')",
    )
    # The same key inserted, deleted and inserted again, each in its own transaction.
    library.execute("INSERT INTO {schema}.loans (loan_id, member_id, status) VALUES (5, 3, 'open')")
    library.execute("DELETE FROM {schema}.loans WHERE loan_id = 5")
    library.execute("INSERT INTO {schema}.loans (loan_id, member_id, status) VALUES (5, 3, 'again')")
    second = library.capture(batch_changes=batch_changes)

    changes = library.bronze().filter(pl.col(LSN) > start)
    assert changes.select("loan_id", OP, "member_id", "status").rows() == [
        (1, UPDATE, 1, "returned"),
        (2, DELETE, None, None),  # a tombstone holds the key only
        (4, INSERT, 2, "open"),
        (5, INSERT, 3, "open"),
        (5, DELETE, None, None),
        (5, INSERT, 3, "again"),
    ]
    assert changes.get_column(LSN).is_sorted() and changes.get_column(LSN).n_unique() == 6
    assert (second.inserted, second.updated, second.deleted, second.rows_appended) == (3, 1, 2, 6)
    assert second.lsn_after == library.ledger_lsn() > start
    assert library.slot()["confirmed"] >= second.lsn_after, "the slot moved past what bronze committed"
    assert live(library) == [1, 3, 4, 5]
    # Typed as the snapshot typed them; the timestamps in UTC.
    assert library.bronze().schema["updated_at"] == pl.Datetime("us", "UTC")

    again = library.capture(batch_changes=batch_changes)
    assert again.rows_appended == 0 and library.bronze().height == 9


@pytest.mark.slow
def test_a_kill_between_the_delta_commit_and_the_slot_advance_loses_and_repeats_nothing(
    library: Library,
) -> None:
    library.capture()
    library.execute("UPDATE {schema}.loans SET status = 'returned' WHERE loan_id = 1")
    library.execute("DELETE FROM {schema}.loans WHERE loan_id = 3")
    slot_before = library.slot()["confirmed"]
    contract_file = library.folder / "loans.yaml"
    contract_file.write_text(library.contract_text("loans"))
    # A real process, SIGKILLed by itself at the moment it would advance the slot: after the
    # Delta commit of the batch, before the slot forgets it.
    script = textwrap.dedent(
        """
        import os, signal, sys
        from pathlib import Path
        from lakehouse.bronze import cdc, cdc_slot
        from lakehouse.sources.contract_files import load_contract
        from lakehouse.resources import SourceDatabase

        cdc_slot.advance = lambda *_: os.kill(os.getpid(), signal.SIGKILL)
        contract = load_contract(Path(sys.argv[1]))
        cdc.capture(contract, SourceDatabase(url=sys.argv[2]), sys.argv[3], "killed-run")
        """
    )
    killed = subprocess.run(
        [sys.executable, "-c", script, str(contract_file), library.source.url, library.uri("loans")],
        cwd=PROJECT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert library.bronze().height == 5, "the batch was committed"
    assert library.slot()["confirmed"] == slot_before, "and the slot not advanced"

    # A re-run with no cleanup: the same transactions are read again, and skipped.
    rerun = library.capture()
    assert rerun.rows_appended == 0 and rerun.lsn_after == library.ledger_lsn()
    assert library.slot()["confirmed"] > slot_before
    library.execute("INSERT INTO {schema}.loans (loan_id, member_id, status) VALUES (6, 1, 'open')")
    library.capture()

    bronze = library.bronze()
    changes = bronze.filter(pl.col(LSN) > bronze.get_column(LSN).min())
    assert changes.select("loan_id", OP).rows() == [(1, UPDATE), (3, DELETE), (6, INSERT)]
    assert live(library) == [1, 2, 6]


@pytest.mark.slow
def test_two_captures_at_once_append_each_change_once(library: Library) -> None:
    library.capture()
    for loan in range(10, 40):
        library.execute(
            f"INSERT INTO {{schema}}.loans (loan_id, member_id, status) VALUES ({loan}, 1, 'open')"
        )
    outcomes: list[str] = []

    def capture() -> None:
        try:
            library.capture(batch_changes=5)
            outcomes.append("done")
        except ledger.LedgerMoved:
            outcomes.append("overtaken")  # as for watermarks: the other run did the work

    runs = [threading.Thread(target=capture) for _ in range(2)]
    for run in runs:
        run.start()
    for run in runs:
        run.join()

    assert "done" in outcomes
    bronze = library.bronze()
    assert bronze.height == 33 and bronze.get_column("loan_id").n_unique() == 33


@pytest.mark.slow
def test_a_transaction_touching_two_tables_reaches_both_bronze_tables(library: Library) -> None:
    library.execute("INSERT INTO {schema}.members VALUES (1, 'Ada', now()), (2, 'Bo', now())")
    library.capture("members")
    library.capture("loans")
    library.execute(
        "INSERT INTO {schema}.members VALUES (3, 'Cy', now())",
        "INSERT INTO {schema}.loans (loan_id, member_id, status) VALUES (10, 3, 'open')",
        "DELETE FROM {schema}.members WHERE member_id = 1",
    )
    members, loans = library.capture("members"), library.capture("loans")

    assert (members.inserted, members.deleted, loans.inserted, loans.deleted) == (1, 1, 1, 0)
    member_changes = library.bronze("members").filter(pl.col(LSN) > pl.col(LSN).min())
    assert member_changes.select("member_id", OP, "name").rows() == [(3, INSERT, "Cy"), (1, DELETE, None)]
    loan_changes = library.bronze("loans").filter(pl.col(LSN) > pl.col(LSN).min())
    assert loan_changes.select("loan_id", OP, "member_id").rows() == [(10, INSERT, 3)]
    assert live(library, "members") == [2, 3]


@pytest.mark.slow
def test_a_truncate_is_a_tombstone_for_every_live_key(library: Library) -> None:
    library.capture()
    library.execute("INSERT INTO {schema}.loans (loan_id, member_id, status) VALUES (4, 2, 'open')")
    library.execute("TRUNCATE {schema}.loans")
    library.execute("INSERT INTO {schema}.loans (loan_id, member_id, status) VALUES (7, 1, 'open')")
    result = library.capture()

    bronze = library.bronze()
    changes = bronze.filter(pl.col(LSN) > pl.col(LSN).min())
    assert changes.select("loan_id", OP).rows() == [
        (4, INSERT),
        (1, DELETE),
        (2, DELETE),
        (3, DELETE),
        (4, DELETE),
        (7, INSERT),
    ]
    assert result.deleted == 4 and live(library) == [7]


@pytest.mark.slow
def test_a_publication_dropped_by_someone_else_is_made_again_from_a_snapshot(library: Library) -> None:
    library.capture()
    name = cdc_slot.capture_name(library.contract("loans"), library.uri("loans"))
    library.execute(f"DROP PUBLICATION {name}", "DELETE FROM {schema}.loans WHERE loan_id = 1")
    result = library.capture()

    assert len(result.warnings) == 1 and f"publication {name} is gone" in result.warnings[0]
    assert result.snapshot_rows == 2 and live(library) == [2, 3]
    library.execute("DELETE FROM {schema}.loans WHERE loan_id = 2")
    assert library.capture().deleted == 1 and live(library) == [3]


@pytest.mark.slow
def test_a_column_added_at_the_source_between_two_changes_of_one_batch_reaches_bronze(
    library: Library,
) -> None:
    library.capture()
    library.execute("UPDATE {schema}.loans SET status = 'late' WHERE loan_id = 1")
    library.execute("ALTER TABLE {schema}.loans ADD COLUMN due_on date")
    library.execute(
        "INSERT INTO {schema}.loans (loan_id, member_id, status, due_on) VALUES (4, 1, 'open', '2026-12-24')"
    )
    library.capture()

    changes = library.bronze().filter(pl.col(LSN) > pl.col(LSN).min())
    assert changes.select("loan_id", "status", "due_on").rows() == [
        (1, "late", None),
        (4, "open", date(2026, 12, 24)),
    ]


@pytest.mark.slow
def test_a_large_value_an_update_did_not_send_is_taken_from_the_previous_version(library: Library) -> None:
    # Random text too large to stay in the row: PostgreSQL keeps it aside (TOAST), and an
    # update that does not change it does not send it.
    library.execute(
        "ALTER TABLE {schema}.loans ADD COLUMN note text",
        "UPDATE {schema}.loans SET note = (SELECT string_agg(md5(random()::text), '') "
        "FROM generate_series(1, 300)) WHERE loan_id = 1",
    )
    library.capture()
    library.execute("UPDATE {schema}.loans SET status = 'late' WHERE loan_id = 1")
    library.capture()  # from the snapshot's row
    library.execute("UPDATE {schema}.loans SET status = 'returned' WHERE loan_id = 1")
    library.execute("UPDATE {schema}.loans SET status = 'closed' WHERE loan_id = 1")
    library.capture()  # from bronze, then from the batch itself

    note = library.source.read(f"SELECT note FROM {library.schema}.loans WHERE loan_id = 1").item()
    assert len(note) == 9600
    rows = library.bronze().filter(pl.col("loan_id") == 1)
    assert rows.select(OP, "status").rows() == [
        (INSERT, "open"),
        (UPDATE, "late"),
        (UPDATE, "returned"),
        (UPDATE, "closed"),
    ]
    assert rows.get_column("note").to_list() == [note] * 4


@pytest.mark.slow
def test_a_slot_dropped_by_someone_else_is_made_again_from_a_snapshot_with_a_warning(
    library: Library,
) -> None:
    library.capture()
    name = cdc_slot.capture_name(library.contract("loans"), library.uri("loans"))
    library.source.read("SELECT 1 AS dropped FROM pg_drop_replication_slot($1)", [name])
    # What happens while there is no slot is seen by no stream.
    library.execute(
        "DELETE FROM {schema}.loans WHERE loan_id = 2",
        "UPDATE {schema}.loans SET status = 'lost' WHERE loan_id = 3",
    )
    result = library.capture()

    assert len(result.warnings) == 1 and f"replication slot {name} is gone" in result.warnings[0]
    assert result.snapshot_rows == 2 and result.deleted == 1
    bronze = library.bronze()
    assert live(library) == [1, 3]
    newest = bronze.sort(LSN).group_by("loan_id", maintain_order=True).last().sort("loan_id")
    assert newest.select("loan_id", OP, "status").rows() == [
        (1, INSERT, "open"),
        (2, DELETE, None),
        (3, INSERT, "lost"),
    ]
    assert library.slot() is not None

    library.execute("UPDATE {schema}.loans SET status = 'returned' WHERE loan_id = 1")
    assert library.capture().updated == 1


@pytest.mark.slow
def test_a_table_without_primary_key_is_refused_before_anything_is_created(library: Library) -> None:
    library.execute("CREATE TABLE {schema}.visits (member_id bigint, updated_at timestamptz)")
    text = CONTRACTS["members"].replace(".members,", ".visits,").replace("  name: {{type: string}}\n", "")
    contract = library.contract("members", text)

    with pytest.raises(cdc_slot.CaptureError) as raised:
        cdc.capture(contract, library.source, library.uri("members"), "test-run")
    assert str(raised.value) == (
        f"bronze/members: source table {library.schema}.visits has no primary key or replica identity, "
        "so its updates and deletes cannot name their row (and PostgreSQL would refuse its UPDATEs once "
        "published): add a primary key, or use capture: watermark"
    )
    assert (
        library.source.read(
            "SELECT count(*) AS n FROM pg_publication WHERE pubname = $1",
            [cdc_slot.capture_name(contract, library.uri("members"))],
        ).item()
        == 0
    )
    library.execute("UPDATE {schema}.visits SET member_id = 2")  # the source's own writes still work


@pytest.mark.slow
def test_a_role_without_replication_rights_is_told_so(library: Library) -> None:
    role = f"reader_{uuid.uuid4().hex[:8]}"
    library.execute(f"CREATE ROLE {role} NOSUPERUSER NOREPLICATION", f"GRANT {role} TO current_user")
    try:
        # The test's own login, acting as the role (libpq `options`), as the role would connect.
        separator = "&" if "?" in library.source.url else "?"
        reader = library.source.model_copy(
            update={"url": f"{library.source.url}{separator}options=-c%20role%3D{role}"}
        )
        with pytest.raises(cdc_slot.CaptureError, match=f"role {role} on .* may not use replication slots"):
            cdc.capture(library.contract("loans"), reader, library.uri("loans"), "test-run")
    finally:
        library.execute(f"DROP ROLE {role}")


def test_a_sqlite_source_is_refused_in_one_line(tmp_path: Path) -> None:
    contract = Contract.model_validate(yaml.safe_load(CONTRACTS["loans"].format(schema="main")))
    source = SourceDatabase(url=f"sqlite:///{tmp_path / 'library.db'}")
    with pytest.raises(cdc_slot.CaptureError, match=r"^bronze/loans: capture: cdc needs a PostgreSQL source"):
        cdc.capture(contract, source, str(tmp_path / "bronze"), "test-run")


@pytest.fixture
def replica_server(tmp_path: Path) -> Iterator[SourceDatabase]:
    """A throwaway PostgreSQL 15 with wal_level = replica, on a socket in a temp folder."""
    postgres_source()  # skips where the tests have no PostgreSQL
    binaries = Path("/usr/lib/postgresql/15/bin")
    if not (binaries / "initdb").exists():
        pytest.skip("no PostgreSQL 15 binaries to start a throwaway server")
    folder = Path(tempfile.mkdtemp(prefix="replica_"))
    # initdb refuses root: the server then runs as the postgres user, trusting the socket.
    as_owner = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    if as_owner:
        shutil.chown(folder, "postgres")
    data, role = folder / "data", os.environ.get("USER") or "root"

    def run(*args: str) -> None:
        # No pipes: the server would hold them open, and the call would wait for it to end.
        subprocess.run([*as_owner, *args], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    run(str(binaries / "initdb"), "-D", str(data), "-U", role, "--auth=trust")
    # Only a socket in the temp folder, so any port number is free.
    options = f"-c wal_level=replica -c listen_addresses='' -c unix_socket_directories={folder} -p 5433"
    run(str(binaries / "pg_ctl"), "-D", str(data), "-l", str(folder / "log"), "-o", options, "-w", "start")
    try:
        yield SourceDatabase(url=f"postgresql:///postgres?host={folder}&port=5433&user={role}")
    finally:
        run(str(binaries / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop")
        shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.slow
def test_wal_level_below_logical_names_the_setting_and_the_restart(
    replica_server: SourceDatabase, tmp_path: Path
) -> None:
    contract = Contract.model_validate(yaml.safe_load(CONTRACTS["loans"].format(schema="public")))
    with pytest.raises(cdc_slot.CaptureError) as raised:
        cdc.capture(contract, replica_server, str(tmp_path / "bronze"), "test-run")
    assert str(raised.value).startswith("bronze/loans: postgresql:")
    assert "has wal_level = replica; change capture needs wal_level = logical" in str(raised.value)
    assert "restart the server" in str(raised.value)


@pytest.mark.slow
def test_the_asset_reports_the_capture_and_the_slot_lag_check_alerts(
    library: Library, monkeypatch: pytest.MonkeyPatch
) -> None:
    contracts = [library.contract("loans")]
    alerts = library.folder / "alerts.jsonl"
    resources = {
        "source": library.source,
        "lakehouse": LakehouseStorage(root=str(library.folder / "lakehouse")),
        "alerts": AlertSink(log_path=str(alerts)),
    }
    assets = [*bronze_assets(contracts), *all_checks(contracts)]
    selection = dg.AssetSelection.assets(["bronze", "loans"])
    instance = dg.DagsterInstance.ephemeral()

    def materialize() -> dg.ExecuteInProcessResult:
        return dg.materialize(assets, selection=selection, resources=resources, instance=instance)

    first = materialize()
    metadata = first.get_asset_materialization_events()[0].materialization.metadata
    assert metadata["snapshot_rows"].value == 3 and metadata["lsn_before"].value == "none"
    assert metadata["slot_lag_bytes"].value >= 0
    (lag,) = [e for e in first.get_asset_check_evaluations() if e.check_name == "slot_lag"]
    assert lag.passed and not alerts.exists()

    library.execute(
        "UPDATE {schema}.loans SET status = 'returned' WHERE loan_id = 1",
        "DELETE FROM {schema}.loans WHERE loan_id = 2",
    )
    monkeypatch.setenv("LAKEHOUSE_CDC_MAX_SLOT_LAG_BYTES", "0")
    second = materialize()
    metadata = second.get_asset_materialization_events()[0].materialization.metadata
    counts = (metadata["rows_updated"].value, metadata["rows_deleted"].value, metadata["rows_inserted"].value)
    assert counts == (1, 1, 0)
    assert metadata["lsn_after"].value != metadata["lsn_before"].value
    # Other activity on the server after the run: WAL the slot now keeps.
    library.execute("CREATE TABLE {schema}.noise AS SELECT generate_series(1, 1000) AS n")
    third = materialize()
    (lag,) = [e for e in third.get_asset_check_evaluations() if e.check_name == "slot_lag"]
    assert not lag.passed and lag.severity == dg.AssetCheckSeverity.ERROR
    assert lag.metadata["slot_lag_bytes"].value > 0
    assert '"kind": "slot_lag"' in alerts.read_text()
    # The metrics report the same slot, keeping at least that much (nothing advanced it since).
    landing = LandingZone(path=str(library.folder / "landing"))
    health = observe(
        instance, contracts, [], resources["lakehouse"], landing, library.source, datetime.now(UTC)
    )
    (reported,) = [
        family for family in families(health, 3600, 0) if family.name == "lakehouse_cdc_slot_lag_bytes"
    ]
    (sample,) = reported.samples
    assert sample.labels == {"table": "loans"} and sample.value >= lag.metadata["slot_lag_bytes"].value


def test_release_drops_the_lakehouse_slot_and_publication_and_nothing_else(library: Library) -> None:
    library.capture()
    contracts = library.folder / "contracts"
    contracts.mkdir()
    (contracts / "loans.yaml").write_text(library.contract_text("loans"))
    theirs = f"theirs_{uuid.uuid4().hex[:8]}"
    library.execute(f"CREATE PUBLICATION {theirs} FOR TABLE {{schema}}.members")
    library.source.read("SELECT 1 AS made FROM pg_create_logical_replication_slot($1, 'pgoutput')", [theirs])
    env = {
        "LAKEHOUSE_CONTRACTS": str(contracts),
        "LAKEHOUSE_SOURCE_URL": library.source.url,
        "LAKEHOUSE_ROOT": str(library.folder / "lakehouse"),
    }
    try:
        done = run_command(["lakehouse", "source", "release", "loans"], library.folder, **env)
        assert done.returncode == 0, done.stderr
        name = cdc_slot.capture_name(library.contract("loans"), library.uri("loans"))
        assert done.stdout.splitlines() == [
            f"loans: dropped replication slot {name} on {library.source.label}",
            f"loans: dropped publication {name} on {library.source.label}",
        ]
        slots = library.source.read("SELECT slot_name FROM pg_replication_slots").get_column("slot_name")
        publications = library.source.read("SELECT pubname FROM pg_publication").get_column("pubname")
        assert theirs in slots.to_list() and name not in slots.to_list()
        assert theirs in publications.to_list() and name not in publications.to_list()

        again = run_command(["lakehouse", "source", "release", "loans"], library.folder, **env)
        assert again.stdout.startswith("loans: the lakehouse holds no replication slot or publication")
        unknown = run_command(["lakehouse", "source", "release", "lending"], library.folder, **env)
        assert error_line(unknown).startswith("lakehouse source release: no contract named 'lending'")
    finally:
        library.source.read("SELECT 1 AS dropped FROM pg_drop_replication_slot($1)", [theirs])
        library.execute(f"DROP PUBLICATION {theirs}")


@pytest.mark.slow
def test_silver_holds_what_the_source_holds_through_inserts_updates_deletes_and_a_truncate(
    library: Library,
) -> None:
    contracts = [library.contract("loans")]
    resources = {
        "source": library.source,
        "lakehouse": LakehouseStorage(root=str(library.folder / "lakehouse")),
        "alerts": AlertSink(log_path=str(library.folder / "alerts.jsonl")),
        "pii": PiiHasher(salt="test-salt"),
        "clock": Clock(now=datetime.now(UTC).isoformat()),
    }
    assets = [*bronze_assets(contracts), *silver_assets(contracts), *all_checks(contracts)]
    instance = dg.DagsterInstance.ephemeral()

    def run_and_compare() -> None:
        result = dg.materialize(assets, resources=resources, instance=instance, raise_on_error=False)
        failed = {e.check_name for e in result.get_asset_check_evaluations() if not e.passed}
        assert result.success and not failed, failed
        columns = ["loan_id", "member_id", "status"]
        source = library.source.read(f"SELECT {', '.join(columns)} FROM {library.schema}.loans")
        silver = pl.read_delta(resources["lakehouse"].table_uri("silver", "loans")).select(columns)
        assert silver.sort("loan_id").rows() == source.sort("loan_id").rows()

    run_and_compare()
    library.execute(
        "UPDATE {schema}.loans SET status = 'returned', updated_at = now() WHERE loan_id = 1",
        "DELETE FROM {schema}.loans WHERE loan_id = 2",
        "INSERT INTO {schema}.loans (loan_id, member_id, status) VALUES (4, 2, 'open')",
    )
    library.execute("DELETE FROM {schema}.loans WHERE loan_id = 4")
    library.execute("INSERT INTO {schema}.loans (loan_id, member_id, status) VALUES (4, 3, 'again')")
    run_and_compare()
    library.execute("TRUNCATE {schema}.loans")
    library.execute("INSERT INTO {schema}.loans (loan_id, member_id, status) VALUES (9, 1, 'open')")
    run_and_compare()


@dataclass
class CapturedLake(Lake):
    """The demo shop with an alerts log, which the slot_lag check writes to."""

    @property
    def resources(self) -> dict[str, dg.ConfigurableResource]:
        return {**super().resources, "alerts": AlertSink(log_path=str(self.folder / "alerts.jsonl"))}


@pytest.mark.slow
def test_the_demo_shop_on_postgresql_captures_orders_and_items_deletes_included(tmp_path: Path) -> None:
    lake = CapturedLake(tmp_path, postgres_source())
    captured = ("orders", "order_items")
    lake.contracts = [
        contract.model_copy(update={"source": contract.source.model_copy(update={"capture": "cdc"})})
        if contract.name in captured
        else contract
        for contract in lake.contracts
    ]
    lake.init()
    try:
        for batch in range(2):  # the first load, then a batch of inserts, updates and deletes
            result = lake.materialize()
            assert result.success
            for name in captured:
                key = lake.contract(name).primary_key
                source = lake.source_rows(name).select(key)
                silver = lake.table("silver", name).select(key)
                quarantined = lake.table("quarantine", name).select(key) if name == "orders" else None
                assert silver.join(source, on=key, how="anti").is_empty(), f"{name}: a deleted key in silver"
                missing = source.join(silver, on=key, how="anti")
                if quarantined is not None:
                    missing = missing.join(quarantined, on=key, how="anti")
                assert missing.is_empty(), f"{name}: source rows neither in silver nor quarantined"
            if batch == 0:
                lake.advance()
        deleted = lake.manifest.log[-1]["deleted"]
        assert deleted["orders"] > 0 and deleted["order_items"] > 0
        tombstones = lake.table("bronze", "orders").filter(pl.col(OP) == DELETE)
        assert tombstones.height == deleted["orders"]
    finally:
        for name in captured:
            cdc_slot.release(lake.contract(name), lake.source, lake.uri("bronze", name))
