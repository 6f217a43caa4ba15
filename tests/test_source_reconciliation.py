"""The reconciliations with the source after a pass read what changed, not the table.

`source_rows_in_bronze` reads the source rows of the days whose summary changed and those
since the pass's watermark, and still finds a row written late into an old day, a duplicate
bronze gained and a row bronze lost; `keys_in_source` reads the key ranges whose summaries
changed and still finds a key the source deleted. The library's source, not the shop's."""

from datetime import timedelta
from pathlib import Path

import dagster as dg
import polars as pl
import pytest
from library import CLOCK, Library, evaluations, value

from lakehouse.sources.timestamps import timestamp_text
from lakehouse.storage import delta

LOANS = dg.AssetKey(["bronze", "loans"])
DAYS = 10
PER_DAY = 30


def _check(result: dg.ExecuteInProcessResult) -> dg.AssetCheckEvaluation:
    return evaluations(result, LOANS)["source_rows_in_bronze"]


@pytest.fixture
def passed(tmp_path: Path) -> Library:
    """A library whose loans span ten days, loaded once and reconciled whole."""
    library = Library(tmp_path, dg.DagsterInstance.ephemeral())
    library.create()
    library.add("members", [(1, "Ada"), (2, "Grace")])
    library.insert(
        "loans",
        [
            (day * PER_DAY + n, 1 + n % 2, "open", timestamp_text(CLOCK - timedelta(DAYS - day, minutes=n)))
            for day in range(DAYS)
            for n in range(PER_DAY)
        ],
    )
    first = _check(library.materialize())
    assert first.passed and value(first, "compared") == "every source row"
    assert value(first, "rows_checked") == DAYS * PER_DAY
    return library


def test_a_second_evaluation_reads_no_row_and_a_late_row_in_an_old_day_is_found(passed: Library) -> None:
    again = _check(passed.materialize())
    assert again.passed
    assert (value(again, "periods_read"), value(again, "rows_checked")) == (0, 0)

    # A new loan now, and one written late with a watermark four days old: past bronze's
    # watermark (no lookback), so no extraction reads it.
    passed.add("loans", [(1_000, 1, "open")])
    late = CLOCK - timedelta(days=4, seconds=30)
    passed.insert("loans", [(999, 2, "open", timestamp_text(late))])
    result = _check(passed.materialize())

    assert not result.passed
    assert value(result, "missing_rows") == 1
    assert [row.data["loan_id"] for row in result.metadata["sample"].value.records] == [999]
    # One day read, not the table: the old day's rows with the late one. The last day changed
    # only by the new loan, read with the rows from the pass's watermark on (the last loan it
    # saw, and the new one).
    assert (value(result, "periods_read"), value(result, "periods_changed_only_since")) == (1, 1)
    assert value(result, "rows_checked") == PER_DAY + 1 + 2
    assert value(result, "bronze_rows_appended_since") == 1


def test_a_row_written_late_into_the_day_of_the_pass_s_watermark_is_found(passed: Library) -> None:
    # Each pass's watermark falls on the day the next rows join; a row written there late,
    # before the watermark, is not among the rows since it.
    passed.add("loans", [(1_000, 1, "open")])
    late = CLOCK - timedelta(days=1, minutes=PER_DAY + 1)
    passed.insert("loans", [(999, 2, "open", timestamp_text(late))])

    result = _check(passed.materialize())

    assert not result.passed
    assert [row.data["loan_id"] for row in result.metadata["sample"].value.records] == [999]
    assert (value(result, "periods_read"), value(result, "periods_changed_only_since")) == (1, 0)
    # The day's rows up to the watermark (its loans and the late one), then the rows from the
    # watermark on (the loan at it and the new one): the new loan is read once.
    assert value(result, "rows_checked") == (PER_DAY + 1) + 2


def test_rows_the_source_gains_while_bronze_loads_leave_the_day_they_join_unread(passed: Library) -> None:
    # Bronze loads a loan; the source gains another before the checks run, past bronze's
    # watermark: in the last day's summary the pass records, not among its rows up to it.
    passed.add("loans", [(1_000, 1, "open")])
    passed.materialize(dg.AssetSelection.assets(LOANS).without_checks())
    passed.add("loans", [(1_001, 2, "open")])
    assert _check(passed.materialize(dg.AssetSelection.checks_for_assets(LOANS))).passed

    passed.add("loans", [(1_002, 1, "open")])
    result = _check(passed.materialize())

    assert result.passed
    # The last day is not read whole: only the rows from the pass's watermark on (the loan at
    # it and the two since).
    assert (value(result, "periods_read"), value(result, "periods_changed_only_since")) == (0, 1)
    assert value(result, "rows_checked") == 3


def test_days_that_lost_rows_bronze_saw_go_are_not_read_and_one_that_also_gained_a_late_row_is(
    passed: Library,
) -> None:
    # Two old loans deleted (bronze tombstones them) and one returned (bronze appends its new
    # version, past the watermark): three days lost a row, each as bronze saw it.
    passed.delete("loans", "loan_id", [2 * PER_DAY + 5, 6 * PER_DAY + 7])
    passed.update("loans", "loan_id", 4 * PER_DAY + 2, status="returned")
    result = _check(passed.materialize())

    assert result.passed
    assert (value(result, "periods_read"), value(result, "periods_changed_only_as_bronze_saw")) == (0, 3)
    # Only the rows from the pass's watermark on: the loan at it and the returned one.
    assert value(result, "rows_checked") == 2

    # Another loan deleted from the sixth day, and one written late into it that no
    # extraction reads: the day holds as many loans as bronze expects, but not the same keys,
    # so it is read and the late loan found.
    passed.delete("loans", "loan_id", [5 * PER_DAY + 1])
    late = CLOCK - timedelta(days=DAYS - 5, minutes=PER_DAY + 1)
    passed.insert("loans", [(999, 2, "open", timestamp_text(late))])
    result = _check(passed.materialize())

    assert not result.passed
    assert [row.data["loan_id"] for row in result.metadata["sample"].value.records] == [999]
    assert (value(result, "periods_read"), value(result, "periods_changed_only_as_bronze_saw")) == (1, 0)


def test_a_duplicate_bronze_gains_after_a_pass_is_found_from_the_rows_it_appended(passed: Library) -> None:
    uri = passed.storage.table_uri("bronze", "loans")
    copied = pl.read_delta(uri).filter(pl.col("loan_id") == 42)
    delta.write(uri, copied)

    result = _check(passed.materialize(dg.AssetSelection.checks_for_assets(LOANS)))

    assert not result.passed
    assert (value(result, "duplicated_rows"), value(result, "missing_rows")) == (2, 0)
    assert (value(result, "periods_read"), value(result, "rows_checked")) == (0, 0)


def test_a_row_deleted_from_bronze_after_a_pass_makes_it_compare_every_row(passed: Library) -> None:
    uri = passed.storage.table_uri("bronze", "loans")
    delta.open_table(uri).delete("loan_id = 42")

    result = _check(passed.materialize(dg.AssetSelection.checks_for_assets(LOANS)))

    assert not result.passed and value(result, "compared") == "every source row"
    assert value(result, "missing_rows") == 1
    assert value(result, "rows_checked") == DAYS * PER_DAY


def test_keys_in_source_after_a_pass_reads_the_key_ranges_that_changed(passed: Library) -> None:
    members = dg.AssetKey(["silver", "members"])

    def keys_in_source() -> dg.AssetCheckEvaluation:
        result = passed.materialize(dg.AssetSelection.checks_for_assets(members))
        return evaluations(result, members)["keys_in_source"]

    again = keys_in_source()
    assert again.passed and value(again, "ranges_read") == 0

    # Deleted in the source, still in silver until bronze next looks for deletes.
    passed.delete("members", "member_id", [2])
    found = keys_in_source()

    assert not found.passed and value(found, "keys_not_in_source") == 1
    assert [row.data["member_id"] for row in found.metadata["sample"].value.records] == [2]
    assert (value(found, "ranges"), value(found, "ranges_read")) == (1, 1)
