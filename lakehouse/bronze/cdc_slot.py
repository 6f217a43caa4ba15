"""The publication and logical replication slot change capture owns on a PostgreSQL source.

For a contract with `capture: cdc` the lakehouse creates and owns a publication of the table
and a logical replication slot with the built-in `pgoutput` plugin, both named by
`capture_name` (`lakehouse_<contract>_<digest of the bronze table's location>`, so two
lakehouses reading one server never share a slot). Nothing is installed on the server.
"""

from __future__ import annotations

import hashlib

import polars as pl

from lakehouse.resources import SourceDatabase
from lakehouse.sources.contract import Contract
from lakehouse.sources.errors import SourceError
from lakehouse.storage.sql import qualified, quoted

# Marks the publication as the lakehouse's own (its comment); a slot is known by its name.
OWNER_MARK = "lakehouse change capture"
SLOT_PLUGIN = "pgoutput"


class CaptureError(SourceError):
    """A source that change capture cannot read; the message says why and what to change."""


def lsn_text(lsn: int | None) -> str:
    """An LSN as PostgreSQL writes it (`16/B374D848`)."""
    return "none" if lsn is None else f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


def capture_name(contract: Contract, bronze_uri: str) -> str:
    """The name of the slot and of the publication the lakehouse owns for this contract's
    bronze table (slot names: at most 63 lower-case letters, digits and underscores)."""
    digest = hashlib.sha256(bronze_uri.encode()).hexdigest()[:8]
    return f"lakehouse_{contract.name.lower()[:40]}_{digest}"


def bronze_name(contract: Contract) -> str:
    """How messages name the contract's bronze table."""
    return f"bronze/{contract.name}"


def check_source(contract: Contract, source: SourceDatabase) -> None:
    """Fail with one line when the source cannot be change-captured: not PostgreSQL,
    `wal_level` below logical, a role without replication rights, or a table whose updates
    and deletes do not say which row they changed."""
    name = bronze_name(contract)
    if source.dialect != "postgresql":
        raise CaptureError(
            f"{name}: capture: cdc needs a PostgreSQL source, and {source.label} is SQLite; "
            "use capture: watermark"
        )
    server = source.read(
        "SELECT current_setting('wal_level') AS wal_level, current_user AS who, "
        "(SELECT rolsuper OR rolreplication FROM pg_roles WHERE rolname = current_user) AS may_replicate",
        what=f"{name}: checking change capture on",
    ).row(0, named=True)
    if server["wal_level"] != "logical":
        raise CaptureError(
            f"{name}: {source.label} has wal_level = {server['wal_level']}; change capture needs "
            "wal_level = logical (ALTER SYSTEM SET wal_level = logical, then restart the server: "
            "the setting takes effect only at start)"
        )
    if not server["may_replicate"]:
        raise CaptureError(
            f"{name}: role {server['who']} on {source.label} may not use replication slots: "
            f"ALTER ROLE {quoted(server['who'])} REPLICATION (or use capture: watermark)"
        )
    identity = source.read(
        "SELECT c.relreplident AS identity, EXISTS (SELECT 1 FROM pg_index i "
        "WHERE i.indrelid = c.oid AND i.indisprimary) AS has_key FROM pg_class c WHERE c.oid = $1::regclass",
        [qualified(contract.source.table)],
        what=f"{name}: checking source table {contract.source.table}",
    ).row(0, named=True)
    if identity["identity"] == "n" or (identity["identity"] == "d" and not identity["has_key"]):
        raise CaptureError(
            f"{name}: source table {contract.source.table} has no primary key or replica identity, "
            "so its updates and deletes cannot name their row (and PostgreSQL would refuse its "
            "UPDATEs once published): add a primary key, or use capture: watermark"
        )


def find_slot(source: SourceDatabase, name: str, contract: Contract) -> int | None:
    """The slot's confirmed position, None when there is no such slot; a slot of that name
    that is not a pgoutput slot of this database is refused, never used."""
    found = source.read(
        "SELECT plugin, database = current_database() AS here, "
        "(confirmed_flush_lsn - '0/0')::bigint AS confirmed FROM pg_replication_slots WHERE slot_name = $1",
        [name],
        what=f"{bronze_name(contract)}: reading replication slot {name}",
    )
    if found.is_empty():
        return None
    slot = found.row(0, named=True)
    if slot["plugin"] != SLOT_PLUGIN or not slot["here"]:
        raise CaptureError(
            f"{bronze_name(contract)}: replication slot {name} exists but is not the lakehouse's "
            f"({slot['plugin']} slot{'' if slot['here'] else ' of another database'}); drop or rename it"
        )
    return slot["confirmed"]


def _publication_owned(source: SourceDatabase, name: str) -> bool | None:
    """Whether the publication is the lakehouse's; None when it does not exist."""
    found = source.read(
        "SELECT obj_description(oid, 'pg_publication') AS note FROM pg_publication WHERE pubname = $1",
        [name],
        what=f"reading publication {name}",
    )
    return None if found.is_empty() else (found.item() or "").startswith(OWNER_MARK)


def publication_lost(contract: Contract, source: SourceDatabase, name: str) -> str | None:
    """When the slot's publication was dropped outside the lakehouse, the slot cannot be read
    again (its changes name a publication that no longer exists): drop it, and say so."""
    if _publication_owned(source, name) is not None:
        return None
    source.read(
        "SELECT 1 AS dropped FROM pg_drop_replication_slot($1)",
        [name],
        what=f"{bronze_name(contract)}: dropping replication slot {name}",
    )
    return (
        f"{bronze_name(contract)}: publication {name} is gone (dropped outside the lakehouse?), and its slot "
        "cannot be read without it: created both again and re-read the table whole, with a tombstone "
        "for every key it no longer holds"
    )


def create_slot(contract: Contract, source: SourceDatabase, name: str) -> int:
    """Create the publication (if absent) and the slot; the slot's start position."""
    owned = _publication_owned(source, name)
    if owned is False:
        raise CaptureError(
            f"{bronze_name(contract)}: publication {name} exists but is not the lakehouse's; "
            "drop or rename it"
        )
    if owned is None:
        source.execute(
            [
                f"CREATE PUBLICATION {quoted(name)} FOR TABLE {qualified(contract.source.table)}",
                f"COMMENT ON PUBLICATION {quoted(name)} IS '{OWNER_MARK} of contract {contract.name}'",
            ],
            what=f"{bronze_name(contract)}: creating publication {name}",
        )
    created = source.read(
        "SELECT (lsn - '0/0')::bigint AS lsn FROM pg_create_logical_replication_slot($1, $2)",
        [name, SLOT_PLUGIN],
        what=f"{bronze_name(contract)}: creating replication slot {name}",
    )
    return created.item()


def release(contract: Contract, source: SourceDatabase, bronze_uri: str) -> list[str]:
    """Drop the contract's slot and publication, when they are the lakehouse's; what was dropped."""
    name = capture_name(contract, bronze_uri)
    dropped = []
    if find_slot(source, name, contract) is not None:
        source.read(
            "SELECT 1 AS dropped FROM pg_drop_replication_slot($1)",
            [name],
            what=f"{bronze_name(contract)}: dropping replication slot {name}",
        )
        dropped.append(f"replication slot {name}")
    if _publication_owned(source, name):
        source.execute(
            [f"DROP PUBLICATION {quoted(name)}"], what=f"{bronze_name(contract)}: dropping publication"
        )
        dropped.append(f"publication {name}")
    return dropped


def slot_lag(contract: Contract, source: SourceDatabase, bronze_uri: str) -> int | None:
    """Bytes of WAL the contract's slot keeps on the server; None when there is no slot."""
    lag = source.read(
        "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint AS lag "
        "FROM pg_replication_slots WHERE slot_name = $1",
        [capture_name(contract, bronze_uri)],
        what=f"{bronze_name(contract)}: reading slot lag",
    )
    return None if lag.is_empty() else lag.item()


def peek(contract: Contract, source: SourceDatabase, name: str, limit: int) -> pl.DataFrame:
    """The slot's next changes, whole transactions until `limit` is reached; peeked, not consumed."""
    return source.read(
        "SELECT (lsn - '0/0')::bigint AS lsn, data FROM pg_logical_slot_peek_binary_changes("
        "$1, NULL, $2::int, 'proto_version', '1', 'publication_names', $3)",
        [name, limit, name],
        what=f"{bronze_name(contract)}: reading replication slot {name}",
    )


def advance(contract: Contract, source: SourceDatabase, name: str, lsn: int) -> None:
    """Let the slot forget what came before `lsn`: only once bronze has committed it."""
    # Never behind where the slot is (another run may have moved it): that would be an error.
    source.read(
        "SELECT slot_name FROM pg_replication_slot_advance($1, GREATEST('0/0'::pg_lsn + $2::numeric, "
        "(SELECT confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = $1)))",
        [name, lsn],
        what=f"{bronze_name(contract)}: advancing replication slot {name}",
    )
