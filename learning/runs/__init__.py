"""Runs: log one, import many, summarise."""
