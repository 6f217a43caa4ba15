"""Marts: the dbt project over gold, built in a DuckDB warehouse, as Dagster assets."""
