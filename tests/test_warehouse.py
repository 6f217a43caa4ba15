"""The gold Delta tables as relations of the DuckDB warehouse, which dbt reads them through."""

from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import duckdb
import polars as pl
from deltalake import DeltaTable
from polars.testing import assert_frame_equal

from lakehouse.warehouse import expose_gold

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
    expose_gold(warehouse, {"fct_orders": DeltaTable(uri)})
    exposed = pl.read_delta(uri)
    assert_frame_equal(relation(warehouse, "fct_orders").sort("order_id"), exposed.sort("order_id"))

    orders(7, ["2026-11"]).with_columns(note=pl.lit("newer")).write_delta(uri, mode="append")
    assert relation(warehouse, "fct_orders").height == exposed.height, "a view follows the version it names"
    expose_gold(warehouse, {"fct_orders": DeltaTable(uri)})
    assert relation(warehouse, "fct_orders").height == exposed.height + 1


def test_an_empty_table_becomes_an_empty_relation_and_back(tmp_path: Path) -> None:
    uri, warehouse = str(tmp_path / "fct_orders"), tmp_path / "warehouse.duckdb"
    orders(1, []).write_delta(uri)
    expose_gold(warehouse, {"fct_orders": DeltaTable(uri)})
    empty = relation(warehouse, "fct_orders")
    assert empty.is_empty() and empty.schema == pl.Schema(SCHEMA)

    orders(1, ["2026-11"]).write_delta(uri, mode="append")
    expose_gold(warehouse, {"fct_orders": DeltaTable(uri)})
    assert_frame_equal(relation(warehouse, "fct_orders"), orders(1, ["2026-11"]))
