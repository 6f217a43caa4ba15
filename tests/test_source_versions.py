"""A source table's version changes with every commit to it, and is unknown where the database
cannot say (lakehouse/sources/versions.py). A SQLite file's does not change with a read; a
PostgreSQL cluster's changes with any write in the cluster, which the other tests make at any
moment, so only its changes are asserted."""

import sqlite3
import time
from pathlib import Path

import psycopg2
import pytest
from conftest import POSTGRES_URL, postgres_source, written_a_while_ago

from lakehouse.resources import SourceDatabase
from lakehouse.sources import versions
from lakehouse.sources.errors import SourceUnavailableError


def test_a_sqlite_source_has_a_new_version_after_each_commit_and_none_while_unsettled(tmp_path: Path) -> None:
    database = tmp_path / "members.db"
    with sqlite3.connect(database) as connection:
        connection.execute("create table members (member_id integer primary key, name text)")
        connection.execute("insert into members values (1, 'one')")
    source = SourceDatabase(url=f"sqlite:///{database}")
    assert source.version("members") is None, "written a moment ago: another commit could share its time"

    written_a_while_ago(database)
    before = source.version("members")
    assert before is not None
    source.read("select * from members")
    assert source.version("members") == before, "a read is no change"

    with sqlite3.connect(database) as connection:
        connection.execute("update members set name = 'uno' where member_id = 1")  # the same size
    assert source.version("members") is None
    assert versions.of_sqlite_file(database, time.time_ns() + 3_000_000_000) != before


def test_a_postgresql_source_has_a_new_version_after_a_commit_even_of_a_write_begun_before() -> None:
    source = postgres_source()
    source.execute(["drop table if exists members_v", "create table members_v (member_id integer)"])
    before = source.version("members_v")
    source.execute(["insert into members_v values (1)"])
    assert source.version("members_v") not in (None, before)

    # A write under way while the version is read (and while a run reads the rows, which it
    # does not see yet) changes the version when it commits.
    with psycopg2.connect(POSTGRES_URL) as writer, writer.cursor() as cursor:
        cursor.execute("insert into members_v values (2)")
        during = source.version("members_v")
        writer.commit()
    assert source.version("members_v") not in (None, during)
    source.execute(["drop table members_v"])


@pytest.mark.parametrize("answer", [(None, "2026-12-06 10:00:00+00"), ("740:740:", None)])
def test_a_postgresql_server_that_does_not_answer_gives_no_version(answer: tuple) -> None:
    assert versions.of_postgresql(*answer) is None


def test_a_postgresql_source_that_stays_unreachable_is_reported_not_versioned_as_unknown() -> None:
    # An unknown version would send the run on to extract, which would wait through every
    # retry a second time before failing the same way.
    closed = SourceDatabase(url="postgresql://user@127.0.0.1:1/none", max_attempts=2, backoff_seconds=0.01)
    with pytest.raises(SourceUnavailableError, match=r"^versioning members failed after 2 attempts"):
        closed.version("members")
