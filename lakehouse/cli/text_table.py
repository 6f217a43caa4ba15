"""The plain-text tables the `lakehouse` command prints."""

from __future__ import annotations

from collections.abc import Collection, Sequence

from tabulate import tabulate


def print_table(header: Sequence[str], rows: Sequence[Sequence[object]], right: Collection[str] = ()) -> None:
    """Print `rows` under `header` in plain columns; those named in `right` (numbers) align right.

    Cells print as given (numbers already formatted with separators); None prints empty."""
    align = tuple("right" if name in right else "left" for name in header)
    print(
        tabulate(rows, headers=header, tablefmt="plain", colalign=align, disable_numparse=True, missingval="")
    )
