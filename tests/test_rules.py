"""The row rules that compare a row with other rows (`references`, `unique`) validate only the
rows that can break them, found by a join or a hash, and count every row: a library's loans
referencing its books and members."""

import dagster as dg
import polars as pl

from asset_checks import rules

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
