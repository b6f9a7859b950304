"""Routing: promotion and rollback, selection, experiments, drift."""
