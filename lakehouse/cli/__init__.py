"""The `lakehouse` command line."""
