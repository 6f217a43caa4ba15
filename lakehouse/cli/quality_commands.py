"""`lakehouse quality report`: the silver tables measured against their contracts' SLAs."""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from pathlib import Path

from lakehouse.settings import setting


def quality_report_command(args: argparse.Namespace) -> int:
    from asset_checks.quality_report import quality_report, to_json, to_markdown
    from lakehouse.resources import LakehouseStorage
    from lakehouse.sources.contract_files import load_contracts

    contracts = load_contracts(Path(setting("LAKEHOUSE_CONTRACTS")))
    lakehouse = LakehouseStorage(root=setting("LAKEHOUSE_ROOT"))
    try:
        report = quality_report(lakehouse, contracts, args.now or datetime.now(UTC), args.table)
    except ValueError as error:
        print(f"lakehouse quality report: {error}", file=sys.stderr)
        return 2
    print(to_json(report) if args.format == "json" else to_markdown(report), end="")
    return 0 if report["status"] == "pass" else 1
