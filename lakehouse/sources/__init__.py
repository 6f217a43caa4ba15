"""Sources: dataset contracts, the source database connection and its errors."""
