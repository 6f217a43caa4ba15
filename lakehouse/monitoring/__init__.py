"""Pipeline health for the people on call: what it is now (`health`), the metrics a Prometheus
scrapes (`metrics`), the alerts raised and cleared from it (`breaches`) and JSON log lines
(`logs`)."""
