"""Who owns each layer's assets: the owners the UI's catalog shows and filters by.

The generic engine (bronze, silver and their quarantines) belongs to the team that runs the
platform; the business layer (gold tables and dbt models) to the team that writes it. Owners
follow the asset's group, so an asset a user adds to a layer's group gets that layer's owner.
"""

from collections.abc import Iterable

import dagster as dg

from lakehouse.marts import MODEL_GROUPS

PLATFORM = "team:data-platform"
ANALYTICS = "team:analytics"
OWNERS_BY_GROUP = {
    "bronze": PLATFORM,
    "silver": PLATFORM,
    "gold": ANALYTICS,
    **dict.fromkeys(MODEL_GROUPS, ANALYTICS),
}


def _owned(spec: dg.AssetSpec) -> dg.AssetSpec:
    owner = OWNERS_BY_GROUP.get(spec.group_name or "")
    return spec.replace_attributes(owners=[owner]) if owner and not spec.owners else spec


def with_owners(assets: Iterable[dg.AssetsDefinition]) -> list[dg.AssetsDefinition]:
    """The `assets` with their layer's owner where they name none themselves."""
    return list(dg.map_asset_specs(_owned, list(assets)))
