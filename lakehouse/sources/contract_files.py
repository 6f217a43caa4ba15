"""Loading contract files: each one parsed and validated, the folder's set checked together.

Errors name the file and the field, so a user can fix a contract from the message alone.
"""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import ValidationError

from lakehouse.sources.contract import Contract

CONTRACT_SUFFIXES = (".yaml", ".yml")


class ContractError(ValueError):
    """A contract file that cannot be used; the message names the file and the field."""


def _describe(error: ValidationError) -> str:
    parts = []
    for item in error.errors():
        field = ".".join(str(part) for part in item["loc"] if not str(part).startswith("function-"))
        parts.append(f"field '{field or '(top level)'}': {item['msg']}")
    return "; ".join(parts)


def load_contract(path: Path) -> Contract:
    """Parse and validate one contract file; errors name the file and the field."""
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ContractError(f"{path}: not valid YAML: {error}") from error
    if not isinstance(raw, dict):
        raise ContractError(f"{path}: a contract must be a mapping of fields")
    try:
        contract = Contract.model_validate(raw)
    except ValidationError as error:
        raise ContractError(f"{path}: {_describe(error)}") from error
    if contract.name != path.stem:
        raise ContractError(f"{path}: field 'name': '{contract.name}' must match the file name")
    return contract


def _check_references(loaded: dict[str, tuple[Path, Contract]]) -> None:
    """Each `references: dataset.column` names a contract of the set and one of its columns:
    a wrong one would otherwise flag every row as an orphan, or fail mid-run."""
    for path, contract in loaded.values():
        for name, spec in contract.columns.items():
            if not spec.references:
                continue
            field = f"field 'columns.{name}.references'"
            dataset, column = spec.references.split(".")
            if dataset not in loaded:
                raise ContractError(
                    f"{path}: {field}: no contract defines dataset '{dataset}' "
                    f"(known: {', '.join(sorted(loaded))})"
                )
            parent_path, parent = loaded[dataset]
            if column not in parent.columns:
                raise ContractError(
                    f"{path}: {field}: '{column}' is not a column of dataset '{dataset}' ({parent_path})"
                )


def load_contracts(folder: Path) -> list[Contract]:
    """Every contract (`*.yaml` or `*.yml`) in the folder, sorted by name, checked together:
    one file per dataset, and every `references` pointing at a dataset and column of the set."""
    paths = (
        sorted(path for path in folder.iterdir() if path.suffix in CONTRACT_SUFFIXES)
        if folder.is_dir()
        else []
    )
    if not paths:
        raise ContractError(f"{folder}: no contract files (*.yaml, *.yml) found")
    loaded: dict[str, tuple[Path, Contract]] = {}
    for path in paths:
        contract = load_contract(path)
        if contract.name in loaded:
            first = loaded[contract.name][0]
            raise ContractError(
                f"{path}: field 'name': dataset '{contract.name}' is already defined by {first}"
            )
        loaded[contract.name] = (path, contract)
    _check_references(loaded)
    return [contract for _, contract in sorted(loaded.values(), key=lambda item: item[1].name)]
