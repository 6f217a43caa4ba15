"""Marts: the dbt project over gold, built in a DuckDB warehouse, as Dagster assets."""

# The dbt models' groups: a folder of dbt/models each, in the order the data flows.
MODEL_GROUPS = ("staging", "intermediate", "marts")
