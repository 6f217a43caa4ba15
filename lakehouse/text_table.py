"""The plain-text tables the `lakehouse` command prints."""

from __future__ import annotations

from collections.abc import Collection, Sequence


def print_table(header: Sequence[str], rows: Sequence[Sequence[object]], right: Collection[str] = ()) -> None:
    """Print `rows` under `header`, each column as wide as its widest cell, two spaces apart.

    The columns named in `right` (numbers) align right; None prints as an empty cell.
    """
    lines = [list(header), *([("" if cell is None else str(cell)) for cell in row] for row in rows)]
    widths = [max(len(line[column]) for line in lines) for column in range(len(header))]
    for line in lines:
        cells = (
            cell.rjust(width) if name in right else cell.ljust(width)
            for name, cell, width in zip(header, line, widths, strict=True)
        )
        print("  ".join(cells).rstrip())
