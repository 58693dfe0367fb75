"""Faults survived with nothing lost: engine killed mid-job, SQLite contention, API failures."""
