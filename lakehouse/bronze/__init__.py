"""Bronze: raw, append-only Delta copies of every source row version and landing line."""
