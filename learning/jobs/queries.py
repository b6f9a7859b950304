"""The SQL of jobs: the jobs table (learning/jobs/manage.py starts, follows and reconciles the
jobs), and what a dead training job leaves in the registry's tables."""

from __future__ import annotations

import sqlite3
import time
from typing import Any

from learning.store import Store


def insert_job(store: Store, row: dict[str, Any]) -> None:
    cols = list(row)
    with store.write() as conn:
        conn.execute(
            f"INSERT INTO jobs ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})", [row[c] for c in cols]
        )


def job_row(store: Store, job_id: str) -> sqlite3.Row | None:
    with store.read() as conn:
        return conn.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()


def job_rows(store: Store, status: str | None = None, limit: int = 50) -> list[sqlite3.Row]:
    with store.read() as conn:
        if status:
            return conn.execute(
                "SELECT * FROM jobs WHERE status = ? ORDER BY created DESC LIMIT ?", (status, limit)
            ).fetchall()
        return conn.execute("SELECT * FROM jobs ORDER BY created DESC LIMIT ?", (limit,)).fetchall()


def active_job_rows(store: Store) -> list[sqlite3.Row]:
    with store.read() as conn:
        return conn.execute("SELECT * FROM jobs WHERE status IN ('queued', 'running')").fetchall()


def update_job(store: Store, job_id: str, only_if_status: tuple[str, ...] | None = None, **fields: Any) -> bool:
    """Set job fields; with only_if_status, only when the job is in one of those states.
    Returns whether a row changed."""
    allowed = {
        "status",
        "started",
        "finished",
        "pid",
        "pid_started",
        "heartbeat",
        "progress",
        "result",
        "error",
        "cancel_requested",
        "params",
        "subject",
    }
    assert set(fields) <= allowed, fields
    sets = ", ".join(f"{k} = ?" for k in fields)
    sql = f"UPDATE jobs SET {sets} WHERE id = ?"
    args = [*fields.values(), job_id]
    if only_if_status:
        sql += f" AND status IN ({', '.join('?' * len(only_if_status))})"
        args += list(only_if_status)
    with store.write() as conn:
        return conn.execute(sql, args).rowcount > 0


def fail_training_adapter(store: Store, adapter_id: str, reason: str) -> None:
    """Mark the adapter a dead training job was making as failed, with its event, if it is still
    training. (The registry's own moves live in learning/registry/adapters.py, above this package.)"""
    with store.write() as conn:
        now = time.time()
        changed = conn.execute(
            "UPDATE adapters SET status = 'failed', updated = ? WHERE id = ? AND status = 'training'", (now, adapter_id)
        ).rowcount
        if changed:
            conn.execute(
                "INSERT INTO adapter_events (adapter_id, ts, actor, from_status, to_status, reason, data) "
                "VALUES (?, ?, 'learnloop', 'training', 'failed', ?, '{}')",
                (adapter_id, now, reason),
            )
