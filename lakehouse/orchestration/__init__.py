"""Orchestration: jobs, schedules, sensors, maintenance, owners, alerts and run health."""
