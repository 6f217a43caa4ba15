"""Delta Lake storage: tables, the ledger in their commits, MERGE, time travel and the table log."""
