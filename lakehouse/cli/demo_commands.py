"""`lakehouse demo init` and `lakehouse demo advance`: the demo shop source built and moved on."""

from __future__ import annotations

import argparse
from pathlib import Path

from lakehouse.cli.source_url import configured_source
from lakehouse.demo.store import shown_url
from lakehouse.settings import SettingsError, setting
from lakehouse.storage import files


def demo_command(args: argparse.Namespace) -> int:
    from lakehouse.demo import initial, simulation, store
    from lakehouse.demo.manifest import Manifest

    source = configured_source()
    if files.is_remote(setting("LAKEHOUSE_LANDING")):
        raise SettingsError(
            f"LAKEHOUSE_LANDING is {setting('LAKEHOUSE_LANDING')}: the demo writes its event files to a "
            "local folder (copy them to the object store yourself)"
        )
    landing = Path(setting("LAKEHOUSE_LANDING"))
    if args.action == "init":
        if store.demo_id(source) is not None and not args.force:
            existing = Manifest.load(landing)
            details = (
                f" (scale {existing.scale}, seed {existing.seed}, {existing.batches} batches, "
                f"clock {existing.anchor})"
                if existing
                else ""
            )
            print(f"demo source exists in {shown_url(source)}{details}; --force rebuilds it")
            return 0
        manifest = initial.init(
            source,
            landing,
            args.scale,
            args.seed,
            args.now,
            dict(args.defect),
            args.drift_batch,
        )
    else:
        manifest = simulation.advance(source, landing, args.batches, args.now)
    batch = manifest.log[-1]
    rows = ", ".join(f"{table} {counts}" for table, counts in batch["rows"].items())
    print(
        f"demo batch {batch['batch']} at {manifest.anchor} into {source.label}: {rows}; "
        f"{sum(batch['event_files'].values())} events in {len(batch['event_files'])} files"
    )
    return 0
