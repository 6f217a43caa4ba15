"""One asset check as data, and the one Dagster step per asset that evaluates an asset's checks.

Every step costs a run Dagster's bookkeeping (its events, its context) whatever it does: about
0.06 s on two cores, against a few milliseconds for most checks themselves. So the checks of
an asset run in one step (a multi-asset check that can be subset), and each still shows as its
own check, with its own result, severity and blocking.

No `from __future__ import annotations` here: Dagster reads the step's context annotation.
"""

import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import dagster as dg

from lakehouse.delta import elapsed

Evaluate = Callable[[dg.AssetCheckExecutionContext], dg.AssetCheckResult]


@dataclass(frozen=True)
class Check:
    """A check on `asset`: `evaluate` reads what it needs through the context's `resources`."""

    asset: dg.AssetKey
    name: str
    description: str
    evaluate: Evaluate
    blocking: bool = False
    resources: frozenset[str] = frozenset({"lakehouse"})

    @property
    def key(self) -> dg.AssetCheckKey:
        return dg.AssetCheckKey(self.asset, self.name)

    @property
    def spec(self) -> dg.AssetCheckSpec:
        return dg.AssetCheckSpec(
            self.name, asset=self.asset, description=self.description, blocking=self.blocking
        )


def _asset_step(asset: dg.AssetKey, checks: list[Check]) -> dg.AssetChecksDefinition:
    @dg.multi_asset_check(
        specs=[check.spec for check in checks],
        name=f"{asset.to_python_identifier()}_checks",
        can_subset=True,
        required_resource_keys=set().union(*(check.resources for check in checks)),
    )
    def evaluate(context: dg.AssetCheckExecutionContext) -> Iterator[dg.AssetCheckResult]:
        for check in checks:
            if check.key not in context.selected_asset_check_keys:
                continue
            started = time.monotonic()
            result = check.evaluate(context)
            yield dg.AssetCheckResult(
                asset_key=asset,
                check_name=check.name,
                passed=result.passed,
                severity=result.severity,
                metadata={**result.metadata, **elapsed(started)},
                description=result.description,
            )

    return evaluate


def per_asset(checks: Iterable[Check]) -> list[dg.AssetChecksDefinition]:
    """One step per asset for all its checks."""
    by_asset: dict[dg.AssetKey, list[Check]] = defaultdict(list)
    for check in checks:
        by_asset[check.asset].append(check)
    return [_asset_step(asset, listed) for asset, listed in by_asset.items()]
