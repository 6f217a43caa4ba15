"""The demo's manifest (`<landing>/demo_manifest.json`), and the demo a source holds.

The manifest records the seed, the clock, the defect rates and how many of each defect every
batch planted, so tests can compare the lakehouse with it. It describes the demo; the marker
inside the database (see `store`) is what lets the demo change a database, and both carry the
same demo id so neither is advanced without the other.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path

from lakehouse.demo import store
from lakehouse.resources import SourceDatabase

MANIFEST_NAME = "demo_manifest.json"


@dataclass
class SchemaDrift:
    """From `from_batch` on, `table` has a new nullable text column `column`."""

    table: str = "orders"
    column: str = "coupon_code"
    from_batch: int = 2
    applied: bool = False


@dataclass
class Manifest:
    seed: int
    scale: float
    anchor: str
    defect_rates: dict[str, float]
    schema_drift: SchemaDrift
    batches: int = 0
    defects: dict[str, int] = field(default_factory=dict)
    event_files: dict[str, int] = field(default_factory=dict)
    log: list[dict] = field(default_factory=list)
    demo_id: str = ""

    @property
    def anchor_time(self) -> datetime:
        return datetime.fromisoformat(self.anchor)

    def record(self, batch: dict) -> None:
        self.log.append(batch)
        for name, count in batch["defects"].items():
            self.defects[name] = self.defects.get(name, 0) + count
        self.event_files.update(batch["event_files"])

    def save(self, landing: Path) -> None:
        landing.mkdir(parents=True, exist_ok=True)
        (landing / MANIFEST_NAME).write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, landing: Path) -> Manifest | None:
        path = landing / MANIFEST_NAME
        if not path.exists():
            return None
        raw = json.loads(path.read_text())
        return cls(**{**raw, "schema_drift": SchemaDrift(**raw["schema_drift"])})


def current(source: SourceDatabase, landing: Path) -> Manifest:
    """The manifest of the demo in `source`; `store.NotADemoError` when there is no such demo."""
    known = store.demo_id(source)
    if known is None:
        raise store.NotADemoError(
            f"no demo source in {store.shown_url(source)}: run `lakehouse demo init` first"
        )
    manifest = Manifest.load(landing)
    if manifest is None or manifest.demo_id != known:
        raise store.NotADemoError(
            f"{landing / MANIFEST_NAME} does not describe the demo in {store.shown_url(source)}: "
            "`lakehouse demo init --force` rebuilds both"
        )
    return manifest
