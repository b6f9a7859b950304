"""The SQL of jobs: the jobs table (learning/jobs/manage.py starts, follows and reconciles the
jobs)."""

from __future__ import annotations

import sqlite3
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
