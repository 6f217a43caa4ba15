"""What a bronze extraction saw of its source, carried to the next run: the source table's
version (lakehouse/sources/versions.py), read before the run read anything, and the bronze
commit that last changed rows after it. While the source, bronze and the contract are all as
they were, the source holds no row bronze lacks and no longer lacks a key bronze holds live,
so the next run reads nothing.

A run leaves the record only when it saw the whole source: it looked for deletes, or the
contract has none to look for, or bronze was empty. The bronze asset keeps it in its
materialization's metadata, as it keeps the live keys' summary (lakehouse/bronze/live_keys.py).
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from typing import Any

from deltalake import DeltaTable

from lakehouse.sources.contract import Contract
from lakehouse.storage import delta


def contract_digest(contract: Contract) -> str:
    """A change to the contract may change what an extraction reads."""
    return hashlib.blake2b(contract.model_dump_json().encode(), digest_size=8).hexdigest()


@dataclass(frozen=True)
class SourceSeen:
    source: str  # the source table's version
    bronze: int  # the version of bronze's last commit that changed rows
    contract: str  # `contract_digest`
    unwatermarked: int  # source rows without a watermark, which no extraction reads

    def as_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Any) -> SourceSeen | None:
        try:
            source, contract = str(data["source"]), str(data["contract"])
            return cls(source, int(data["bronze"]), contract, int(data["unwatermarked"]))
        except (KeyError, TypeError, ValueError):
            return None

    def holds(self, source: str | None, table: DeltaTable, contract: Contract) -> bool:
        """Whether the source (its version now), bronze and the contract are as recorded."""
        return (
            source == self.source
            and delta.last_row_change(table) == self.bronze
            and contract_digest(contract) == self.contract
        )
