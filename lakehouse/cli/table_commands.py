"""`lakehouse table`: a table's versions listed or restored, its Delta log checked or repaired."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from lakehouse.cli.text_table import print_table
from lakehouse.settings import setting
from lakehouse.storage import table_log

if TYPE_CHECKING:
    from lakehouse.resources import LakehouseStorage


def table_command(args: argparse.Namespace) -> int:
    from lakehouse.resources import LakehouseStorage
    from lakehouse.storage import delta, time_travel

    lakehouse = LakehouseStorage(root=setting("LAKEHOUSE_ROOT"))
    layer, name = args.table
    if args.action in ("check", "repair"):
        return _table_log_command(args.action, lakehouse, layer, name)
    if args.action == "history":
        if delta.open_table(lakehouse.table_uri(layer, name)) is None:
            print(f"lakehouse table history: {layer}/{name} does not exist", file=sys.stderr)
            return 2
        rows = time_travel.history(lakehouse.table_uri(layer, name), args.limit)
        print_table(list(rows[0]), [list(row.values()) for row in rows])
        return 0
    try:
        restored = time_travel.restore(lakehouse, layer, name, args.version)
    except time_travel.RestoreError as error:
        print(f"lakehouse table restore: {error}", file=sys.stderr)
        return 2
    print(f"{layer}/{name} restored to version {restored.restored_to} (new version {restored.version})")
    for key, value in restored.markers.items():
        print(f"  ledger {key}: {'not set' if value is None else value}")
    return 0


def _table_log_command(action: str, lakehouse: LakehouseStorage, layer: str, name: str) -> int:
    from lakehouse.storage import time_travel

    uri = lakehouse.table_uri(layer, name)
    report = table_log.check(uri)
    if not report.state.commits and not report.state.problems:
        print(f"lakehouse table {action}: {layer}/{name} has no Delta log at {uri}", file=sys.stderr)
        return 2
    if action == "repair" and not report.state.problems:
        print(f"{layer}/{name}: the Delta log has no broken file; nothing to repair")
        return 0
    if action == "repair":
        repaired = table_log.repair(uri, time_travel.consumer_position(lakehouse, layer, name))
        at = "has no commit left" if repaired.version is None else f"reads at version {repaired.version}"
        print(f"{layer}/{name}: set the torn last commit aside as {repaired.set_aside}; the table {at}")
        print("  the next run redoes that commit's work (its ledger entries went with it)")
        return 0
    state = report.state
    checkpoints = ", ".join(map(str, state.checkpoints)) or "none"
    print(f"{layer}/{name}: commits {state.commits[0]} to {state.newest}, checkpoints: {checkpoints}")
    for problem in state.problems:
        print(f"  {problem.file}: {problem.what}")
    print(f"  table loads: {'yes' if report.load_error is None else 'no (' + report.load_error + ')'}")
    if report.sound:
        return 0
    print(
        f"  `lakehouse table repair {layer}/{name}` sets the torn last commit aside"
        if state.repairable
        else "  not a torn last commit: restore the table's folder from a backup (docs/operations.md)"
    )
    return 1
