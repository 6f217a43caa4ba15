"""Decoding PostgreSQL's `pgoutput` logical replication messages (protocol version 1).

`pg_logical_slot_peek_binary_changes(..., 'proto_version', '1', 'publication_names', ...)`
returns one message per row. The ones change capture needs are decoded here: Begin, Commit,
Relation (a table's columns, sent before its first change in a stream), Insert, Update,
Delete and Truncate; Origin, Type and Message carry nothing bronze stores and decode to None.
Column values are text (protocol 1 has no binary values): None for NULL, UNCHANGED for a
TOASTed value an update left as it was and so did not send.

Layout (PostgreSQL's "Logical Replication Message Formats"): integers are big-endian, strings
are NUL-terminated UTF-8, a tuple is Int16 columns then per column a kind byte `n` (null),
`u` (unchanged TOAST) or `t` (Int32 length, then the text).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Final


class Unchanged:
    """The value of a TOASTed column an update did not change: the message omits it."""

    def __repr__(self) -> str:
        return "UNCHANGED"


UNCHANGED: Final = Unchanged()
Value = str | None | Unchanged


class DecodeError(ValueError):
    """Bytes that are not a pgoutput protocol 1 message."""


@dataclass(frozen=True)
class Begin:
    final_lsn: int
    xid: int


@dataclass(frozen=True)
class Commit:
    commit_lsn: int
    # The end of the commit record: advancing a slot to it drops the transaction from the stream.
    end_lsn: int


@dataclass(frozen=True)
class RelationColumn:
    name: str
    is_key: bool
    type_oid: int
    type_modifier: int


@dataclass(frozen=True)
class Relation:
    oid: int
    namespace: str
    name: str
    replica_identity: str
    columns: tuple[RelationColumn, ...]


@dataclass(frozen=True)
class Insert:
    relation: int
    new: tuple[Value, ...]


@dataclass(frozen=True)
class Update:
    relation: int
    # The old row: its key columns (`K`, when the key changed) or all of it (`O`, replica
    # identity full); None when neither was sent.
    old: tuple[Value, ...] | None
    new: tuple[Value, ...]


@dataclass(frozen=True)
class Delete:
    relation: int
    # The key columns (other columns None) or, under replica identity full, the whole row.
    old: tuple[Value, ...]


@dataclass(frozen=True)
class Truncate:
    relations: tuple[int, ...]


Message = Begin | Commit | Relation | Insert | Update | Delete | Truncate


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data, self.offset = data, 0

    def take(self, size: int) -> bytes:
        if self.offset + size > len(self.data):
            raise DecodeError(f"message ends after {len(self.data)} bytes, {size} more expected")
        chunk = self.data[self.offset : self.offset + size]
        self.offset += size
        return chunk

    def unpack(self, form: str) -> int:
        (value,) = struct.unpack(form, self.take(struct.calcsize(form)))
        return value

    def byte(self) -> str:
        return chr(self.take(1)[0])

    def string(self) -> str:
        end = self.data.find(b"\0", self.offset)
        if end < 0:
            raise DecodeError("string without its terminating NUL")
        text = self.data[self.offset : end].decode()
        self.offset = end + 1
        return text

    def tuple(self) -> tuple[Value, ...]:
        values: list[Value] = []
        for _ in range(self.unpack(">h")):
            kind = self.byte()
            if kind == "n":
                values.append(None)
            elif kind == "u":
                values.append(UNCHANGED)
            elif kind == "t":
                values.append(self.take(self.unpack(">i")).decode())
            else:
                raise DecodeError(f"tuple value of unknown kind {kind!r} (protocol 1 sends text only)")
        return tuple(values)

    def tagged_tuple(self, *tags: str) -> tuple[str, tuple[Value, ...]]:
        tag = self.byte()
        if tag not in tags:
            raise DecodeError(f"expected a tuple tagged {' or '.join(tags)}, got {tag!r}")
        return tag, self.tuple()


def decode(data: bytes) -> Message | None:
    """The message in `data`; None for the kinds change capture ignores (origin, type, logical
    message)."""
    if not data:
        raise DecodeError("empty message")
    reader = _Reader(bytes(data))
    kind = reader.byte()
    if kind == "B":
        final_lsn, _timestamp, xid = reader.unpack(">Q"), reader.unpack(">q"), reader.unpack(">I")
        return Begin(final_lsn, xid)
    if kind == "C":
        _flags, commit_lsn, end_lsn = reader.unpack(">B"), reader.unpack(">Q"), reader.unpack(">Q")
        return Commit(commit_lsn, end_lsn)
    if kind == "R":
        oid, namespace, name = reader.unpack(">I"), reader.string(), reader.string()
        identity, count = reader.byte(), reader.unpack(">h")
        columns = tuple(
            RelationColumn(
                is_key=bool(reader.unpack(">B") & 1),
                name=reader.string(),
                type_oid=reader.unpack(">I"),
                type_modifier=reader.unpack(">i"),
            )
            for _ in range(count)
        )
        return Relation(oid, namespace, name, identity, columns)
    if kind == "I":
        oid = reader.unpack(">I")
        return Insert(oid, reader.tagged_tuple("N")[1])
    if kind == "U":
        oid = reader.unpack(">I")
        tag, values = reader.tagged_tuple("K", "O", "N")
        if tag == "N":
            return Update(oid, None, values)
        return Update(oid, values, reader.tagged_tuple("N")[1])
    if kind == "D":
        oid = reader.unpack(">I")
        return Delete(oid, reader.tagged_tuple("K", "O")[1])
    if kind == "T":
        count, _options = reader.unpack(">i"), reader.unpack(">B")
        return Truncate(tuple(reader.unpack(">I") for _ in range(count)))
    if kind in "OYM":
        return None
    raise DecodeError(f"unknown message kind {kind!r}")
