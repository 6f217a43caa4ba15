"""Timestamps in the forms real sources hold, read as UTC instants, and watermarks over them.

The source is a small weather network's sensor readings (not the shop): text timestamps in
mixed forms in SQLite, `TIMESTAMP` and `TIMESTAMPTZ` columns in PostgreSQL, epoch numbers,
and a contract time zone that is not UTC.
"""

import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest
import yaml
from conftest import postgres_source

from lakehouse.bronze.columns import BronzeSchemaError, pin_types
from lakehouse.bronze.database import extract_table
from lakehouse.bronze.watermark import WatermarkRange
from lakehouse.resources import LakehouseStorage, PiiHasher, SourceDatabase
from lakehouse.silver.load import load_silver
from lakehouse.silver.validate import split_valid
from lakehouse.sources.contract import Contract
from lakehouse.sources.contract_files import ContractError, load_contract
from lakehouse.sources.timestamps import UTC_TIMESTAMP, TimestampForm, to_utc
from lakehouse.storage import delta


def utc(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)


def parsed(values: list, form: TimestampForm, dtype: pl.DataType | None = None) -> list:
    series = pl.Series("value", values, dtype=dtype)
    return series.to_frame().select(to_utc(pl.col("value"), series.dtype, form)).to_series().to_list()


# Text forms, in a contract zone of Europe/Paris (UTC+2 in summer), and the instants they name.
TEXT_FORMS = {
    "2013-06-30 18:00:00": utc(2013, 6, 30, 16),  # SQLite's CURRENT_TIMESTAMP form, local
    "2013-06-30T18:00:00": utc(2013, 6, 30, 16),
    "2013-06-30 18:00:00.5": utc(2013, 6, 30, 16, 0, 0, 500000),
    "2013-06-30T18:00:00.123456789": utc(2013, 6, 30, 16, 0, 0, 123456),
    "2013-06-30 18:00:00Z": utc(2013, 6, 30, 18),
    "2013-06-30T18:00:00.250Z": utc(2013, 6, 30, 18, 0, 0, 250000),
    "2013-06-30 20:00:00+02:00": utc(2013, 6, 30, 18),
    "2013-06-30T20:00:00+0200": utc(2013, 6, 30, 18),
    "2013-06-30T20:00:00+02": utc(2013, 6, 30, 18),
    "2013-06-30 12:30:00.000001-05:30": utc(2013, 6, 30, 18, 0, 0, 1),
    "2013-06-30 18:00:00.000000+00:00": utc(2013, 6, 30, 18),  # the demo's canonical form
    "2013-06-30": utc(2013, 6, 29, 22),  # midnight, local
    "2013-10-27 02:30:00": utc(2013, 10, 27, 0, 30),  # clocks go back: the first 02:30
}
# Words, impossible dates, and a wall-clock time skipped when clocks went forward.
UNREADABLE = ["yesterday", "2013-13-01 00:00:00", "2013-06-31", "2013-03-31 02:30:00", ""]


def test_every_accepted_text_form_reads_as_its_utc_instant() -> None:
    form = TimestampForm(time_zone="Europe/Paris")
    assert parsed(list(TEXT_FORMS), form) == list(TEXT_FORMS.values())
    assert parsed(UNREADABLE, form) == [None] * len(UNREADABLE)


def test_naive_values_are_utc_by_default_and_offsets_keep_their_instant() -> None:
    values = ["2013-06-30 18:00:00", "2013-06-30T20:00:00+02:00", "2013-06-30"]
    assert parsed(values, TimestampForm()) == [utc(2013, 6, 30, 18), utc(2013, 6, 30, 18), utc(2013, 6, 30)]


def test_database_timestamps_naive_in_the_contract_zone_and_aware_as_they_are() -> None:
    form = TimestampForm(time_zone="America/New_York")
    naive = [datetime(2013, 6, 30, 18), datetime(2013, 1, 15, 7, 30)]
    assert parsed(naive, form) == [utc(2013, 6, 30, 22), utc(2013, 1, 15, 12, 30)]
    aware = [utc(2013, 6, 30, 18)]
    assert parsed(aware, form, pl.Datetime("us", "UTC")) == aware
    assert parsed([datetime(2013, 6, 30).date()], form) == [utc(2013, 6, 30, 4)]


def test_epoch_seconds_and_milliseconds_as_integers_or_digit_text() -> None:
    instant = utc(2013, 6, 30, 18)
    seconds = int(instant.timestamp())
    assert parsed([seconds], TimestampForm(epoch="s")) == [instant]
    assert parsed([seconds * 1000 + 5], TimestampForm(epoch="ms")) == [instant + timedelta(milliseconds=5)]
    assert parsed([str(seconds), "soon"], TimestampForm(time_zone="Asia/Tokyo", epoch="s")) == [instant, None]
    # A number is no instant unless the contract says which epoch unit it counts.
    assert parsed([seconds], TimestampForm()) == [None]


def readings_contract(**overrides: object) -> Contract:
    return Contract.model_validate(
        {
            "name": "readings",
            "description": "Sensor readings of a weather network.",
            "source": {"kind": "database", "table": overrides.pop("table", "readings")},
            "primary_key": ["sensor_id", "seq"],
            "watermark": {"column": overrides.pop("watermark", "taken_at"), "lookback": "1h"},
            "time_zone": "Europe/Paris",
            "columns": {
                "sensor_id": {"type": "int", "nullable": False},
                "seq": {"type": "int", "nullable": False},
                "celsius": {"type": "float"},
                "taken_at": {"type": "timestamp", "nullable": False},
                "logged_s": {"type": "timestamp", "epoch": "s"},
                "logged_ms": {"type": "timestamp", "epoch": "ms"},
                **overrides.pop("columns", {}),
            },
            **overrides,
        }
    )


def test_silver_validation_keeps_every_readable_form_and_quarantines_the_rest() -> None:
    texts = [*TEXT_FORMS, "yesterday"]
    frame = pl.DataFrame(
        {
            "sensor_id": [1] * len(texts),
            "seq": list(range(len(texts))),
            "celsius": [20.5] * len(texts),
            "taken_at": texts,
            "logged_s": [str(1372615200)] * len(texts),
            "logged_ms": [1372615200000] * len(texts),
        }
    )
    valid, invalid = split_valid(frame, readings_contract())
    assert valid.schema["taken_at"] == UTC_TIMESTAMP
    assert valid.get_column("taken_at").to_list() == list(TEXT_FORMS.values())
    assert valid.get_column("logged_s").unique().to_list() == [utc(2013, 6, 30, 18)]
    assert invalid.select("taken_at", "_error").rows() == [("yesterday", "taken_at unparseable")]


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("time_zone", "Mars/Olympus", "field 'time_zone': Value error, unknown time zone 'Mars/Olympus'"),
        ("columns", {"seq": {"type": "int", "epoch": "s"}}, "field 'columns.seq': Value error, epoch:"),
    ],
)
def test_a_wrong_time_zone_or_epoch_is_an_error_naming_the_file_and_field(
    tmp_path: Path, field: str, value: object, message: str
) -> None:
    raw = readings_contract().model_dump(mode="json", exclude_defaults=True)
    raw["watermark"]["lookback"] = "1h"
    if field == "columns":
        raw["columns"].update(value)
    else:
        raw[field] = value
    path = tmp_path / "readings.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ContractError) as error:
        load_contract(path)
    assert str(error.value).startswith(f"{path}: ") and message in str(error.value)


class Network:
    """A readings source and a lakehouse in a temporary folder, driven step by step."""

    def __init__(self, folder: Path, source: SourceDatabase, contract: Contract) -> None:
        self.source, self.contract = source, contract
        self.storage = LakehouseStorage(root=str(folder / "lakehouse"))
        self.runs = 0

    def run(self) -> int:
        """Extract and load silver once; the rows bronze appended."""
        self.runs += 1
        uri = self.storage.table_uri("bronze", self.contract.name)
        extraction = extract_table(self.contract, self.source, uri, f"run-{self.runs}")
        load_silver(self.contract, self.storage, PiiHasher(salt="salt"), f"run-{self.runs}")
        return extraction.rows_appended

    def table(self, layer: str) -> pl.DataFrame:
        return pl.read_delta(self.storage.table_uri(layer, self.contract.name))

    def silver(self, column: str) -> dict[tuple[int, int], datetime]:
        return {
            (row[0], row[1]): row[2] for row in self.table("silver").select("sensor_id", "seq", column).rows()
        }

    def assert_each_version_once(self) -> None:
        identity = [*self.contract.primary_key, self.contract.watermark.column]
        assert not self.table("bronze").select(identity).is_duplicated().any()


SQLITE_FIRST = [
    (1, 1, "2013-06-30 18:00:00", 1372615200, "1372615200000"),
    (1, 2, "2013-06-30T18:00:00.5", None, None),
    (1, 3, "2013-06-30 18:00:00Z", None, None),
    (2, 1, "2013-06-30T19:00:00.123456789+02:00", None, None),
    (2, 2, "2013-06-30 21:00:00+0200", None, None),
    (2, 3, "2013-06-30T22:00:00+02", None, None),  # the latest instant, not the greatest text
    (3, 1, "2013-06-30", None, None),
    (3, 2, "2013-06-30 12:00:00-05:00", None, None),
    (3, 3, "2013-06-30 18:30:00.000000+00:00", None, None),
    (9, 9, "yesterday", None, None),  # the greatest text of all, and no instant
]
SQLITE_EXPECTED = {
    (1, 1): utc(2013, 6, 30, 16),
    (1, 2): utc(2013, 6, 30, 16, 0, 0, 500000),
    (1, 3): utc(2013, 6, 30, 18),
    (2, 1): utc(2013, 6, 30, 17, 0, 0, 123456),
    (2, 2): utc(2013, 6, 30, 19),
    (2, 3): utc(2013, 6, 30, 20),
    (3, 1): utc(2013, 6, 29, 22),
    (3, 2): utc(2013, 6, 30, 17),
    (3, 3): utc(2013, 6, 30, 18, 30),
}
# After the first run the watermark is 20:00 UTC; with the hour of lookback the next run reads
# from 19:00 UTC, and the first of these sorts as text below that bound's own text.
SQLITE_SECOND = [
    (4, 1, "2013-06-30 16:30:00-05:00", None, None),  # 21:30 UTC
    (4, 2, "2013-06-30 21:15:00", None, None),  # 19:15 UTC, local
    (1, 1, "2013-06-30 23:00:00.000000+00:00", None, None),  # a new version, canonical form
]


def sqlite_network(folder: Path) -> tuple[Network, sqlite3.Connection]:
    path = folder / "source" / "readings.db"
    path.parent.mkdir(parents=True)
    connection = sqlite3.connect(path, isolation_level=None)
    connection.execute(
        "CREATE TABLE readings (sensor_id INTEGER NOT NULL, seq INTEGER NOT NULL, celsius REAL, "
        "taken_at TEXT, logged_s INTEGER, logged_ms TEXT, PRIMARY KEY (sensor_id, seq))"
    )
    connection.execute("CREATE INDEX readings_taken_at ON readings (taken_at)")
    source = SourceDatabase(url=f"sqlite:///{path}", backoff_seconds=0.05)
    return Network(folder, source, readings_contract()), connection


def upsert_sqlite(connection: sqlite3.Connection, rows: list[tuple]) -> None:
    connection.executemany(
        "INSERT OR REPLACE INTO readings VALUES (?, ?, 20.5, ?, ?, ?)",
        rows,
    )


def test_sqlite_text_in_mixed_forms_lands_in_silver_as_utc_and_runs_again_exactly(tmp_path: Path) -> None:
    network, connection = sqlite_network(tmp_path)
    upsert_sqlite(connection, SQLITE_FIRST)

    assert network.run() == len(SQLITE_FIRST)
    assert network.silver("taken_at") == SQLITE_EXPECTED
    assert network.silver("logged_ms")[(1, 1)] == network.silver("logged_s")[(1, 1)] == utc(2013, 6, 30, 18)
    quarantine = network.table("quarantine")
    assert quarantine.select("sensor_id", "_error").rows() == [(9, "taken_at unparseable")]

    upsert_sqlite(connection, SQLITE_SECOND)
    assert network.run() == len(SQLITE_SECOND)
    assert network.silver("taken_at") == SQLITE_EXPECTED | {
        (4, 1): utc(2013, 6, 30, 21, 30),
        (4, 2): utc(2013, 6, 30, 19, 15),
        (1, 1): utc(2013, 6, 30, 23),
    }
    assert network.run() == 0
    network.assert_each_version_once()
    assert network.table("quarantine").height == 1


def test_sqlite_epoch_milliseconds_as_the_watermark(tmp_path: Path) -> None:
    network, connection = sqlite_network(tmp_path)
    network.contract = readings_contract(
        watermark="logged_ms", columns={"logged_ms": {"type": "timestamp", "epoch": "ms", "nullable": False}}
    )
    connection.execute("DROP TABLE readings")  # this test's own table, typed as epoch sources are
    connection.execute(
        "CREATE TABLE readings (sensor_id INTEGER NOT NULL, seq INTEGER NOT NULL, celsius REAL, "
        "taken_at TEXT, logged_s INTEGER, logged_ms INTEGER, PRIMARY KEY (sensor_id, seq))"
    )
    start = 1372615200000
    upsert_sqlite(connection, [(1, seq, "2013-06-30", None, start + seq * 1000) for seq in range(3)])
    assert network.run() == 3
    upsert_sqlite(
        connection, [(1, 3, "2013-06-30", None, start + 3000), (1, 0, "2013-06-30", None, start + 9000)]
    )
    assert network.run() == 2
    assert network.silver("logged_ms") == {
        (1, 0): utc(2013, 6, 30, 18, 0, 9),
        (1, 1): utc(2013, 6, 30, 18, 0, 1),
        (1, 2): utc(2013, 6, 30, 18, 0, 2),
        (1, 3): utc(2013, 6, 30, 18, 0, 3),
    }
    network.assert_each_version_once()


@pytest.mark.slow
@pytest.mark.parametrize("watermark", ["taken_at", "logged_at"])
def test_postgresql_timestamp_columns_naive_in_the_contract_zone(tmp_path: Path, watermark: str) -> None:
    source = postgres_source()
    table = f"ts_readings_{watermark}"
    contract = readings_contract(
        table=table,
        watermark=watermark,
        time_zone="America/New_York",
        columns={"logged_at": {"type": "timestamp", "nullable": False}},
    )
    network = Network(tmp_path, source, contract)

    def execute(statement: str) -> None:
        with source.connect() as connection:
            connection.cursor().execute(statement)
            connection.commit()

    execute(f"DROP TABLE IF EXISTS {table}")  # this test's own table in the test database
    execute(
        f"CREATE TABLE {table} (sensor_id INTEGER NOT NULL, seq INTEGER NOT NULL, celsius DOUBLE PRECISION, "
        "taken_at TIMESTAMP, logged_at TIMESTAMPTZ, logged_s BIGINT, logged_ms BIGINT, "
        "PRIMARY KEY (sensor_id, seq))"
    )
    try:
        # Local New York times (UTC-4 in summer) and instants written with their own offsets.
        execute(
            f"INSERT INTO {table} VALUES "
            "(1, 1, 20.5, '2013-06-30 18:00:00', '2013-06-30 18:00:00+02', 1372615200, NULL), "
            "(1, 2, 20.5, '2013-06-30 18:30:00.25', '2013-06-30 23:00:00Z', NULL, 1372615200000), "
            "(2, 1, 20.5, '2013-06-30 19:00:00', '2013-06-30 19:00:00-04', NULL, NULL)"
        )
        assert network.run() == 3
        assert network.silver("taken_at") == {
            (1, 1): utc(2013, 6, 30, 22),
            (1, 2): utc(2013, 6, 30, 22, 30, 0, 250000),
            (2, 1): utc(2013, 6, 30, 23),
        }
        assert network.silver("logged_at") == {
            (1, 1): utc(2013, 6, 30, 16),
            (1, 2): utc(2013, 6, 30, 23),
            (2, 1): utc(2013, 6, 30, 23),
        }
        assert (
            network.silver("logged_s")[(1, 1)] == network.silver("logged_ms")[(1, 2)] == utc(2013, 6, 30, 18)
        )
        # Both new rows are an hour past the watermark in their column; a session in UTC
        # comparing the naive column with a UTC bound would take them for four hours older.
        execute(
            f"INSERT INTO {table} VALUES "
            "(3, 1, 20.5, '2013-06-30 20:00:00', '2013-07-01 00:00:00Z', NULL, NULL), "
            "(1, 1, 20.5, '2013-06-30 20:30:00', '2013-07-01 00:30:00+00', NULL, NULL) "
            "ON CONFLICT (sensor_id, seq) DO UPDATE SET taken_at = EXCLUDED.taken_at, "
            "logged_at = EXCLUDED.logged_at"
        )
        assert network.run() == 2
        assert network.silver("taken_at")[(3, 1)] == utc(2013, 7, 1)
        assert network.silver("taken_at")[(1, 1)] == utc(2013, 7, 1, 0, 30)
        assert network.silver("logged_at")[(1, 1)] == utc(2013, 7, 1, 0, 30)
        assert network.run() == 0
        network.assert_each_version_once()
        assert delta.open_table(network.storage.table_uri("quarantine", contract.name)) is None
    finally:
        execute(f"DROP TABLE IF EXISTS {table}")


def test_canonical_utc_text_is_read_exactly_through_the_index_with_other_forms_from_the_margin() -> None:
    """The demo's one fixed-width UTC form compares as text: a range over it reads exactly its
    rows, by one index range; other forms within a day of the bound are read and kept exactly."""
    connection = sqlite3.connect(":memory:")
    connection.execute("CREATE TABLE readings (seq INTEGER PRIMARY KEY, taken_at TEXT)")
    connection.execute("CREATE INDEX readings_taken_at ON readings (taken_at)")
    canonical = [
        (seq, (utc(2013, 6, 28) + timedelta(hours=seq)).isoformat(sep=" ", timespec="microseconds"))
        for seq in range(96)
    ]
    others = [(100, "2013-06-30 11:00:00-05:00"), (101, "2013-06-30T17:59:59Z"), (102, "2013-06-30")]
    connection.executemany("INSERT INTO readings VALUES (?, ?)", canonical + others)
    bounds = WatermarkRange("taken_at", pl.String, TimestampForm(), lower=utc(2013, 6, 30, 18), newest="9999")
    conditions, values = bounds.sql("taken_at", lambda position: "?", 1)
    query = f"SELECT seq, taken_at FROM readings WHERE {' AND '.join(conditions)} ORDER BY taken_at, seq"

    (plan,) = [row[-1] for row in connection.execute(f"EXPLAIN QUERY PLAN {query}", values)]
    assert plan.startswith("SEARCH readings USING") and "(taken_at>? AND taken_at<?)" in plan
    read = pl.DataFrame(
        connection.execute(query, values).fetchall(), schema=["seq", "taken_at"], orient="row"
    )
    # Of the canonical rows only those in the range; the others all (each is before it).
    assert sorted(read.get_column("seq")) == [*range(66, 96), 100, 101, 102]
    assert sorted(read.filter(bounds.exact()).get_column("seq")) == list(range(66, 96))


def test_bronze_keeps_naive_database_timestamps_as_utc_instants_of_the_contract_zone() -> None:
    contract = readings_contract()  # Europe/Paris
    frame = pl.DataFrame({"taken_at": [datetime(2013, 6, 30, 18), None]})
    pinned = pin_types(frame, contract, None, "bronze/readings")
    assert pinned.get_column("taken_at").to_list() == [utc(2013, 6, 30, 16), None]
    skipped = pl.DataFrame({"taken_at": [datetime(2013, 3, 31, 2, 30)]})
    with pytest.raises(
        BronzeSchemaError, match="bronze/readings: column 'taken_at' holds 2013-03-31 02:30:00"
    ):
        pin_types(skipped, contract, None, "bronze/readings")
