"""Serving: export to runtimes, deploy, and what they need."""
