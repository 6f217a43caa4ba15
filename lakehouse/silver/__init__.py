"""Silver: validated, typed, deduplicated current state (and history), merged from bronze."""
