"""`make bench` splits each run's wall time by the part of the pipeline its steps belong to."""

from bench.run import PARTS, step_parts
from lakehouse.definitions import defs


def test_every_step_of_the_pipeline_is_in_one_part_of_the_benchs_split() -> None:
    parts = step_parts()
    steps = {assets.node_def.name for assets in [*defs.assets, *defs.asset_checks]}
    assert steps <= set(parts) and set(parts.values()) <= set(PARTS)
    assert parts["dbt_models"] == "dbt"
