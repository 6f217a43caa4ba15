"""`lakehouse contract scaffold` and `lakehouse source release`: a first contract written from a
source table, and the replication slot and publication of a cdc contract dropped."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lakehouse.cli.source_url import configured_source
from lakehouse.resources import SourceDatabase
from lakehouse.settings import setting
from lakehouse.sources.contract_files import ContractError


def contract_scaffold(args: argparse.Namespace) -> int:
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


def source_release(args: argparse.Namespace) -> int:
    from lakehouse.bronze.cdc_slot import release
    from lakehouse.resources import LakehouseStorage
    from lakehouse.sources.contract_files import load_contracts

    contracts = {contract.name: contract for contract in load_contracts(Path(setting("LAKEHOUSE_CONTRACTS")))}
    if args.contract not in contracts:
        raise ContractError(
            f"no contract named '{args.contract}' in {setting('LAKEHOUSE_CONTRACTS')} "
            f"(known: {', '.join(sorted(contracts))})"
        )
    contract = contracts[args.contract]
    source = configured_source()
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
