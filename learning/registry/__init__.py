"""The adapter registry: records, statuses, events, adapter folders."""
