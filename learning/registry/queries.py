"""SQL of the adapter registry: the adapters and adapter_events tables (and the roles they know).

Plain functions that take a Store, or the connection of a transaction already open; the records,
statuses and moves built on them are in learning/registry/adapters.py.
"""

from __future__ import annotations

import sqlite3
import time
from typing import Any

from learning.store import Store, dumps


def insert_adapter(conn: sqlite3.Connection, row: dict[str, Any]) -> None:
    cols = list(row)
    conn.execute(
        f"INSERT INTO adapters ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})", [row[c] for c in cols]
    )


def adapter_row(store: Store, adapter_id: str, conn: sqlite3.Connection | None = None) -> sqlite3.Row | None:
    """An adapter's row, read on the caller's connection (inside its transaction) when given."""
    sql = "SELECT * FROM adapters WHERE id = ?"
    if conn is not None:
        return conn.execute(sql, (adapter_id,)).fetchone()
    with store.read() as c:
        return c.execute(sql, (adapter_id,)).fetchone()


def adapter_rows(store: Store, role: str | None = None, status: str | None = None) -> list[sqlite3.Row]:
    where, args = [], []
    if role:
        where.append("role = ?")
        args.append(role)
    if status:
        where.append("status = ?")
        args.append(status)
    sql = (
        "SELECT * FROM adapters"
        + (" WHERE " + " AND ".join(where) if where else "")
        + " ORDER BY created DESC, id DESC"
    )
    with store.read() as conn:
        return conn.execute(sql, args).fetchall()


def adapter_brief(conn: sqlite3.Connection, adapter_id: str) -> sqlite3.Row | None:
    """The columns routing needs of one adapter."""
    return conn.execute(
        "SELECT id, role, task_type, complexity, base_model, path, status FROM adapters WHERE id = ?", (adapter_id,)
    ).fetchone()


def set_adapter_status(
    conn: sqlite3.Connection,
    adapter_id: str,
    from_status: str | None,
    to_status: str,
    actor: str,
    reason: str,
    data: dict | None = None,
) -> None:
    """Move an adapter to a status and record the event, inside the caller's transaction."""
    now = time.time()
    conn.execute("UPDATE adapters SET status = ?, updated = ? WHERE id = ?", (to_status, now, adapter_id))
    conn.execute(
        "INSERT INTO adapter_events (adapter_id, ts, actor, from_status, to_status, reason, data) "
        "VALUES (?, ?, ?, ?, ?, ?, ?)",
        (adapter_id, now, actor, from_status, to_status, reason, dumps(data or {})),
    )


def update_adapter_fields(conn: sqlite3.Connection, adapter_id: str, **fields: Any) -> None:
    allowed = {"metrics", "params", "path", "base_hash", "dataset_id", "updated"}
    assert set(fields) <= allowed, fields
    sets = ", ".join(f"{k} = ?" for k in fields)
    conn.execute(f"UPDATE adapters SET {sets} WHERE id = ?", [*fields.values(), adapter_id])


def delete_adapter_rows(conn: sqlite3.Connection, adapter_id: str) -> int:
    """Remove an adapter's row and its events, inside the caller's transaction; rows removed."""
    conn.execute("DELETE FROM adapter_events WHERE adapter_id = ?", (adapter_id,))
    return conn.execute("DELETE FROM adapters WHERE id = ?", (adapter_id,)).rowcount


def adapter_event_rows(store: Store, adapter_id: str | None = None, role: str | None = None) -> list[sqlite3.Row]:
    if adapter_id:
        sql, args = "SELECT * FROM adapter_events WHERE adapter_id = ? ORDER BY id", [adapter_id]
    elif role:
        sql = "SELECT e.* FROM adapter_events e JOIN adapters a ON a.id = e.adapter_id WHERE a.role = ? ORDER BY e.id"
        args = [role]
    else:
        sql, args = "SELECT * FROM adapter_events ORDER BY id", []
    with store.read() as conn:
        return conn.execute(sql, args).fetchall()


def production_for_route(
    conn: sqlite3.Connection, role: str, task_type: str | None, complexity: str | None
) -> sqlite3.Row | None:
    return conn.execute(
        "SELECT * FROM adapters WHERE status = 'production' AND role = ? AND ifnull(task_type, '') = ifnull(?, '') "
        "AND ifnull(complexity, '') = ifnull(?, '')",
        (role, task_type, complexity),
    ).fetchone()


def previous_production_row(
    conn: sqlite3.Connection, role: str, task_type: str | None, complexity: str | None
) -> sqlite3.Row | None:
    """The adapter of the route most recently moved from production to archived, if still archived."""
    return conn.execute(
        "SELECT a.* FROM adapter_events e JOIN adapters a ON a.id = e.adapter_id "
        "WHERE e.from_status = 'production' AND e.to_status = 'archived' AND a.status = 'archived' "
        "AND a.role = ? AND ifnull(a.task_type, '') = ifnull(?, '') AND ifnull(a.complexity, '') = ifnull(?, '') "
        "ORDER BY e.id DESC LIMIT 1",
        (role, task_type, complexity),
    ).fetchone()


def role_known(store: Store, role: str) -> bool:
    """Whether any adapter or run has this role."""
    with store.read() as conn:
        return (
            conn.execute(
                "SELECT EXISTS(SELECT 1 FROM adapters WHERE role = ?) "
                "OR EXISTS(SELECT 1 FROM runs WHERE role = ?) AS known",
                (role, role),
            ).fetchone()["known"]
            == 1
        )


def known_roles(store: Store) -> list[str]:
    """Roles of adapters and runs (the first 50, by name)."""
    with store.read() as conn:
        return [
            r["role"]
            for r in conn.execute("SELECT role FROM adapters UNION SELECT DISTINCT role FROM runs ORDER BY 1 LIMIT 50")
        ]
