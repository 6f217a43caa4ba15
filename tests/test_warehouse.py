"""The warehouse file: one a killed run left unfinished is set aside for a new one; a file that
is not DuckDB's is never touched."""

from pathlib import Path

import duckdb
import pytest

from lakehouse.marts.warehouse import WarehouseFileError, set_aside_torn_creation


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
