"""One asset and nothing else: what `dagster definitions validate` takes before any project code
loads, the floor under the bench's definitions load."""

import dagster as dg


@dg.asset
def one() -> None:
    """Nothing: the smallest definitions Dagster's command line loads."""


defs = dg.Definitions(assets=[one])
