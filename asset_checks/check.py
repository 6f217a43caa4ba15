"""One asset check as data, and the one Dagster step per asset that evaluates an asset's checks.

Every step costs a run Dagster's bookkeeping (its events, its context) whatever it does, more
than most checks cost themselves. So the checks of
an asset run in one step (a multi-asset check that can be subset), and each still shows as its
own check, with its own result, severity and blocking.

A check that names the tables it `reads` (and the source table, if it compares the lake with
one) is not evaluated again while those tables, the contracts and the lakehouse's code are as
they were when it was last evaluated: the same data gives the same result, passed or failed, so
the step reports that result again, with the run it came from. A source that cannot say whether
it changed (lakehouse/sources/versions.py) has the check evaluated every time.
`LAKEHOUSE_REUSE_CHECK_PASSES=false` evaluates every check every time (an audit, say).

No `from __future__ import annotations` here: Dagster reads the step's context annotation.
"""

import hashlib
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import dagster as dg

from lakehouse.orchestration import metadata
from lakehouse.resources import LakehouseStorage
from lakehouse.settings import setting
from lakehouse.storage import delta

Evaluate = Callable[[dg.AssetCheckExecutionContext], dg.AssetCheckResult]
CHECKED_AGAINST = "checked_against"
REUSED_FROM_RUN = "reused_from_run"
PROJECT = Path(__file__).resolve().parent.parent
# A check's history is read newest first, a page at a time: usually only this run's own record,
# still unevaluated, comes before the last evaluation, so one small page finds it.
HISTORY_PAGE = 10


@dataclass(frozen=True)
class Check:
    """A check on `asset`: `evaluate` reads what it needs through the context's `resources`.

    `reads` names the Delta tables (layer, name) the result depends on, and `source` the source
    table, if any; nothing else may: no clock, no Dagster history but what only saves work.
    Checks that depend on more name none and run every time."""

    asset: dg.AssetKey
    name: str
    description: str
    evaluate: Evaluate
    blocking: bool = False
    resources: frozenset[str] = frozenset({"lakehouse"})
    reads: tuple[tuple[str, str], ...] = ()
    source: str | None = None

    @property
    def key(self) -> dg.AssetCheckKey:
        return dg.AssetCheckKey(self.asset, self.name)

    @property
    def spec(self) -> dg.AssetCheckSpec:
        return dg.AssetCheckSpec(
            self.name, asset=self.asset, description=self.description, blocking=self.blocking
        )


@cache
def code_digest() -> str:
    """The lakehouse's code and contracts: a change to either may change any check's result."""
    files = sorted([*PROJECT.glob("asset_checks/*.py"), *PROJECT.glob("lakehouse/**/*.py")])
    files += sorted(Path(setting("LAKEHOUSE_CONTRACTS")).glob("*.yaml"))
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def _checked_against(
    context: dg.AssetCheckExecutionContext, check: Check, looked_up: dict[tuple[str, str], str | None]
) -> str | None:
    """What the result depends on, None when the source cannot say. `looked_up` holds the
    versions the step has already looked up: of lake tables by (layer, name), of source tables
    by ("source", table)."""
    lakehouse: LakehouseStorage = context.resources.lakehouse
    for layer, name in check.reads:
        if (layer, name) not in looked_up:
            looked_up[layer, name] = delta.snapshot(lakehouse.table_uri(layer, name))
    tables = ", ".join(f"{layer}/{name} {looked_up[layer, name]}" for layer, name in check.reads)
    if check.source is None:
        return f"code {code_digest()}; {tables}"
    if ("source", check.source) not in looked_up:
        looked_up["source", check.source] = context.resources.source.version(check.source)
    version = looked_up["source", check.source]
    return None if version is None else f"code {code_digest()}; {tables}; source {version}"


def last_evaluation(
    instance: dg.DagsterInstance, key: dg.AssetCheckKey
) -> tuple[str, dg.AssetCheckEvaluation] | None:
    """The check's newest finished evaluation and the run it came from.

    Newer runs may have planned the check without evaluating it: this one has, and so has a run
    that failed before its checks. Their records hold no evaluation and are passed over."""
    storage = instance.event_log_storage
    cursor = None
    while records := storage.get_asset_check_execution_history(key, limit=HISTORY_PAGE, cursor=cursor):
        for record in records:
            evaluation = record.event.asset_check_evaluation if record.event else None
            if evaluation is not None:
                return record.run_id, evaluation
        cursor = records[-1].id
    return None


def last_evaluations(
    instance: dg.DagsterInstance, keys: Iterable[dg.AssetCheckKey]
) -> dict[dg.AssetCheckKey, dg.AssetCheckEvaluation]:
    """`last_evaluation` of many checks: one query for all, and one more per check whose newest
    record holds no evaluation."""
    keys = list(keys)
    latest = instance.event_log_storage.get_latest_asset_check_execution_by_key(keys)
    found = {}
    for key in keys:
        record = latest.get(key)
        evaluation = record.event.asset_check_evaluation if record and record.event else None
        if evaluation is None and record is not None:
            last = last_evaluation(instance, key)
            evaluation = last[1] if last else None
        if evaluation is not None:
            found[key] = evaluation
    return found


def _result(
    context: dg.AssetCheckExecutionContext, check: Check, looked_up: dict[tuple[str, str], str | None]
) -> dg.AssetCheckResult:
    if not check.reads and check.source is None:
        return check.evaluate(context)
    reuse = setting("LAKEHOUSE_REUSE_CHECK_PASSES").lower() != "false"
    # Looked up before the check reads anything: a change from here on is seen next time.
    against = _checked_against(context, check, looked_up)
    last = last_evaluation(context.instance, check.key) if reuse and against else None
    run_id, evaluation = last if last else (None, None)
    recorded = evaluation.metadata.get(CHECKED_AGAINST) if evaluation else None
    if evaluation and recorded and recorded.value == against:
        origin = evaluation.metadata.get(REUSED_FROM_RUN)
        return dg.AssetCheckResult(
            passed=evaluation.passed,
            severity=evaluation.severity,
            metadata={**evaluation.metadata, REUSED_FROM_RUN: origin.value if origin else run_id},
            description=evaluation.description,
        )
    result = check.evaluate(context)
    return dg.AssetCheckResult(
        passed=result.passed,
        severity=result.severity,
        metadata={**result.metadata, **({CHECKED_AGAINST: against} if against else {})},
        description=result.description,
    )


def _asset_step(asset: dg.AssetKey, checks: list[Check]) -> dg.AssetChecksDefinition:
    @dg.multi_asset_check(
        specs=[check.spec for check in checks],
        name=f"{asset.to_python_identifier()}_checks",
        can_subset=True,
        required_resource_keys=set().union(*(check.resources for check in checks)),
    )
    def evaluate(context: dg.AssetCheckExecutionContext) -> Iterator[dg.AssetCheckResult]:
        # An asset's checks mostly read the same tables: each version is looked up once per
        # step. The version recorded is never newer than the data read, so a write in between
        # only makes the next run evaluate again.
        looked_up: dict[tuple[str, str], str | None] = {}
        for check in checks:
            if check.key not in context.selected_asset_check_keys:
                continue
            started = time.monotonic()
            result = _result(context, check, looked_up)
            yield dg.AssetCheckResult(
                asset_key=asset,
                check_name=check.name,
                passed=result.passed,
                severity=result.severity,
                metadata={**result.metadata, **metadata.elapsed(started)},
                description=result.description,
            )

    return evaluate


def per_asset(checks: Iterable[Check]) -> list[dg.AssetChecksDefinition]:
    """One step per asset for all its checks."""
    by_asset: dict[dg.AssetKey, list[Check]] = defaultdict(list)
    for check in checks:
        by_asset[check.asset].append(check)
    return [_asset_step(asset, listed) for asset, listed in by_asset.items()]
