"""Row rules that judge each row alone (`not_null`, `valid_values`) read, after a pass, only the
rows their table gained since: the files added since the pass's version; `unique` reads the rows
sharing a key with those. A bad row planted by hand is still found; without a pass to start
from, every row is read. The library's source, not the shop's."""

from pathlib import Path

import dagster as dg
import polars as pl
import pytest
from library import Library, evaluations, value

from lakehouse.storage import delta

LOANS = dg.AssetKey(["silver", "loans"])


@pytest.fixture
def passed(tmp_path: Path) -> Library:
    library = Library(tmp_path, dg.DagsterInstance.ephemeral())
    library.create()
    library.add("members", [(1, "Ada")])
    library.add("loans", [(n, 1, "open") for n in range(50)])
    first = evaluations(library.materialize(), LOANS)
    for rule in ("not_null", "valid_values", "unique"):
        assert first[rule].passed and value(first[rule], "scope") == "whole table"
        assert value(first[rule], "rows_checked") == 50
    return library


def test_after_a_pass_only_the_rows_gained_are_read_and_a_planted_row_is_found(passed: Library) -> None:
    passed.add("loans", [(50, 1, "returned"), (51, 1, "open")])
    batch = evaluations(passed.materialize(), LOANS)
    for rule in ("not_null", "valid_values"):
        assert batch[rule].passed
        assert str(value(batch[rule], "scope")).startswith("rows of the files added since version")
        assert value(batch[rule], "rows_checked") == 2

    uri = passed.storage.table_uri("silver", "loans")
    planted = (
        pl.read_delta(uri)
        .head(2)
        .with_columns(loan_id=pl.Series([900, 901]), status=pl.Series(["lost", None], dtype=pl.String))
    )
    delta.write(uri, planted)
    found = evaluations(passed.materialize(dg.AssetSelection.checks_for_assets(LOANS)), LOANS)

    assert not found["not_null"].passed and not found["valid_values"].passed
    assert (value(found["not_null"], "rows_checked"), value(found["not_null"], "failing_rows")) == (2, 1)
    assert [row.data["loan_id"] for row in found["valid_values"].metadata["sample"].value.records] == [900]
    checks = dg.AssetSelection.checks_for_assets(LOANS)
    # On the same table the failure is reported again, from the run that found it.
    again = evaluations(passed.materialize(checks), LOANS)
    assert not again["not_null"].passed and value(again["not_null"], "reused_from_run")
    # A failed evaluation records nothing to start from: once the table changes, every row is read.
    delta.write(uri, pl.read_delta(uri).filter(pl.col("loan_id") == 50).with_columns(loan_id=pl.lit(902)))
    after = evaluations(passed.materialize(checks), LOANS)
    assert value(after["not_null"], "scope") == "whole table"
    assert value(after["not_null"], "rows_checked") == 55


def test_after_a_pass_unique_reads_the_rows_sharing_a_key_with_those_gained(passed: Library) -> None:
    passed.add("loans", [(50, 1, "returned"), (51, 1, "open")])
    batch = evaluations(passed.materialize(), LOANS)["unique"]
    assert batch.passed and value(batch, "rows_checked") == 2
    assert str(value(batch, "scope")).startswith("rows sharing a value with the files added since version")

    # A second copy of loan 3, whose first copy is in a file the last pass had already read.
    uri = passed.storage.table_uri("silver", "loans")
    delta.write(uri, pl.read_delta(uri).filter(pl.col("loan_id") == 3))
    found = evaluations(passed.materialize(dg.AssetSelection.checks_for_assets(LOANS)), LOANS)["unique"]
    assert not found.passed
    assert (value(found, "rows_checked"), value(found, "failing_rows")) == (2, 1)
    assert [row.data["loan_id"] for row in found.metadata["sample"].value.records] == [3]
