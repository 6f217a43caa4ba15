"""PII protection: contract-marked columns are stored in silver as a keyed hash.

The raw values stay in bronze only. The key (salt) comes from `LAKEHOUSE_PII_SALT`; without
it a development default is used and every materialisation says so.
"""

from __future__ import annotations

import hashlib
import hmac

import dagster as dg
import polars as pl

from lakehouse.contract import Contract
from lakehouse.settings import DEFAULTS

DEVELOPMENT_SALT = DEFAULTS["LAKEHOUSE_PII_SALT"]


class PiiHasher(dg.ConfigurableResource):
    """HMAC-SHA256 of PII values under a secret salt: joinable, not reversible without the salt."""

    salt: str

    @property
    def uses_development_salt(self) -> bool:
        return self.salt == DEVELOPMENT_SALT

    def hash_value(self, value: str) -> str:
        return hmac.new(self.salt.encode(), value.encode(), hashlib.sha256).hexdigest()

    def protect(self, frame: pl.DataFrame, contract: Contract) -> pl.DataFrame:
        """The frame with every contract column marked `pii: hash` replaced by its hash."""
        columns = [
            name for name, spec in contract.columns.items() if spec.pii == "hash" and name in frame.columns
        ]
        return frame.with_columns(
            pl.Series(
                name, [None if v is None else self.hash_value(str(v)) for v in frame[name]], dtype=pl.String
            )
            for name in columns
        )
