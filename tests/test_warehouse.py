"""The DuckDB warehouse: the gold Delta tables as the relations dbt reads them through; a file a
killed run left unfinished is set aside for a new one; a file that is not DuckDB's is never
touched."""

from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import duckdb
import polars as pl
import pytest
from deltalake import DeltaTable
from polars.testing import assert_frame_equal

from lakehouse.marts.warehouse import WarehouseFileError, expose_gold, set_aside_torn_creation


def new_database_head(tmp_path: Path) -> bytes:
    """The first header block of a new DuckDB database."""
    duckdb.connect(str(tmp_path / "new.duckdb")).close()
    return (tmp_path / "new.duckdb").read_bytes()[:4096]


@pytest.mark.parametrize("torn", ["no bytes", "zero bytes", "one header block of three"])
def test_a_file_a_killed_run_left_unfinished_is_set_aside_for_a_new_one(tmp_path: Path, torn: str) -> None:
    location = tmp_path / "warehouse.duckdb"
    content = {"no bytes": b"", "zero bytes": b"\0" * 4096}.get(torn)
    content = new_database_head(tmp_path) if content is None else content
    location.write_bytes(content)
    with pytest.raises(duckdb.IOException):
        duckdb.connect(str(location))

    aside = set_aside_torn_creation(location)

    assert aside is not None and aside.read_bytes() == content  # kept, not deleted
    assert not location.exists()
    with duckdb.connect(str(location)) as connection:  # a new warehouse where it was
        assert connection.sql("select 42").fetchall() == [(42,)]


def test_a_duckdb_database_or_no_file_is_left_as_it_is(tmp_path: Path) -> None:
    location = tmp_path / "warehouse.duckdb"
    assert set_aside_torn_creation(location) is None
    with duckdb.connect(str(location)) as connection:
        connection.execute("create table marts as select 1 as kept")
    assert set_aside_torn_creation(location) is None
    with duckdb.connect(str(location), read_only=True) as connection:
        assert connection.sql("select kept from marts").fetchall() == [(1,)]


def test_a_file_that_is_not_duckdbs_is_refused_and_untouched(tmp_path: Path) -> None:
    location = tmp_path / "warehouse.duckdb"
    location.write_text("member_id,name\n1,Ada\n")
    with pytest.raises(WarehouseFileError, match=f"LAKEHOUSE_WAREHOUSE: {location} is not a DuckDB database"):
        set_aside_torn_creation(location)
    assert location.read_text() == "member_id,name\n1,Ada\n"
    assert [path.name for path in tmp_path.iterdir()] == ["warehouse.duckdb"]


SCHEMA = {
    "order_id": pl.Int64,
    "order_month": pl.String,
    "amount": pl.Decimal(12, 2),
    "ordered_at": pl.Datetime("us", "UTC"),
}


def orders(first_id: int, months: list[str | None]) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "order_id": range(first_id, first_id + len(months)),
            "order_month": months,
            "amount": [Decimal("12.50")] * len(months),
            "ordered_at": [datetime(2026, 11, 21, 9, 30, tzinfo=UTC)] * len(months),
        },
        schema=SCHEMA,
    )


def relation(warehouse: Path, name: str) -> pl.DataFrame:
    # A connection of its own, as every later reader of the warehouse has.
    with duckdb.connect(str(warehouse), read_only=True) as connection:
        connection.execute("set TimeZone = 'UTC'")
        return connection.sql(f"select * from gold.{name}").pl()


def test_a_relation_is_the_delta_version_it_was_exposed_at(tmp_path: Path) -> None:
    uri, warehouse = str(tmp_path / "fct_orders"), tmp_path / "warehouse.duckdb"
    # Partition values that folder names must escape, and one that is null.
    orders(1, ["2026-10", "2026-11", "a b/c%", "x=y", None]).write_delta(
        uri, delta_write_options={"partition_by": ["order_month"]}
    )
    # A column added later, absent from the first files.
    orders(6, ["2026-11"]).with_columns(note=pl.lit("late")).write_delta(
        uri, mode="append", delta_write_options={"schema_mode": "merge"}
    )
    expose_gold(warehouse, {"fct_orders": DeltaTable(uri)}, {})
    exposed = pl.read_delta(uri)
    assert_frame_equal(relation(warehouse, "fct_orders").sort("order_id"), exposed.sort("order_id"))

    orders(7, ["2026-11"]).with_columns(note=pl.lit("newer")).write_delta(uri, mode="append")
    assert relation(warehouse, "fct_orders").height == exposed.height, "a view follows the version it names"
    expose_gold(warehouse, {"fct_orders": DeltaTable(uri)}, {})
    assert relation(warehouse, "fct_orders").height == exposed.height + 1


def test_an_empty_table_becomes_an_empty_relation_and_back(tmp_path: Path) -> None:
    uri, warehouse = str(tmp_path / "fct_orders"), tmp_path / "warehouse.duckdb"
    orders(1, []).write_delta(uri)
    expose_gold(warehouse, {"fct_orders": DeltaTable(uri)}, {})
    empty = relation(warehouse, "fct_orders")
    assert empty.is_empty() and empty.schema == pl.Schema(SCHEMA)

    orders(1, ["2026-11"]).write_delta(uri, mode="append")
    expose_gold(warehouse, {"fct_orders": DeltaTable(uri)}, {})
    assert_frame_equal(relation(warehouse, "fct_orders"), orders(1, ["2026-11"]))
