"""The `lakehouse` command: build and advance the demo source, summarise the tables, report
their quality, inspect or roll back a table's versions, and release a change-captured table's
replication slot."""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from lakehouse.cli.text_table import print_table
from lakehouse.demo.store import NotADemoError, shown_url
from lakehouse.resources import SourceDatabase
from lakehouse.settings import SettingsError, setting
from lakehouse.sources.contract import ContractError
from lakehouse.sources.errors import SourceError, SourceUnavailableError
from lakehouse.storage import table_log

if TYPE_CHECKING:
    from lakehouse.resources import LakehouseStorage

EXIT_CODES = """exit codes:
  0  done
  1  quality report: a table misses its SLAs; summary: no Delta tables yet; table check: the
     table's Delta log has a broken file
  2  usage or configuration error: bad arguments or settings, an invalid contract, a source URL
     the demo cannot use (not a database the demo created, or no demo yet); a table whose Delta
     log cannot be read, or that table repair does not mend
  3  the source database stayed unreachable through every retry"""


class SourceUrlError(ValueError):
    """LAKEHOUSE_SOURCE_URL names no database the lakehouse can read."""


# Errors in what the user gave (arguments, settings, contracts, the source they point at): one
# line on stderr and exit 2. Anything else is a defect of the lakehouse and keeps its traceback.
USER_ERRORS = (
    ContractError,
    SettingsError,
    NotADemoError,
    SourceUrlError,
    SourceError,
    table_log.CorruptLog,
    table_log.RepairRefused,
)


def _source() -> SourceDatabase:
    """The configured source, its URL's scheme checked before anything reads or writes it."""
    source = SourceDatabase(url=setting("LAKEHOUSE_SOURCE_URL"))
    try:
        _ = source.dialect
    except ValueError as error:
        raise SourceUrlError(str(error)) from error
    return source


def _moment(text: str) -> datetime:
    moment = datetime.fromisoformat(text)
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _positive(text: str) -> float:
    number = float(text)
    if not 0 < number < float("inf"):
        raise argparse.ArgumentTypeError(f"{text}: must be greater than 0")
    return number


def _at_least_one(text: str) -> int:
    number = int(text)
    if number < 1:
        raise argparse.ArgumentTypeError(f"{text}: must be at least 1")
    return number


def _rate(text: str) -> tuple[str, float]:
    from lakehouse.demo.simulation import DEFAULT_DEFECT_RATES

    name, _, value = text.partition("=")
    if name not in DEFAULT_DEFECT_RATES or not value:
        raise argparse.ArgumentTypeError(
            f"'{text}': use NAME=RATE with NAME one of {', '.join(DEFAULT_DEFECT_RATES)}"
        )
    return name, float(value)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lakehouse",
        description=__doc__,
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser("demo", help="the demo shop source").add_subparsers(
        dest="action", required=True
    )
    init = demo.add_parser("init", help="create the shop database and landing files")
    init.add_argument(
        "--scale", type=_positive, default=0.1, help="1 = 100k customers, 1M orders (default 0.1)"
    )
    init.add_argument("--seed", type=int, default=42)
    init.add_argument("--now", type=_moment, help="pin the demo clock (ISO-8601), default: now")
    init.add_argument(
        "--defect",
        type=_rate,
        action="append",
        default=[],
        metavar="NAME=RATE",
        help="override a defect rate, e.g. malformed_line=0.01 (repeatable)",
    )
    init.add_argument("--drift-batch", type=int, default=2, help="batch from which orders has coupon_code")
    init.add_argument(
        "--force", action="store_true", help="rebuild the demo source if one exists (never another database)"
    )
    advance = demo.add_parser("advance", help="simulate more shop activity")
    advance.add_argument("--batches", type=_at_least_one, default=1)
    advance.add_argument("--now", type=_moment, help="pin the demo clock (ISO-8601), default: now")

    commands.add_parser("summary", help="rows and Delta version of every lakehouse table")

    quality = commands.add_parser("quality", help="data quality of the silver tables").add_subparsers(
        dest="action", required=True
    )
    report = quality.add_parser(
        "report", help="rows, freshness, duplicates and null rates against the SLAs; exit 1 on failure"
    )
    report.add_argument("--table", help="one table (e.g. orders), default: every contract's table")
    report.add_argument("--format", choices=("md", "json"), default="md")
    report.add_argument("--now", type=_moment, help="measure freshness as of this moment (ISO-8601)")
    table = commands.add_parser("table", help="a table's versions: inspect, roll back").add_subparsers(
        dest="action", required=True
    )
    listed = table.add_parser(
        "history", help="the table's versions, newest first, with the run that wrote each"
    )
    listed.add_argument("table", type=_table_name, help="<layer>/<table>, e.g. silver/orders")
    listed.add_argument("--limit", type=_at_least_one, default=20, help="versions to list (default 20)")
    back = table.add_parser(
        "restore", help="roll the table back to a version, with its ledger (watermark, positions) as it was"
    )
    back.add_argument("table", type=_table_name, help="<layer>/<table>, e.g. bronze/orders")
    back.add_argument("--version", type=int, required=True, help="the version to restore")
    checked = table.add_parser(
        "check", help="read every file of the table's Delta log and load the table; exit 1 on a problem"
    )
    checked.add_argument("table", type=_table_name, help="<layer>/<table>, e.g. silver/orders")
    mended = table.add_parser(
        "repair", help="set a torn last commit aside, so the table reads at the version before it"
    )
    mended.add_argument("table", type=_table_name, help="<layer>/<table>, e.g. silver/orders")
    source = commands.add_parser(
        "source", help="the lakehouse's objects in the source database"
    ).add_subparsers(dest="action", required=True)
    release = source.add_parser(
        "release",
        help="drop the replication slot and publication the lakehouse created for a cdc contract, "
        "and nothing else (its next run starts again from a snapshot)",
    )
    release.add_argument("contract", help="the contract's name, e.g. orders")
    contract = commands.add_parser("contract", help="dataset contracts").add_subparsers(
        dest="action", required=True
    )
    scaffold = contract.add_parser(
        "scaffold", help="write a first contract for a source table, from the database's schema"
    )
    scaffold.add_argument("table", help="the source table (schema.table in PostgreSQL)")
    scaffold.add_argument("--source", help="the source URL, default: LAKEHOUSE_SOURCE_URL")
    scaffold.add_argument(
        "--output", help="the folder to write <name>.yaml into, or - for stdout; default: LAKEHOUSE_CONTRACTS"
    )
    scaffold.add_argument("--force", action="store_true", help="replace an existing contract of that name")
    return parser


def _table_name(text: str) -> tuple[str, str]:
    layer, _, name = text.partition("/")
    if not layer or not name or "/" in name:
        raise argparse.ArgumentTypeError(f"'{text}': use <layer>/<table>, e.g. silver/orders")
    return layer, name


def _table_command(args: argparse.Namespace) -> int:
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


def _quality_report(args: argparse.Namespace) -> int:
    from asset_checks.quality_report import quality_report, to_json, to_markdown
    from lakehouse.resources import LakehouseStorage
    from lakehouse.sources.contract import load_contracts

    contracts = load_contracts(Path(setting("LAKEHOUSE_CONTRACTS")))
    lakehouse = LakehouseStorage(root=setting("LAKEHOUSE_ROOT"))
    try:
        report = quality_report(lakehouse, contracts, args.now or datetime.now(UTC), args.table)
    except ValueError as error:
        print(f"lakehouse quality report: {error}", file=sys.stderr)
        return 2
    print(to_json(report) if args.format == "json" else to_markdown(report), end="")
    return 0 if report["status"] == "pass" else 1


def _contract_scaffold(args: argparse.Namespace) -> int:
    from lakehouse.sources.scaffold import scaffold, write_contract

    # One attempt: a schema read is interactive, and a wrong URL should say so at once.
    source = SourceDatabase(url=args.source or setting("LAKEHOUSE_SOURCE_URL"), max_attempts=1)
    try:
        contract = scaffold(source, args.table)
        if args.output == "-":
            print(contract.text, end="")
        else:
            folder = Path(args.output or setting("LAKEHOUSE_CONTRACTS"))
            path = write_contract(folder, contract.name, contract.text, args.force)
            print(f"wrote {path}: review it and write its description")
    except ValueError as error:  # a ScaffoldError, or a URL of no supported scheme
        print(f"lakehouse contract scaffold: {error}", file=sys.stderr)
        return 2
    if contract.watermark is None:
        print(
            f"lakehouse contract scaffold: {args.table} has no watermark column; the contract "
            "explains what to do and does not load until it names one",
            file=sys.stderr,
        )
    return 0


def _source_release(args: argparse.Namespace) -> int:
    from lakehouse.bronze.cdc_slot import release
    from lakehouse.resources import LakehouseStorage
    from lakehouse.sources.contract import load_contracts

    contracts = {contract.name: contract for contract in load_contracts(Path(setting("LAKEHOUSE_CONTRACTS")))}
    if args.contract not in contracts:
        raise ContractError(
            f"no contract named '{args.contract}' in {setting('LAKEHOUSE_CONTRACTS')} "
            f"(known: {', '.join(sorted(contracts))})"
        )
    contract = contracts[args.contract]
    source = _source()
    if source.dialect != "postgresql":
        print(f"{source.label} is not PostgreSQL: the lakehouse holds no slot or publication there")
        return 0
    lakehouse = LakehouseStorage(root=setting("LAKEHOUSE_ROOT"))
    dropped = release(contract, source, lakehouse.table_uri("bronze", contract.name))
    if not dropped:
        print(f"{contract.name}: the lakehouse holds no replication slot or publication on {source.label}")
    for name in dropped:
        print(f"{contract.name}: dropped {name} on {source.label}")
    return 0


def _demo_command(args: argparse.Namespace) -> int:
    from lakehouse.demo import simulation, store

    source = _source()
    landing = Path(setting("LAKEHOUSE_LANDING"))
    if args.action == "init":
        if store.demo_id(source) is not None and not args.force:
            existing = simulation.Manifest.load(landing)
            details = (
                f" (scale {existing.scale}, seed {existing.seed}, {existing.batches} batches, "
                f"clock {existing.anchor})"
                if existing
                else ""
            )
            print(f"demo source exists in {shown_url(source)}{details}; --force rebuilds it")
            return 0
        manifest = simulation.init(
            source,
            landing,
            args.scale,
            args.seed,
            args.now,
            dict(args.defect),
            args.drift_batch,
        )
    else:
        manifest = simulation.advance(source, landing, args.batches, args.now)
    batch = manifest.log[-1]
    rows = ", ".join(f"{table} {counts}" for table, counts in batch["rows"].items())
    print(
        f"demo batch {batch['batch']} at {manifest.anchor} into {source.label}: {rows}; "
        f"{sum(batch['event_files'].values())} events in {len(batch['event_files'])} files"
    )
    return 0


def _run(args: argparse.Namespace) -> int:
    if args.command == "contract":
        return _contract_scaffold(args)
    if args.command == "demo":
        return _demo_command(args)
    if args.command == "source":
        return _source_release(args)
    if args.command == "quality":
        return _quality_report(args)
    if args.command == "table":
        return _table_command(args)
    from lakehouse.cli.summary import print_summary

    return print_summary()


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    command = " ".join(filter(None, ("lakehouse", args.command, getattr(args, "action", None))))
    try:
        return _run(args)
    except SourceUnavailableError as error:  # before USER_ERRORS, which holds its base class
        return _failed(command, error, 3)
    except USER_ERRORS as error:
        return _failed(command, error, 2)


def _failed(command: str, error: Exception, code: int) -> int:
    # One line, whatever the message: a YAML parser's spans several, with a caret under the spot.
    print(f"{command}: {' '.join(str(error).split())}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
