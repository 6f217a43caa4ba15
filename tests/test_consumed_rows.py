"""`bronze_rows_accounted` after a pass compares the keys whose rows changed, not the tables.

A batch makes it compare only the keys bronze appended, silver merged and quarantine gained;
a row lost from silver or quarantine, or planted in silver, by hand between two runs is still
found; a delete in bronze or a vacuum of the files it needs makes it compare every row again.
The library's source, not the shop's."""

from datetime import timedelta
from pathlib import Path

import dagster as dg
import polars as pl
import pytest
from library import CLOCK, Library, evaluations, value

from asset_checks import consumed_rows
from lakehouse.sources.timestamps import timestamp_text
from lakehouse.storage import delta, slices

LOANS = dg.AssetKey(["silver", "loans"])
WHOLE = "every bronze row silver has consumed"
CHANGED = "the keys whose rows changed since the last pass"
# Loans 0..199 open or returned, 200..209 lost (not an allowed status: quarantined).
LENT, LOST = 200, 10


def _accounted(result: dg.ExecuteInProcessResult) -> dg.AssetCheckEvaluation:
    return evaluations(result, LOANS)["bronze_rows_accounted"]


def _sampled(evaluation: dg.AssetCheckEvaluation) -> list[int]:
    return [row.data["loan_id"] for row in evaluation.metadata["sample"].value.records]


def _checks_only(library: Library) -> dg.AssetCheckEvaluation:
    return _accounted(library.materialize(dg.AssetSelection.checks_for_assets(LOANS)))


@pytest.fixture
def passed(tmp_path: Path) -> Library:
    """A library with loans, some quarantined, loaded once and accounted for whole."""
    library = Library(tmp_path, dg.DagsterInstance.ephemeral())
    library.create()
    library.add("members", [(1, "Ada"), (2, "Grace")])
    stamp = timestamp_text(CLOCK - timedelta(days=1))
    library.insert(
        "loans",
        [(n, 1 + n % 2, "open" if n % 3 else "returned", stamp) for n in range(LENT)]
        + [(n, 1, "lost", stamp) for n in range(LENT, LENT + LOST)],
    )
    first = _accounted(library.materialize())
    assert first.passed and value(first, "compared") == WHOLE
    assert (value(first, "rows_consumed"), value(first, "rows_quarantined")) == (LENT + LOST, LOST)
    return library


def test_a_batch_is_accounted_for_by_the_keys_it_changed(passed: Library) -> None:
    passed.add("loans", [(500, 1, "open"), (501, 2, "lost")])
    passed.update("loans", "loan_id", 7, status="returned")

    result = _accounted(passed.materialize())

    assert result.passed and value(result, "compared") == CHANGED
    # The new loan, the lost one (quarantined) and the returned one: nothing else is read.
    assert value(result, "keys_compared") == 3
    assert (value(result, "rows_consumed"), value(result, "rows_quarantined")) == (4, 1)
    assert (value(result, "rows_merged"), value(result, "rows_collapsed")) == (2, 1)
    silver = passed.table("silver", "loans")
    assert silver.filter(pl.col("loan_id") == 7).get_column("status").to_list() == ["returned"]


def test_rows_lost_or_planted_by_hand_after_a_pass_are_found(passed: Library) -> None:
    silver_uri = passed.storage.table_uri("silver", "loans")
    delta.open_table(silver_uri).delete("loan_id = 42")
    lost = _checks_only(passed)
    assert not lost.passed and value(lost, "compared") == CHANGED
    assert (value(lost, "rows_missing"), _sampled(lost)) == (1, [42])

    planted = pl.read_delta(silver_uri).filter(pl.col("loan_id") == 43).with_columns(loan_id=pl.lit(900))
    delta.write(silver_uri, planted)
    # The failed pass records nothing: every row is compared, and both are found.
    both = _checks_only(passed)
    assert not both.passed and value(both, "compared") == WHOLE
    assert (value(both, "rows_missing"), value(both, "silver_rows_without_bronze")) == (1, 1)


def test_a_quarantined_row_deleted_after_a_pass_is_found(passed: Library) -> None:
    delta.open_table(passed.storage.table_uri("quarantine", "loans")).delete(f"loan_id = {LENT + 3}")

    result = _checks_only(passed)

    assert not result.passed and value(result, "compared") == CHANGED
    assert (value(result, "rows_missing"), _sampled(result)) == (1, [LENT + 3])


def test_a_vacuum_of_the_files_it_needs_or_a_delete_in_bronze_makes_it_compare_every_row(
    passed: Library,
) -> None:
    # The update's MERGE replaces the file the pass saw; vacuum then deletes that file.
    passed.add("loans", [(500, 1, "open")])
    passed.update("loans", "loan_id", 7, status="returned")
    passed.materialize(dg.AssetSelection.assets(["bronze", "loans"], LOANS).without_checks())
    delta.open_table(passed.storage.table_uri("silver", "loans")).vacuum(
        retention_hours=0, enforce_retention_duration=False, dry_run=False
    )
    vacuumed = _checks_only(passed)
    assert vacuumed.passed and value(vacuumed, "compared") == WHOLE
    assert value(vacuumed, "rows_consumed") == LENT + LOST + 2

    delta.open_table(passed.storage.table_uri("bronze", "loans")).delete("loan_id = 500")
    deleted = _checks_only(passed)
    assert deleted.passed and value(deleted, "compared") == WHOLE


def test_a_whole_comparison_in_slices_of_the_key_finds_and_counts_what_one_pass_does(
    passed: Library, monkeypatch: pytest.MonkeyPatch
) -> None:
    silver_uri = passed.storage.table_uri("silver", "loans")
    delta.open_table(silver_uri).delete("loan_id = 42")
    planted = pl.read_delta(silver_uri).filter(pl.col("loan_id") == 43).with_columns(loan_id=pl.lit(900))
    delta.write(silver_uri, planted)
    delta.open_table(passed.storage.table_uri("quarantine", "loans")).delete(f"loan_id = {LENT + 3}")
    assert not _checks_only(passed).passed  # the changed keys; a failure leaves no record to start from
    monkeypatch.setenv("LAKEHOUSE_REUSE_CHECK_PASSES", "false")

    whole = _checks_only(passed)
    monkeypatch.setattr(consumed_rows, "SLICE_ROWS", 25)
    assert len(slices.key_cuts(pl.scan_delta(silver_uri), "loan_id", 25)) >= 7
    sliced = _checks_only(passed)

    assert value(whole, "compared") == value(sliced, "compared") == WHOLE
    assert (value(whole, "rows_missing"), value(whole, "silver_rows_without_bronze")) == (2, 1)
    assert sorted(_sampled(whole)) == sorted(_sampled(sliced)) == [42, LENT + 3]
    counts = {name: entry.value for name, entry in whole.metadata.items() if isinstance(entry.value, int)}
    assert {name: value(sliced, name) for name in counts} == counts
