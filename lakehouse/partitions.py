"""Daily partitions of the event-derived gold tables, and the one-run backfill all assets share.

Event gold tables are rebuilt day by day: a run for a range of days rewrites exactly those
days, so a backfill never touches the others. Every asset carries a single-run backfill
policy because `dagster asset materialize --partition-range` refuses a selection with any
asset lacking one, and `--select '*'` needs a partition once one asset is partitioned: with
the policy, the whole lake runs in one run over a range of event days.
"""

import warnings
from datetime import timedelta

import dagster as dg

from lakehouse.settings import setting

EVENT_DAYS = dg.DailyPartitionsDefinition(
    start_date=setting("LAKEHOUSE_EVENTS_START"),
    timezone="UTC",
    end_offset=1,  # today is a partition too: events land hourly
)
ONE_RUN = dg.BackfillPolicy.single_run()
# `backfill_policy` is beta in Dagster 1.13 and chosen knowingly (see above): its warning, printed
# once per asset on every CLI call and code-server start, would drown what users must read.
warnings.filterwarnings("ignore", message="Parameter `backfill_policy`", category=dg.BetaWarning)
# Late events (hours, in the demo) change yesterday as well as today: automation rebuilds both
# when silver events change; anything older is a backfill's job.
RECENT_DAYS = timedelta(days=2)


def eager_on_recent_days() -> dg.AutomationCondition:
    """`eager()` that follows upstream changes into the last `RECENT_DAYS` partitions."""
    return dg.AutomationCondition.eager().replace(
        "in_latest_time_window", dg.AutomationCondition.in_latest_time_window(RECENT_DAYS)
    )
