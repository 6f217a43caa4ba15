"""Dataset contracts: validated on load, and enough on their own to add a source table."""

import shutil
import sqlite3
from pathlib import Path

import polars as pl
import pytest
from conftest import Lake, run_command

from lakehouse.settings import DEFAULTS
from lakehouse.sources.contract_files import ContractError, load_contract, load_contracts

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
        (("column: created_at\n  granularity", "column: status\n  granularity"),
         "partitioning.column: 'status' is a string; partitions need a timestamp or date column"),
        (("  table: orders", "  table: sales.orders.2024"), "field 'source.database.table'"),
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


def test_a_source_table_may_name_its_schema(tmp_path: Path) -> None:
    path = tmp_path / "orders.yaml"
    path.write_text((SHIPPED / "orders.yaml").read_text().replace("  table: orders", "  table: sales.orders"))
    assert load_contract(path).source.table == "sales.orders"


def _set_of_contracts(tmp_path: Path, orders: tuple[str, str] = ("", "")) -> Path:
    """The shipped contracts in a folder of their own, with a change to orders.yaml."""
    folder = tmp_path / "contracts"
    shutil.copytree(SHIPPED, folder)
    path = folder / "orders.yaml"
    assert orders[0] in path.read_text()
    path.write_text(path.read_text().replace(*orders))
    return folder


@pytest.mark.parametrize(
    ("target", "message"),
    [
        (
            "clients.customer_id",
            "no contract defines dataset 'clients' (known: customers, events, order_items",
        ),
        ("customers.client_id", "'client_id' is not a column of dataset 'customers' ("),
    ],
)
def test_a_reference_to_an_unknown_dataset_or_column_fails_the_set(
    tmp_path: Path, target: str, message: str
) -> None:
    folder = _set_of_contracts(tmp_path, ("references: customers.customer_id", f"references: {target}"))
    with pytest.raises(ContractError) as error:
        load_contracts(folder)
    assert str(error.value).startswith(f"{folder / 'orders.yaml'}: field 'columns.customer_id.references': ")
    assert message in str(error.value)


def test_yml_files_are_contracts_and_a_dataset_is_defined_once(tmp_path: Path) -> None:
    folder = _set_of_contracts(tmp_path)
    (folder / "orders.yaml").rename(folder / "orders.yml")
    assert "orders" in {contract.name for contract in load_contracts(folder)}

    shutil.copy(SHIPPED / "orders.yaml", folder / "orders.yaml")
    with pytest.raises(ContractError) as error:
        load_contracts(folder)
    first, second = folder / "orders.yaml", folder / "orders.yml"
    assert str(error.value) == f"{second}: field 'name': dataset 'orders' is already defined by {first}"


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
