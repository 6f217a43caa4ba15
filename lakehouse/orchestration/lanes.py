"""The run queue's lanes: a tag every job's runs carry, which the instance's run queue limits
(`tag_concurrency_limits` in deploy/dagster.shared.yaml)."""

LANE = "lakehouse/lane"
# The jobs that write bronze, silver or gold as a whole: one run at a time, since their
# commits to the same tables would only retry against each other.
LAKE = {LANE: "lake"}
# Runs of distinct days of the gold tables kept by day: their commits touch disjoint files.
EVENT_DAYS = {LANE: "event_days"}
