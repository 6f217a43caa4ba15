"""Landing lines: each line of a landing file parsed into a bronze row or a quarantined line.

A line holding a JSON object becomes a bronze row (each contract field as text, nested values
as JSON text, so nothing is lost or coerced; other keys as one JSON object in `_extra_keys`, or
the line quarantined, as the contract's `extra_keys` says); any other line is quarantined with
its file, line number, raw text and the reason. So are objects bronze cannot store: a key
naming one of the lakehouse's own columns, or two keys differing only in case. Bronze's
columns are thus the contract's whatever the lines hold, and one odd line never fails the batch.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import orjson
import polars as pl

from lakehouse.bronze.columns import EXTRA_KEYS, LINE_NUMBER, OWN_COLUMNS, SOURCE_FILE
from lakehouse.sources.contract import Contract, LandingSource

# `json.dumps(value, separators=...)` builds an encoder per call: one for all is the same text.
_COMPACT_JSON = json.JSONEncoder(separators=(",", ":"))
_LONG_DIGITS = 19
_DIGITS_AS_ZERO = bytes(ord("0") if byte in b"0123456789" else ord(" ") for byte in range(256))


def _as_text(value: object) -> str | None:
    if value is None or isinstance(value, str):
        return value
    if type(value) is int:  # not bool: JSON writes true and false
        return str(value)
    return _COMPACT_JSON.encode(value)


def _orjson_first(text: str) -> object:
    """orjson's value where it accepts the line (strict JSON); otherwise `json.loads`, whose
    verdict and message count (and which also reads NaN)."""
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return json.loads(text)


def _long_digit_run(data: bytes) -> bool:
    """Whether `data` holds 19 digits in a row, as an integer beyond 64 bits does."""
    return data.translate(_DIGITS_AS_ZERO).find(b"0" * _LONG_DIGITS) != -1


def _json_parser(data: bytes) -> Callable[[str], object]:
    """A parser giving the values `json.loads` gives, through the faster orjson where that is
    safe: orjson parses strict JSON to the same values except integers beyond 64 bits, which it
    makes floats, so a file with such a number is read by `json.loads` alone."""
    return json.loads if _long_digit_run(data) else _orjson_first


# The UTF-8 byte-order mark some editors and exporters put at the start of a file.
BYTE_ORDER_MARK = b"\xef\xbb\xbf"
_OWN_FOLDED = {name.casefold() for name in OWN_COLUMNS}
LISTED_KEYS = 5


def parse_file(
    name: str, data: bytes, contract: Contract
) -> tuple[list[dict[str, object]], list[dict[str, object]]]:
    """Split the file `name` holding `data` into rows (the contract's fields as text, other keys
    per its `extra_keys` rule) and rejected lines with reasons."""
    rows: list[dict[str, object]] = []
    rejected: list[dict[str, object]] = []
    data = data.removeprefix(BYTE_ORDER_MARK)
    parse = _json_parser(data)
    known = frozenset(contract.columns)
    raw_lines = data.split(b"\n")
    if raw_lines and raw_lines[-1] == b"":
        raw_lines.pop()  # the newline that ends the last line
    for number, raw in enumerate(raw_lines, start=1):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as error:
            rejected.append(_rejected(name, number, raw.decode("utf-8", "replace"), f"not UTF-8: {error}"))
            continue
        try:
            value = parse(text)
        except json.JSONDecodeError as error:
            reason = "empty line" if not text.strip() else f"not JSON: {error.msg} at column {error.colno}"
            rejected.append(_rejected(name, number, text, reason))
            continue
        if not isinstance(value, dict):
            rejected.append(
                _rejected(name, number, text, f"not a JSON object: a JSON {type(value).__name__}")
            )
            continue
        if value.keys() <= known:  # the usual line: every key a contract column
            row = {key: _as_text(field) for key, field in value.items()}
        else:
            row, reason = _row_with_extra_keys(value, contract)
            if row is None:
                rejected.append(_rejected(name, number, text, reason))
                continue
        row[SOURCE_FILE], row[LINE_NUMBER] = name, number
        rows.append(row)
    return rows, rejected


def _row_with_extra_keys(
    value: dict[str, object], contract: Contract
) -> tuple[dict[str, object] | None, str]:
    """The row of an object holding keys the contract does not name, or None and the reason
    the line cannot be stored: a key bronze writes itself, two keys Delta would take for one
    column (they differ only in case), or extra keys the contract quarantines."""
    seen: dict[str, str] = {}
    for key in value:
        folded = key.casefold()
        if folded in _OWN_FOLDED:
            return None, f"key '{key}' is a column the lakehouse writes itself"
        if folded in seen:
            return None, f"keys '{seen[folded]}' and '{key}' differ only in case"
        seen[folded] = key
    extra = {key: field for key, field in value.items() if key not in contract.columns}
    assert isinstance(contract.source, LandingSource)
    if contract.source.extra_keys == "quarantine":
        listed = ", ".join(f"'{key}'" for key in list(extra)[:LISTED_KEYS])
        more = f" and {len(extra) - LISTED_KEYS} more" if len(extra) > LISTED_KEYS else ""
        return None, f"keys not in the contract (extra_keys: quarantine): {listed}{more}"
    row: dict[str, object] = {key: _as_text(field) for key, field in value.items() if key in contract.columns}
    row[EXTRA_KEYS] = _COMPACT_JSON.encode(extra)
    return row, ""


def _rejected(name: str, number: int, text: str, reason: str) -> dict[str, object]:
    return {SOURCE_FILE: name, LINE_NUMBER: number, "_raw_line": text, "_error": reason}


def rows_frame(rows: list[dict[str, object]], contract: Contract) -> pl.DataFrame:
    """The rows in bronze's columns for the contract, the same for every batch."""
    assert isinstance(contract.source, LandingSource)
    schema: dict[str, pl.DataType] = dict.fromkeys(contract.columns, pl.String)
    if contract.source.extra_keys == "keep_json":
        schema[EXTRA_KEYS] = pl.String
    return pl.DataFrame(rows, schema={**schema, SOURCE_FILE: pl.String, LINE_NUMBER: pl.Int64})
