"""The physical floor: every source table and landing file copied into Delta, untransformed.

python -m bench.floor TARGET_ROOT   (source and landing from LAKEHOUSE_SOURCE_URL / LAKEHOUSE_LANDING)

What no pipeline can beat on this machine: one read of each table (the same ADBC reader
bronze uses) and each file's lines, one Delta write each, no typing, validation or merging.
"""

from __future__ import annotations

import sys
from pathlib import Path

import polars as pl

from lakehouse.resources import SourceDatabase
from lakehouse.settings import setting
from lakehouse.sources.contract_files import load_contracts
from lakehouse.storage import delta


def copy_in(target: Path) -> int:
    """Copy everything in; the number of rows written."""
    source = SourceDatabase(url=setting("LAKEHOUSE_SOURCE_URL"))
    landing = Path(setting("LAKEHOUSE_LANDING"))
    rows = 0
    for contract in load_contracts(Path(setting("LAKEHOUSE_CONTRACTS"))):
        if contract.is_database:
            assert contract.source.kind == "database"
            frame = source.read(f"SELECT * FROM {contract.source.table}", what=contract.name)
        else:
            # Bytes, not text: a line that is not UTF-8 is copied too.
            files = sorted(landing.glob(contract.source.glob))
            frame = pl.DataFrame(
                {"line": [line for path in files for line in path.read_bytes().splitlines()]}
            )
        delta.write(str(target / contract.name), frame, mode="overwrite")
        rows += frame.height
    return rows


if __name__ == "__main__":
    print(f"{copy_in(Path(sys.argv[1]))} rows copied")
