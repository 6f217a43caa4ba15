"""The days gold rebuilt since the models were last built, as dbt reads them: the warehouse
relation `gold.rebuilt_days` (table_name, day).

Gold rebuilds the order facts by day and names the days in each commit (`PERIODS`). A dbt
build that starts from its last one needs only those days: the incremental mart replaces the
orders of those days, and the tests of the models over those tables look at those days. The
rest was built and tested from the same rows before.

Every day of a table counts as rebuilt when the commits since say nothing narrower: the table
is new or was created again, a commit rebuilt it whole or was written by anything but a gold
build (compaction and vacuum keep the rows), or a selected model has no build to start from.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

from deltalake import DeltaTable

from lakehouse.gold.build import PERIODS
from lakehouse.storage import delta

RELATION = "rebuilt_days"
# A gold table as `built_from` names it (`marts.assets.built_from`, `delta.version_label`).
_READ = re.compile(r"gold/(\w+) v(\d+) \(([0-9a-f]{8})\)")


def _read(built_from: str) -> dict[str, tuple[int, str]]:
    """The version and table id (its first 8 characters) of each gold table a build read."""
    return {name: (int(version), table) for name, version, table in _READ.findall(built_from)}


def _since(table: DeltaTable, read: tuple[int, str] | None) -> list[str] | None:
    """The days rebuilt in `table` after the version `read` (with its table id); None: all."""
    if read is None or read[1] != table.metadata().id[:8] or read[0] > table.version():
        return None
    days: set[str] = set()
    for commit in delta.commits_after(table, read[0]):
        named = commit.get(PERIODS)
        if named is None and commit["operation"] in delta.ROW_KEEPING:
            continue
        if named is None or named == "all":
            return None
        days.update(day for day in named.split(",") if day)
    return sorted(days)


def rebuilt_days(
    tables: Mapping[str, DeltaTable], builds: Iterable[str | None]
) -> dict[str, list[str] | None]:
    """For each of `tables` (gold tables by name), the days rebuilt since the oldest version
    that the `builds` (each selected model's last `built_from`, None for one not built) read;
    None where every day counts."""
    builds = list(builds)
    if any(build is None for build in builds) or not builds:
        return dict.fromkeys(tables)
    read = [_read(build) for build in builds if build is not None]
    found: dict[str, list[str] | None] = {}
    for name, table in tables.items():
        versions = {one.get(name) for one in read}
        # One build read it before it existed, or another table of the name (created again).
        known = None not in versions and len({table_id for _, table_id in versions}) == 1
        found[name] = _since(table, min(versions)) if known else None
    return found
