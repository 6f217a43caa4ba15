"""Gold: facts, dimensions and aggregates for analysis, built from silver with polars."""
