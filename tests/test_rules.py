"""Every row rule validates only the rows that can break it (found by a filter, a join or a
hash), counts every row and names the same failures Pandera finds on all of them: a library's
loans referencing its books and members."""

import dagster as dg
import polars as pl
import pytest

from asset_checks import rules
from lakehouse.sources.contract import Column, Range

ERROR = dg.AssetCheckSeverity.ERROR
LOANS = pl.LazyFrame(
    {
        "loan_id": [1, 2, 3, 4, 5, 6],
        "book_id": [10, 11, 99, None, 98, 10],
        "member_id": [7, 7, 7, 7, 70, None],
    }
)


def _failures(result: dg.AssetCheckResult) -> dict[tuple[str, str], int]:
    records = result.metadata["failures_by_check"].value.records
    return {(record.data["column"], record.data["check"]): record.data["rows"] for record in records}


def test_references_name_each_row_missing_a_parent_once_and_pass_null_references() -> None:
    books, members = pl.Series([10, 11, 12]), pl.Series([7, 8])
    rule = rules.references(
        {"book_id": ("books.book_id", books), "member_id": ("members.member_id", members)}
    )
    assert sorted(rule.suspects(LOANS).collect().get_column("loan_id")) == [3, 5]

    result = rules.rule_result(LOANS, rule, ERROR, "loan_id")
    assert not result.passed
    assert result.metadata["rows_checked"].value == 6
    # Loan 5 misses its book and its member: one failing row, under both checks.
    assert result.metadata["failing_rows"].value == 2
    assert [record.data["loan_id"] for record in result.metadata["sample"].value.records] == [3, 5]
    assert _failures(result) == {
        ("book_id", "exists in books.book_id"): 2,
        ("member_id", "exists in members.member_id"): 1,
    }


def test_references_pass_when_every_parent_exists_and_fail_every_row_of_an_empty_parent() -> None:
    passing = rules.references({"member_id": ("members.member_id", pl.Series([7, 70]))})
    assert rules.rule_result(LOANS, passing, ERROR, "loan_id").passed

    empty = rules.references({"book_id": ("books.book_id", pl.Series([], dtype=pl.Int64))})
    result = rules.rule_result(LOANS, empty, ERROR, "loan_id")
    assert result.metadata["failing_rows"].value == 5


def test_unique_names_the_repeat_and_not_its_original() -> None:
    repeated = pl.concat([LOANS, LOANS.filter(pl.col("loan_id") == 2)])
    result = rules.rule_result(repeated, rules.unique([["loan_id"]]), ERROR, "loan_id")
    assert not result.passed
    assert result.metadata["rows_checked"].value == 7
    assert result.metadata["failing_rows"].value == 1


RETURNS = pl.LazyFrame(
    {
        "loan_id": [1, 2, 3, 4, 5, 6, 7],
        "state": ["returned", "lost", None, "stolen", "returned", "returned", "late"],
        "days": [3, 40, 5, -1, None, 14, 31],
        "fee": [0.0, 2.5, None, float("nan"), 1.0, -0.5, 0.0],
    }
)
RULED = {
    "state": Column(type="string", allowed_values=["returned", "lost", "late"]),
    "days": Column(type="int", range=Range(min=0, max=31)),
    "fee": Column(type="float", range=Range(min=0)),
}


def _failing_ids(result: dg.AssetCheckResult) -> list[int]:
    return [record.data["loan_id"] for record in result.metadata["sample"].value.records]


def test_not_null_and_valid_values_name_what_pandera_finds_on_every_row() -> None:
    not_null = rules.not_null(["state", "days", "fee", "renewals"])
    # A float's NaN is as missing as a null; a column the rows lack is not required.
    assert sorted(not_null.suspects(RETURNS).collect().get_column("loan_id")) == [3, 4, 5]
    result = rules.rule_result(RETURNS, not_null, ERROR, "loan_id")
    assert result.metadata["rows_checked"].value == 7
    assert _failing_ids(result) == [3, 4, 5]
    assert _failures(result) == {
        ("state", "not_nullable"): 1,
        ("days", "not_nullable"): 1,
        ("fee", "not_nullable"): 2,
    }

    # Nulls pass, and so does a NaN fee: polars orders NaN above every number.
    result = rules.rule_result(RETURNS, rules.valid_values(RULED), ERROR, "loan_id")
    assert result.metadata["rows_checked"].value == 7
    assert _failing_ids(result) == [2, 4, 6]
    assert _failures(result) == {
        ("state", "isin(['returned', 'lost', 'late'])"): 1,
        ("days", "less_than_or_equal_to(31.0)"): 1,
        ("days", "greater_than_or_equal_to(0.0)"): 1,
        ("fee", "greater_than_or_equal_to(0.0)"): 1,
    }


def test_more_suspects_than_a_slice_are_validated_a_slice_at_a_time_and_all_counted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(rules, "SLICE_ROWS", 2)
    result = rules.rule_result(RETURNS, rules.valid_values(RULED), ERROR, "loan_id")
    assert result.metadata["failing_rows"].value == 3
    assert _failing_ids(result) == [2, 4, 6]

    # A repeat is found across what would be two slices of suspects: they are held at once.
    repeated = pl.concat(
        [LOANS, LOANS.filter(pl.col("loan_id") < 4).with_columns(loan_id=pl.col("loan_id") + 10)]
    )
    result = rules.rule_result(repeated, rules.unique([["book_id", "member_id"]]), ERROR, "loan_id")
    assert result.metadata["failing_rows"].value == 3
