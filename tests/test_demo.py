"""The demo source: deterministic, realistic in shape, and defective exactly as documented."""

import hashlib
import re
import sqlite3
import subprocess
import sys
from contextlib import closing
from pathlib import Path

import polars as pl
import pytest
from conftest import (
    CLOCK,
    POSTGRES_URL,
    DemoLake,
    Lake,
    error_line,
    postgres_source,
    run_command,
    sqlite_source,
)

from lakehouse.demo import initial, simulation, store
from lakehouse.demo.initial import DEFAULT_DEFECT_RATES
from lakehouse.resources import SourceDatabase

TABLES = ("customers", "products", "orders", "order_items")
STATUS_ORDER = {"pending": 0, "confirmed": 1, "shipped": 2, "delivered": 3, "cancelled": 3}


def contents(lake: Lake) -> dict[str, pl.DataFrame]:
    frames = {table: lake.source_rows(table).sort(pl.first()) for table in TABLES}
    for path in sorted((lake.landing / "events").glob("*.jsonl")):
        frames[path.name] = pl.DataFrame({"line": path.read_text().splitlines()})
    return frames


def assert_same(left: dict[str, pl.DataFrame], right: dict[str, pl.DataFrame]) -> None:
    assert left.keys() == right.keys()
    for name, frame in left.items():
        assert frame.equals(right[name]), f"{name} differs"


def test_same_seed_gives_the_same_source(lake: Lake, tmp_path: Path) -> None:
    twin = Lake(tmp_path / "twin", sqlite_source(tmp_path / "twin"))
    twin.init()
    lake.advance(batches=3)
    twin.advance(batches=3)
    assert_same(contents(lake), contents(twin))


def test_postgresql_gets_the_same_data_as_sqlite(lake: Lake, tmp_path: Path) -> None:
    other = Lake(tmp_path / "pg", postgres_source())
    other.init()
    lake.advance(batches=2)
    other.advance(batches=2)
    assert_same(contents(lake), contents(other))


def test_database_defects_match_the_manifest(lake: Lake) -> None:
    lake.advance(batches=2)
    defects = lake.manifest.defects
    orders = lake.source_rows("orders")
    products = lake.source_rows("products").get_column("product_id")
    items = lake.source_rows("order_items")

    assert orders.filter(pl.col("total_amount") < 0).height == defects["negative_amount"] > 0
    assert orders.filter(~pl.col("status").is_in(list(STATUS_ORDER))).height == defects["unknown_status"] > 0
    assert (
        items.filter(~pl.col("product_id").is_in(products.implode())).height
        == defects["orphan_order_item"]
        > 0
    )


def test_defect_rates_are_configurable(tmp_path: Path) -> None:
    clean = Lake(tmp_path, sqlite_source(tmp_path))
    clean.init(defect_rates=dict.fromkeys(DEFAULT_DEFECT_RATES, 0.0))
    assert sum(clean.manifest.defects.values()) == 0
    orders = clean.source_rows("orders")
    assert orders.filter(pl.col("total_amount") < 0).is_empty()


def test_the_shop_looks_like_a_real_shop(lake: Lake) -> None:
    orders = lake.source_rows("orders")
    items = lake.source_rows("order_items")
    products = lake.source_rows("products")

    per_customer = orders.group_by("customer_id").len().sort("len", descending=True).get_column("len")
    top_tenth = per_customer.head(max(1, per_customer.len() // 10)).sum() / per_customer.sum()
    assert top_tenth > 0.3, "popular customers should place a large share of orders"
    assert products.get_column("category").n_unique() >= 6
    assert 2.0 < items.height / orders.height < 4.0
    assert items.get_column("quantity").min() >= 1

    hours = orders.get_column("created_at").dt.hour().value_counts().sort("created_at")
    busiest, quietest = hours.get_column("count").max(), hours.get_column("count").min()
    assert busiest > 4 * quietest, "evenings should be far busier than nights"
    weekday = orders.get_column("created_at").dt.weekday()
    assert (weekday >= 6).mean() > 2 / 7, "weekends should sell more than an average day"

    clean = orders.filter(pl.col("total_amount") >= 0)
    line_totals = items.group_by("order_id").agg(total=(pl.col("quantity") * pl.col("unit_price")).sum())
    joined = clean.join(line_totals, on="order_id")
    assert (joined.get_column("total_amount") - joined.get_column("total").round(2)).abs().max() < 0.01


def test_advancing_moves_orders_forward_and_changes_customers(lake: Lake) -> None:
    before = lake.source_rows("orders")
    customers_before = lake.source_rows("customers")
    lake.advance()
    after = lake.source_rows("orders")
    batch = lake.manifest.log[-1]

    assert batch["deleted"]["orders"] > 0, "abandoned carts are deleted"
    assert after.height == before.height + batch["rows"]["orders"]["inserted"] - batch["deleted"]["orders"]
    moved = before.join(after, on="order_id", suffix="_now").filter(pl.col("status") != pl.col("status_now"))
    assert moved.height == batch["rows"]["orders"]["updated"] > 0
    assert (moved.get_column("updated_at_now") > moved.get_column("updated_at")).all()
    ranks = moved.select(
        pl.col("status").replace_strict(STATUS_ORDER), pl.col("status_now").replace_strict(STATUS_ORDER)
    )
    assert (ranks.get_column("status_now") > ranks.get_column("status")).all(), "no status goes backwards"

    changed = customers_before.join(lake.source_rows("customers"), on="customer_id", suffix="_now").filter(
        (pl.col("email") != pl.col("email_now")) | (pl.col("street_address") != pl.col("street_address_now"))
    )
    assert changed.height == batch["rows"]["customers"]["updated"]
    assert (changed.get_column("updated_at_now") > lake.clock.replace(hour=lake.clock.hour - 1)).all()


def test_timestamps_follow_the_demo_clock(lake: Lake) -> None:
    orders = lake.source_rows("orders")
    assert orders.get_column("updated_at").max() <= CLOCK
    assert orders.get_column("created_at").min() >= CLOCK.replace(month=8)


def test_cli_builds_and_advances_the_source(tmp_path: Path) -> None:
    built = run_command(
        ["lakehouse", "demo", "init", "--scale", "0.01", "--now", "2026-11-01T12:00:00Z"], tmp_path
    )
    assert built.returncode == 0, built.stderr
    assert "demo batch 0" in built.stdout and "orders {'inserted': 10000}" in built.stdout
    again = run_command(["lakehouse", "demo", "init"], tmp_path)
    assert again.returncode == 0 and "demo source exists" in again.stdout
    moved = run_command(
        ["lakehouse", "demo", "advance", "--batches", "2", "--now", "2026-11-01T14:00:00Z"], tmp_path
    )
    assert moved.returncode == 0, moved.stderr
    assert "demo batch 2 at 2026-11-01T14:00:00+00:00" in moved.stdout
    wrong = run_command(["lakehouse", "demo", "init", "--force", "--defect", "typo=0.1"], tmp_path)
    assert wrong.returncode == 2 and "use NAME=RATE with NAME one of" in wrong.stderr


# Another process reading the source in a transaction (SQLite's own client): until it ends,
# others can read but no writer can commit.
HOLD_THE_SOURCE = """
import sqlite3, sys, time
connection = sqlite3.connect(sys.argv[1], isolation_level=None)
connection.execute("BEGIN")
connection.execute("SELECT count(*) FROM orders").fetchall()
print("holding", flush=True)
time.sleep(float(sys.argv[2]))
connection.execute("COMMIT")
"""


def test_demo_advance_waits_for_another_process_holding_the_source(
    tmp_path: Path, demo_lake: DemoLake
) -> None:
    """What happens when `lakehouse demo advance` runs while a run reads the source: it waits
    for the lock instead of failing with "database is locked"."""
    lake = demo_lake(tmp_path)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_THE_SOURCE, str(lake.source.sqlite_path), "4"],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None and holder.stdout.readline().strip() == "holding"
    advanced = run_command(["lakehouse", "demo", "advance"], tmp_path)
    assert holder.wait(timeout=30) == 0
    assert advanced.returncode == 0, advanced.stderr
    assert "demo batch 1" in advanced.stdout


# A library's database, the kind of source a user points the lakehouse at: the demo must never
# change it, even where a table has a shop table's name (the library's `customers`).
LIBRARY = (
    "CREATE TABLE books (book_id INTEGER PRIMARY KEY, title TEXT NOT NULL)",
    "CREATE TABLE customers (card_no INTEGER PRIMARY KEY, name TEXT NOT NULL)",
    "CREATE TABLE loans (book_id INTEGER NOT NULL, card_no INTEGER, loaned_at {ts} NOT NULL, "
    "PRIMARY KEY (book_id, loaned_at))",
    "INSERT INTO books VALUES (1, 'Dune'), (2, 'Emma')",
    "INSERT INTO customers VALUES (10, 'Ada')",
    "INSERT INTO loans VALUES (1, 10, '2026-11-01 10:00:00'), (2, NULL, '2026-11-02 09:30:00')",
)
DEMO_COMMANDS = (["init"], ["init", "--force", "--scale", "0.01"], ["advance"])


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_demo_never_changes_a_sqlite_file_it_did_not_create(tmp_path: Path) -> None:
    path = tmp_path / "source" / "shop.db"  # where run_command points the source
    path.parent.mkdir()
    with closing(sqlite3.connect(path)) as library:
        for statement in LIBRARY:
            library.execute(statement.format(ts="TEXT"))
        library.commit()
    notes = tmp_path / "notes" / "source" / "shop.db"
    notes.parent.mkdir(parents=True)
    notes.write_text("not a database\n")

    for folder, file, reason in ((tmp_path, path, "did not create (books, customers, loans)"),
                                 (tmp_path / "notes", notes, "is not a SQLite database")):  # fmt: skip
        before = digest(file)
        for command in DEMO_COMMANDS:
            line = error_line(run_command(["lakehouse", "demo", *command], folder))
            assert f"sqlite:///{file}" in line and reason in line
        assert digest(file) == before
        assert not (folder / "landing").exists()


def test_the_demo_refuses_a_source_it_did_not_create_and_keeps_a_users_table_beside_its_own(
    tmp_path: Path,
) -> None:
    """What the commands above rest on, in one process: the guard and the rebuild of `store`."""
    foreign = sqlite_source(tmp_path / "library")
    foreign.sqlite_path.parent.mkdir(parents=True)
    with closing(sqlite3.connect(foreign.sqlite_path)) as library:
        for statement in LIBRARY:
            library.execute(statement.format(ts="TEXT"))
        library.commit()
    notes = sqlite_source(tmp_path / "notes")
    notes.sqlite_path.parent.mkdir(parents=True)
    notes.sqlite_path.write_text("not a database\n")
    for source, reason in ((foreign, "did not create (books, customers, loans)"),
                           (notes, "is not a SQLite database")):  # fmt: skip
        before = digest(source.sqlite_path)
        for change in (initial.init, simulation.advance):
            with pytest.raises(store.NotADemoError, match=re.escape(reason)):
                change(source, tmp_path / "landing")
        assert digest(source.sqlite_path) == before
    with pytest.raises(store.NotADemoError, match="no demo source in sqlite:///"):
        simulation.advance(sqlite_source(tmp_path / "nothing"), tmp_path / "landing")

    shop = sqlite_source(tmp_path / "shop")
    initial.init(shop, tmp_path / "shop" / "landing", scale=0.001)
    with closing(sqlite3.connect(shop.sqlite_path)) as database:
        database.execute("CREATE TABLE notes (note TEXT)")  # the user's, beside the demo's
        database.execute("INSERT INTO notes VALUES ('keep me')")
        database.commit()
    initial.init(shop, tmp_path / "shop" / "landing", scale=0.001, seed=3)
    assert store.read(shop, "SELECT note FROM notes").get_column("note").to_list() == ["keep me"]


def test_demo_builds_in_an_empty_file_and_rebuilds_only_its_own_tables(tmp_path: Path) -> None:
    path = tmp_path / "source" / "shop.db"
    path.parent.mkdir()
    path.touch()
    built = run_command(["lakehouse", "demo", "init", "--scale", "0.01"], tmp_path)
    assert built.returncode == 0, built.stderr
    with closing(sqlite3.connect(path)) as database:
        database.execute("CREATE TABLE notes (note TEXT)")  # the user's, beside the demo's
        database.execute("INSERT INTO notes VALUES ('keep me')")
        database.commit()
    rebuilt = run_command(
        ["lakehouse", "demo", "init", "--force", "--scale", "0.01", "--seed", "3"], tmp_path
    )
    assert rebuilt.returncode == 0, rebuilt.stderr
    with closing(sqlite3.connect(path)) as database:
        assert database.execute("SELECT note FROM notes").fetchall() == [("keep me",)]
    assert run_command(["lakehouse", "demo", "advance"], tmp_path).returncode == 0


def with_search_path(url: str, schema: str) -> str:
    return f"{url}{'&' if '?' in url else '?'}options=-csearch_path%3D{schema}"


def test_demo_never_changes_postgresql_tables_it_did_not_create(tmp_path: Path) -> None:
    admin = postgres_source()
    # Its own schema, so the library sits where the demo would write without disturbing the
    # demo tables other tests keep in the database's default schema.
    schema = "demo_test_library"
    with admin.connect() as connection:
        cursor = connection.cursor()
        cursor.execute(f"CREATE SCHEMA {schema}")
        cursor.execute(f"SET search_path TO {schema}")
        for statement in LIBRARY:
            cursor.execute(statement.format(ts="TIMESTAMP"))
        connection.commit()
    try:
        url = with_search_path(str(POSTGRES_URL), schema)
        library = SourceDatabase(url=url)
        listing = f"SELECT table_name FROM information_schema.tables WHERE table_schema = '{schema}'"

        def contents() -> dict[str, pl.DataFrame]:
            tables = sorted(library.read(listing).to_series())
            return {table: library.read(f"SELECT * FROM {table} ORDER BY 1, 2") for table in tables}

        before = contents()
        assert list(before) == ["books", "customers", "loans"]
        for command in DEMO_COMMANDS:
            line = error_line(
                run_command(["lakehouse", "demo", *command], tmp_path, LAKEHOUSE_SOURCE_URL=url)
            )
            assert "postgresql://" in line and "did not create (books, customers, loans)" in line
        assert_same(contents(), before)
    finally:
        with admin.connect() as connection:
            connection.cursor().execute(f"DROP SCHEMA {schema} CASCADE")
            connection.commit()


def test_advance_needs_the_demo_it_advances(tmp_path: Path) -> None:
    nothing = error_line(run_command(["lakehouse", "demo", "advance"], tmp_path))
    assert nothing.startswith("lakehouse demo advance: no demo source in sqlite:///")
    assert not (tmp_path / "source").exists()

    assert run_command(["lakehouse", "demo", "init", "--scale", "0.01"], tmp_path).returncode == 0
    (tmp_path / "landing" / "demo_manifest.json").unlink()
    orphaned = error_line(run_command(["lakehouse", "demo", "advance"], tmp_path))
    assert "demo_manifest.json does not describe the demo in sqlite:///" in orphaned

    scheme = error_line(
        run_command(["lakehouse", "demo", "advance"], tmp_path, LAKEHOUSE_SOURCE_URL="mysql://db/x")
    )
    assert "unsupported scheme 'mysql'" in scheme


def test_scale_must_be_positive(tmp_path: Path) -> None:
    for scale in ("0", "-1", "nan"):
        done = run_command(["lakehouse", "demo", "init", "--scale", scale], tmp_path)
        assert done.returncode == 2 and "must be greater than 0" in done.stderr
    assert not (tmp_path / "source").exists()
