"""What a bronze extraction saw of its source, carried to the next run: the source table's
version (lakehouse/sources/versions.py), read before the run read anything, and the bronze
commit that last changed rows after it. While the source, bronze and the contract are all as
they were, the source holds no row bronze lacks and no longer lacks a key bronze holds live,
so the next run reads nothing.

A run leaves the record only when it saw the whole source: it looked for deletes, or the
contract has none to look for, or bronze was empty. The bronze asset keeps it in its
materialization's metadata, as it keeps the live keys' summary (lakehouse/bronze/live_keys.py).
A run that looked for deletes by key ranges also keeps the source's summary of those ranges:
while the source table's version is the one recorded, `keys_in_source` compares silver with
that summary instead of asking the source for the same one again.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from deltalake import DeltaTable

from lakehouse.bronze.deletes import SourceKeys, summary_as_json, summary_from_json
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
    keys: SourceKeys | None = None  # the source's key summary, from a search for deletes

    def as_json(self) -> dict[str, Any]:
        keys = {"keys": summary_as_json(self.keys.ranges, self.keys.summary)} if self.keys else {}
        return {
            "source": self.source, "bronze": self.bronze, "contract": self.contract,
            "unwatermarked": self.unwatermarked, **keys,
        }  # fmt: skip

    @classmethod
    def from_json(cls, data: Any) -> SourceSeen | None:
        try:
            source, contract = str(data["source"]), str(data["contract"])
            keys = SourceKeys(*summary_from_json(data["keys"])) if "keys" in data else None
            return cls(source, int(data["bronze"]), contract, int(data["unwatermarked"]), keys)
        except (KeyError, TypeError, ValueError):
            return None

    def holds(self, source: str | None, table: DeltaTable, contract: Contract) -> bool:
        """Whether the source (its version now), bronze and the contract are as recorded."""
        return (
            source == self.source
            and delta.last_row_change(table) == self.bronze
            and contract_digest(contract) == self.contract
        )
