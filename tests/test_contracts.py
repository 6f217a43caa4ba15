"""Dataset contracts: validated on load, and enough on their own to add a source table."""

import shutil
import sqlite3
from pathlib import Path

import polars as pl
import pytest
from conftest import Lake, run_command

from lakehouse.contract import ContractError, load_contract, load_contracts
from lakehouse.settings import DEFAULTS

SHIPPED = Path(DEFAULTS["LAKEHOUSE_CONTRACTS"])


def test_shipped_contracts_describe_every_dataset() -> None:
    contracts = {contract.name: contract for contract in load_contracts(SHIPPED)}
    assert set(contracts) == {"customers", "products", "orders", "order_items", "events"}
    orders = contracts["orders"]
    assert orders.primary_key == ["order_id"]
    assert orders.watermark.column == "updated_at" and orders.watermark.lookback.total_seconds() == 7200
    assert orders.columns["status"].allowed_values == [
        "pending",
        "confirmed",
        "shipped",
        "delivered",
        "cancelled",
    ]
    assert orders.columns["total_amount"].range.min == 0
    assert orders.freshness.warn_after.total_seconds() == 3600
    assert orders.partitioning.granularity == "month"
    assert contracts["customers"].history == "scd2"
    assert {name for name, column in contracts["customers"].columns.items() if column.pii} == {
        "email", "phone", "street_address"
    }  # fmt: skip
    assert not contracts["events"].is_database and contracts["events"].source.glob == "events/*.jsonl"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("primary_key: [order_id]", "primary_key: [order_number]"),
         "primary_key: 'order_number' is not one of the contract's columns"),
        (('total_amount: {type: "decimal(12,2)"', 'total_amount: {type: "money"'),
         "field 'columns.total_amount.type': Value error, unknown type 'money'"),
        (("lookback: 2h", "lookback: two hours"), "field 'watermark.lookback'"),
        (("  table: orders", "  table: orders; DROP TABLE orders"), "field 'source.database.table'"),
        (("history: current", "history: forever"), "field 'history'"),
        (("name: orders", "name: sales"), "field 'name': 'sales' must match the file name"),
        (("z_order: [customer_id]", "z_order: [client_id]"),
         "maintenance.z_order: 'client_id' is not one of the contract's columns"),
    ],
)  # fmt: skip
def test_bad_contract_fails_naming_file_and_field(
    tmp_path: Path, change: tuple[str, str], message: str
) -> None:
    text = (SHIPPED / "orders.yaml").read_text()
    assert change[0] in text
    path = tmp_path / "orders.yaml"
    path.write_text(text.replace(change[0], change[1]))
    with pytest.raises(ContractError) as error:
        load_contract(path)
    assert str(error.value).startswith(f"{path}: ")
    assert message in str(error.value)


SUPPLIERS = """\
name: suppliers
description: One row per supplier the shop buys from.
source:
  kind: database
  table: suppliers
primary_key: [supplier_id]
watermark:
  column: updated_at
  lookback: 1h
columns:
  supplier_id: {type: int, nullable: false, unique: true}
  name: {type: string, nullable: false}
  updated_at: {type: timestamp, nullable: false}
"""


def test_a_new_table_needs_only_a_contract_file(lake: Lake, tmp_path: Path) -> None:
    """A table the demo does not have gets a working bronze asset from one YAML file."""
    with sqlite3.connect(lake.source.sqlite_path) as connection:
        connection.execute(
            "CREATE TABLE suppliers (supplier_id INTEGER PRIMARY KEY, name TEXT, updated_at TEXT)"
        )
        connection.executemany(
            "INSERT INTO suppliers VALUES (?, ?, ?)",
            [
                (1, "Acme", "2026-11-01 10:00:00.000000+00:00"),
                (2, "Globex", "2026-11-01 11:00:00.000000+00:00"),
            ],
        )
    contracts = tmp_path / "contracts"
    shutil.copytree(SHIPPED, contracts)
    (contracts / "suppliers.yaml").write_text(SUPPLIERS)

    done = run_command(
        [
            "dagster",
            "asset",
            "materialize",
            "-m",
            "lakehouse.definitions",
            "--select",
            'key:"bronze/suppliers"',
        ],
        lake.folder,
        LAKEHOUSE_CONTRACTS=str(contracts),
    )

    assert done.returncode == 0, done.stderr[-3000:]
    bronze = pl.read_delta(lake.uri("bronze", "suppliers"))
    assert bronze.sort("supplier_id").get_column("name").to_list() == ["Acme", "Globex"]
    assert "Asset check 'source_rows_in_bronze' on 'bronze/suppliers' passed" in done.stderr


def test_definitions_refuse_to_load_a_bad_contract(lake: Lake, tmp_path: Path) -> None:
    contracts = tmp_path / "contracts"
    shutil.copytree(SHIPPED, contracts)
    (contracts / "suppliers.yaml").write_text(
        SUPPLIERS.replace("primary_key: [supplier_id]", "primary_key: []")
    )

    done = run_command(
        ["dagster", "definitions", "validate", "-m", "lakehouse.definitions"], lake.folder,
        LAKEHOUSE_CONTRACTS=str(contracts),
    )  # fmt: skip

    assert done.returncode != 0
    assert f"{contracts / 'suppliers.yaml'}: field 'primary_key'" in done.stdout + done.stderr
