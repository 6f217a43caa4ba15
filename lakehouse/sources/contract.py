"""Dataset contracts: one YAML file per dataset describes its source, keys, columns and SLAs.

This module holds the contract's model (pydantic), which validates each field and the
fields' consistency; reading contract files is `contract_files`. Everything generic (bronze
and silver assets, Pandera schemas, checks, docs) is derived from these, so adding a source
table means adding one YAML file.
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Annotated, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import polars as pl
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

from lakehouse.sources.timestamps import UTC_TIMESTAMP, TimestampForm

IDENTIFIER = r"^[A-Za-z_][A-Za-z0-9_]*$"
# A source table, optionally in a schema (`table` or `schema.table`); names only, never SQL.
TABLE_NAME = r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?$"
DECIMAL_TYPE = re.compile(r"^decimal\((\d+),(\d+)\)$")
DURATION = re.compile(r"^(\d+)([mhd])$")
DURATION_UNITS = {"m": "minutes", "h": "hours", "d": "days"}

Identifier = Annotated[str, Field(pattern=IDENTIFIER)]
DTYPES = {
    "int": pl.Int64,
    "float": pl.Float64,
    "string": pl.String,
    "json": pl.String,
    "bool": pl.Boolean,
    "date": pl.Date,
    "timestamp": UTC_TIMESTAMP,
}


def parse_duration(text: str) -> timedelta:
    """'90m', '2h' or '7d' as a timedelta."""
    match = DURATION.match(str(text))
    if not match:
        raise ValueError(f"'{text}' is not a duration like 30m, 2h or 7d")
    return timedelta(**{DURATION_UNITS[match.group(2)]: int(match.group(1))})


# A duration a contract writes as text ('30m', '2h', '7d').
Duration = Annotated[
    timedelta,
    BeforeValidator(lambda value: value if isinstance(value, timedelta) else parse_duration(str(value))),
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Range(_Strict):
    min: float | None = None
    max: float | None = None


class Column(_Strict):
    type: str
    nullable: bool = True
    unique: bool = False
    allowed_values: list[str] | None = None
    range: Range | None = None
    pii: Literal["hash"] | None = None
    references: str | None = Field(default=None, pattern=r"^\w+\.\w+$")
    # A timestamp the source holds as seconds or milliseconds since 1970-01-01 UTC.
    epoch: Literal["s", "ms"] | None = None

    @property
    def dtype(self) -> pl.DataType:
        """The polars type the lakehouse stores this column as (timestamps in UTC)."""
        decimal = DECIMAL_TYPE.match(self.type)
        return pl.Decimal(int(decimal.group(1)), int(decimal.group(2))) if decimal else DTYPES[self.type]

    @field_validator("type")
    @classmethod
    def _known_type(cls, value: str) -> str:
        if value not in DTYPES and not DECIMAL_TYPE.match(value):
            raise ValueError(f"unknown type '{value}'; use one of {', '.join(DTYPES)} or decimal(p,s)")
        return value

    @model_validator(mode="after")
    def _epoch_on_timestamp(self) -> Column:
        if self.epoch and self.type != "timestamp":
            raise ValueError(
                f"epoch: only a timestamp column can be held as epoch {self.epoch}, not {self.type}"
            )
        return self


class DatabaseSource(_Strict):
    kind: Literal["database"]
    table: str = Field(pattern=TABLE_NAME)
    # How changes are found: rows whose watermark moved, or PostgreSQL's logical replication
    # (every insert, update and delete, in commit order).
    capture: Literal["watermark", "cdc"] = "watermark"


class LandingSource(_Strict):
    kind: Literal["landing"]
    glob: str
    format: Literal["jsonl"] = "jsonl"
    # Keys a line holds beyond the contract's columns: kept in bronze's one JSON column of
    # extras, or the line quarantined. Never a column each: one line could add thousands.
    extra_keys: Literal["keep_json", "quarantine"] = "keep_json"


class Watermark(_Strict):
    column: Identifier
    lookback: Duration = timedelta(0)


class DeleteCadence(_Strict):
    """How often a watermark source's keys are compared with the lakehouse's to find deletes."""

    every: Duration

    def __str__(self) -> str:
        return f"every {self.every}"


class Freshness(_Strict):
    column: Identifier
    warn_after: Duration
    error_after: Duration

    @model_validator(mode="after")
    def _ordered(self) -> Freshness:
        if self.error_after < self.warn_after:
            raise ValueError("error_after must not be shorter than warn_after")
        return self


class Sla(_Strict):
    """What the table promises its users, reported by `lakehouse quality report`; its
    freshness is the contract's `freshness.warn_after`.

    `max_quarantine_rate` is the share of a load's bronze rows silver may send to quarantine
    before the load fails its `quarantine_rate` check. A fault that hits every row (a
    timestamp form the contract cannot read, a column whose type changed) quarantines most of
    a batch, while rows that are merely dirty are a few in a hundred (the demo plants well
    under 1 %): a fifth tells the two apart, even for batches of ten rows."""

    completeness: float = Field(default=1.0, ge=0, le=1)
    duplicate_rate: float = Field(default=0.0, ge=0, le=1)
    max_quarantine_rate: float = Field(default=0.2, ge=0, le=1)


class Volume(_Strict):
    """The band a materialisation may move the row count by, as a fraction of the previous
    count (-0.1 = 10 % fewer rows, 0.5 = 50 % more); outside it the volume check warns."""

    min_change: float = Field(ge=-1)
    max_change: float

    @model_validator(mode="after")
    def _ordered(self) -> Volume:
        if self.max_change < self.min_change:
            raise ValueError("max_change must not be below min_change")
        return self


class Partitioning(_Strict):
    column: Identifier
    granularity: Literal["day", "month"]


class Maintenance(_Strict):
    """How the weekly maintenance lays out the dataset's bronze and silver files."""

    # Z-ordering by the columns readers filter or join on lets them skip most files.
    z_order: list[Identifier] = Field(min_length=1)


class Contract(_Strict):
    name: Identifier
    description: str = Field(min_length=1)
    source: DatabaseSource | LandingSource = Field(discriminator="kind")
    primary_key: list[Identifier] = Field(min_length=1)
    watermark: Watermark | None = None
    event_time: Identifier | None = None
    freshness: Freshness | None = None
    history: Literal["current", "scd2", "append"] = "current"
    partitioning: Partitioning | None = None
    sla: Sla = Sla()
    volume: Volume | None = None
    maintenance: Maintenance | None = None
    # Deletes in a database source: found on every run (the default), on a cadence, or never.
    deletes: Literal["every_run", "never"] | DeleteCadence = "every_run"
    # The IANA zone of the source's timestamps that carry no offset of their own.
    time_zone: str = "UTC"
    columns: dict[Identifier, Column] = Field(min_length=1)

    @field_validator("time_zone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as error:
            raise ValueError(
                f"unknown time zone '{value}'; use an IANA name like UTC or Europe/Paris"
            ) from error
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Contract:
        named = {
            "primary_key": self.primary_key,
            "watermark.column": [self.watermark.column] if self.watermark else [],
            "event_time": [self.event_time] if self.event_time else [],
            "freshness.column": [self.freshness.column] if self.freshness else [],
            "partitioning.column": [self.partitioning.column] if self.partitioning else [],
            "maintenance.z_order": self.maintenance.z_order if self.maintenance else [],
        }
        for field, names in named.items():
            for column in names:
                if column not in self.columns:
                    raise ValueError(f"{field}: '{column}' is not one of the contract's columns")
        if isinstance(self.source, DatabaseSource) and self.watermark is None:
            raise ValueError("watermark: a database source needs a watermark column")
        if self.partitioning and self.columns[self.partitioning.column].type not in ("timestamp", "date"):
            raise ValueError(
                f"partitioning.column: '{self.partitioning.column}' is a "
                f"{self.columns[self.partitioning.column].type}; partitions need a timestamp or date column"
            )
        return self

    @property
    def is_database(self) -> bool:
        return isinstance(self.source, DatabaseSource)

    @property
    def is_cdc(self) -> bool:
        """Whether bronze reads the source's change stream (PostgreSQL logical replication)."""
        return isinstance(self.source, DatabaseSource) and self.source.capture == "cdc"

    def timestamp_form(self, column: str) -> TimestampForm:
        """How the source's values of the timestamp `column` name an instant."""
        return TimestampForm(self.time_zone, self.columns[column].epoch)
