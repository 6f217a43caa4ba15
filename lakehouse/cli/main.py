"""The `lakehouse` command: build and advance the demo source, summarise the tables, report
their quality, inspect or roll back a table's versions, release a change-captured table's
replication slot, and serve the pipeline's health metrics."""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime

from lakehouse.cli.demo_commands import demo_command
from lakehouse.cli.metrics_commands import metrics_serve
from lakehouse.cli.quality_commands import quality_report_command
from lakehouse.cli.source_commands import contract_scaffold, source_release
from lakehouse.cli.source_url import SourceUrlError
from lakehouse.cli.table_commands import table_command
from lakehouse.demo.store import NotADemoError
from lakehouse.settings import SettingsError
from lakehouse.sources.contract_files import ContractError
from lakehouse.sources.errors import SourceError, SourceUnavailableError
from lakehouse.storage import table_log

EXIT_CODES = """exit codes:
  0  done
  1  quality report: a table misses its SLAs; summary: no Delta tables yet; table check: the
     table's Delta log has a broken file
  2  usage or configuration error: bad arguments or settings, an invalid contract, a source URL
     the demo cannot use (not a database the demo created, or no demo yet); a table whose Delta
     log cannot be read, or that table repair does not mend
  3  the source database stayed unreachable through every retry"""


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
    from lakehouse.demo.initial import DEFAULT_DEFECT_RATES

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
    metrics = commands.add_parser("metrics", help="the pipeline's health for Prometheus").add_subparsers(
        dest="action", required=True
    )
    served = metrics.add_parser(
        "serve", help="serve OpenMetrics at http://HOST:PORT/metrics, computed at each scrape from metadata"
    )
    served.add_argument(
        "--host", help="the address to listen on, default: LAKEHOUSE_METRICS_HOST (127.0.0.1)"
    )
    served.add_argument(
        "--port", type=_at_least_one, help="port to listen on, default: LAKEHOUSE_METRICS_PORT (9464)"
    )
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


def _run(args: argparse.Namespace) -> int:
    if args.command == "contract":
        return contract_scaffold(args)
    if args.command == "demo":
        return demo_command(args)
    if args.command == "source":
        return source_release(args)
    if args.command == "metrics":
        return metrics_serve(args)
    if args.command == "quality":
        return quality_report_command(args)
    if args.command == "table":
        return table_command(args)
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
