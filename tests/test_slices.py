"""Reading rows a slice at a time by key ranges: every row in exactly one slice."""

from pathlib import Path

import polars as pl

from lakehouse.storage import delta
from lakehouse.storage.slices import key_ranges


def test_key_ranges_hold_every_row_once_and_each_key_in_one_slice(tmp_path: Path) -> None:
    # Keys written out of order, repeated (row versions) and null, as bronze holds them.
    keys = [7, None, 3, 3, 9, 1, 7, 7, None, 5, 2, 8, 3, 6, 4]
    rows = pl.DataFrame({"key": keys, "row": range(len(keys))})
    delta.write(str(tmp_path / "table"), rows)
    table = pl.scan_delta(str(tmp_path / "table"))

    parts = [part.collect() for part in key_ranges(table, "key", 4)]

    assert 3 <= len(parts) <= 5  # about 4 rows each; a repeated key keeps its rows together
    assert sorted(pl.concat(parts)["row"]) == list(range(len(keys)))
    for number, part in enumerate(parts):
        others = pl.concat(parts[:number] + parts[number + 1 :])
        assert not set(part["key"].drop_nulls()) & set(others["key"].drop_nulls())
    assert parts[0]["key"].null_count() == 2


def test_key_ranges_leave_small_tables_and_missing_keys_whole() -> None:
    rows = pl.LazyFrame({"key": [2, 1], "value": ["b", "a"]})
    assert [part is rows for part in key_ranges(rows, "key", 4)] == [True]
    assert [part is rows for part in key_ranges(rows, "absent", 1)] == [True]
