"""Reading a home's tables directly, for assertions (the library has no verb for these)."""

from __future__ import annotations

from learning.store import Store


def count_runs(store: Store) -> int:
    """How many runs the home holds, pending ones included. Opening the store migrates it."""
    with store.read() as conn:
        return conn.execute("SELECT count(*) AS n FROM runs").fetchone()["n"]
