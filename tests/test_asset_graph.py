"""The shape of the asset graph a user meets, held whole against `tests/asset_graph.yaml`:
every asset's group, kinds, owners, tags and inputs, and every check with whether it blocks.

One snapshot instead of a test per property, so that any change to the graph shows as a diff
in review: that each layer has its owner, that gold feeds the dbt staging views, that revenue
is defined once (`marts/mart_sales_daily` reads `staging/stg_daily_revenue`, not the order
lines), which checks block their downstream. After an intended change, write the snapshot
again and read its diff: `UPDATE_ASSET_GRAPH=1 pytest tests/test_asset_graph.py`.
"""

import os
from pathlib import Path

import yaml

from lakehouse.definitions import defs

SNAPSHOT = Path(__file__).with_name("asset_graph.yaml")


def asset_graph() -> dict[str, dict]:
    graph = defs.resolve_asset_graph()
    checks: dict[str, dict[str, str]] = {}
    for check in graph.asset_check_keys:
        blocking = graph.get_check_spec(check).blocking
        checks.setdefault(check.asset_key.to_user_string(), {})[check.name] = (
            "blocking" if blocking else "non-blocking"
        )
    shape = {}
    for key in sorted(graph.get_all_asset_keys()):
        node = graph.get(key)
        name = key.to_user_string()
        shape[name] = {
            "group": node.group_name,
            "kinds": sorted(node.kinds),
            "owners": list(node.owners),
            "tags": {tag: value for tag, value in sorted(node.tags.items()) if "/kind/" not in tag},
            "deps": sorted(parent.to_user_string() for parent in node.parent_keys),
            "checks": dict(sorted(checks.get(name, {}).items())),
        }
    return shape


def test_the_asset_graph_is_the_one_in_the_snapshot() -> None:
    shape = asset_graph()
    if os.environ.get("UPDATE_ASSET_GRAPH"):
        SNAPSHOT.write_text(yaml.safe_dump(shape, sort_keys=False, default_flow_style=None, width=110))
    held = yaml.safe_load(SNAPSHOT.read_text())
    changed = sorted(key for key in shape.keys() | held.keys() if shape.get(key) != held.get(key))
    assert not changed, f"the asset graph differs from {SNAPSHOT.name} at: {', '.join(changed)}"
