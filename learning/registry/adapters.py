"""The adapter registry: every adapter learnloop knows, its status, and every move.

Statuses: training -> trained -> candidate -> production -> archived, and failed.
Each move is an adapter_events row (time, actor, from, to, reason) kept forever, written
in the same transaction as the status change. The database allows at most one
production adapter per route (role, task_type, complexity). The SQL is in
learning/registry/queries.py.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field

from learning.clock import iso, stamp
from learning.errors import Conflict, InvalidInput, NotFound, shown
from learning.home import safe_id
from learning.registry.queries import (
    adapter_event_rows,
    adapter_row,
    adapter_rows,
    delete_adapter_rows,
    insert_adapter,
    previous_production_row,
    production_for_route,
    set_adapter_status,
    update_adapter_fields,
)
from learning.store import Store, dumps, loads

Status = Literal["training", "trained", "candidate", "production", "archived", "failed"]
STATUSES: tuple[str, ...] = ("training", "trained", "candidate", "production", "archived", "failed")

# Which moves are allowed without force. production is reached only through promote.
MOVES: dict[str, set[str]] = {
    "training": {"trained", "failed"},
    "trained": {"candidate", "archived", "failed"},
    "candidate": {"production", "trained", "archived"},
    "production": {"archived"},
    "archived": {"production", "candidate"},
    "failed": {"archived"},
}


class Adapter(BaseModel):
    id: str
    role: str
    task_type: str | None
    complexity: str | None
    base_model: str
    base_hash: str | None
    dataset_id: str | None
    method: str
    status: Status
    created: str
    updated: str
    path: str = Field(description="Folder holding adapter_config.json and adapter_model.safetensors.")
    params: dict[str, Any]
    metrics: dict[str, Any]
    source: str = Field(description="'trained' by learnloop or 'registered' from elsewhere.")


class AdapterEvent(BaseModel):
    adapter_id: str
    time: str
    actor: str
    from_status: str | None
    to_status: str
    reason: str
    data: dict[str, Any]


def new_adapter_id(role: str) -> str:
    """Readable and sortable: role and UTC time, e.g. coder-20261122-143012."""
    return f"{role}-{stamp()}"


def to_adapter(row) -> Adapter:
    """An adapters row as an Adapter: the times in ISO 8601, params and metrics parsed."""
    return Adapter.model_validate(
        dict(row)
        | {
            "created": iso(row["created"]),
            "updated": iso(row["updated"]),
            "params": loads(row["params"]) or {},
            "metrics": loads(row["metrics"]) or {},
        }
    )


def create_adapter(
    store: Store,
    adapter_id: str,
    role: str,
    base_model: str,
    path: str,
    *,
    status: Status = "training",
    task_type: str | None = None,
    complexity: str | None = None,
    dataset_id: str | None = None,
    method: str = "sft",
    params: dict | None = None,
    base_hash: str | None = None,
    source: str = "trained",
    actor: str = "learnloop",
    reason: str = "created",
) -> Adapter:
    """Record a new adapter and its first event, in one transaction."""
    safe_id(adapter_id, "adapter id")
    now = time.time()
    with store.write() as conn:
        if adapter_row(store, adapter_id, conn) is not None:
            raise Conflict(f"Adapter {adapter_id} already exists; choose another id.")
        insert_adapter(
            conn,
            dict(
                id=adapter_id,
                role=role,
                task_type=task_type,
                complexity=complexity,
                base_model=base_model,
                base_hash=base_hash,
                dataset_id=dataset_id,
                method=method,
                status=status,
                created=now,
                updated=now,
                path=path,
                params=dumps(params or {}),
                metrics=dumps({}),
                source=source,
            ),
        )
        conn.execute(
            "INSERT INTO adapter_events (adapter_id, ts, actor, from_status, to_status, reason, data) "
            "VALUES (?, ?, ?, NULL, ?, ?, '{}')",
            (adapter_id, now, actor, status, reason),
        )
    return get_adapter(store, adapter_id)


def get_adapter(store: Store, adapter_id: str) -> Adapter:
    row = adapter_row(store, adapter_id)
    if row is None:
        raise NotFound(f"No adapter {shown(adapter_id)}. List adapters with list_adapters (CLI: learnloop list).")
    return to_adapter(row)


def list_adapters(
    store: Store,
    role: Annotated[str | None, Field(description="Only this role.")] = None,
    status: Annotated[
        str | None, Field(description="Only this status: training, trained, candidate, production, archived, failed.")
    ] = None,
) -> list[Adapter]:
    """Every adapter learnloop knows, newest first, with status, base, dataset and eval metrics."""
    if status is not None and status not in STATUSES:
        raise InvalidInput(f"Unknown status {status!r}; use one of {', '.join(STATUSES)}.")
    return [to_adapter(r) for r in adapter_rows(store, role, status)]


def adapter_history(
    store: Store,
    adapter_id: Annotated[str | None, Field(description="One adapter's moves; without it, all (or a role's).")] = None,
    role: Annotated[str | None, Field(description="Only adapters of this role.")] = None,
) -> list[AdapterEvent]:
    """Every status change (time, actor, from, to, reason), oldest first, evaluations included."""
    if adapter_id:
        get_adapter(store, adapter_id)
    return [
        AdapterEvent.model_validate(dict(r) | {"time": iso(r["ts"]), "data": loads(r["data"]) or {}})
        for r in adapter_event_rows(store, adapter_id, role)
    ]


def move(
    store: Store,
    adapter_id: str,
    to_status: Status,
    actor: str,
    reason: str,
    force: bool = False,
    data: dict | None = None,
) -> Adapter:
    """Change one adapter's status (not to production: that is promote's job, which keeps
    the one-production-per-route rule)."""
    if to_status not in STATUSES:
        raise InvalidInput(f"Unknown status {to_status!r}; use one of {', '.join(STATUSES)}.")
    with store.write() as conn:
        row = adapter_row(store, adapter_id, conn)
        if row is None:
            raise NotFound(f"No adapter {shown(adapter_id)}. List adapters with list_adapters (CLI: learnloop list).")
        current = row["status"]
        if to_status not in MOVES[current] and not force:
            raise Conflict(
                f"Adapter {adapter_id} is {current}; it cannot move to {to_status} "
                f"(allowed: {', '.join(sorted(MOVES[current])) or 'none'})."
            )
        set_adapter_status(conn, adapter_id, current, to_status, actor, reason, data)
    return get_adapter(store, adapter_id)


def fail_training(store: Store, adapter_id: str, reason: str) -> bool:
    """Mark an adapter failed, with its event, if it is still training (its training job failed
    or died). Returns whether it moved."""
    with store.write() as conn:
        row = adapter_row(store, adapter_id, conn)
        if row is None or row["status"] != "training":
            return False
        set_adapter_status(conn, adapter_id, "training", "failed", "learnloop", reason)
    return True


def forget_unstarted(store: Store, adapter_id: str) -> bool:
    """Remove an adapter whose training never started (refused, or failed while loading the
    base or wrapping it with LoRA): its row, its events and its folder under the home's
    adapters/. Only a `training` adapter without checkpoints is removed (one that trained a
    step stays, failed, for resume). Returns whether it was removed."""
    with store.write() as conn:
        row = adapter_row(store, adapter_id, conn)
        if row is None or row["status"] != "training":
            return False
        folder = Path(row["path"]).resolve()
        if (folder / "checkpoints").exists():
            return False
        delete_adapter_rows(conn, adapter_id)
    if (store.home / "adapters").resolve() in folder.parents:
        shutil.rmtree(folder, ignore_errors=True)
    return True


def set_metrics(store: Store, adapter_id: str, metrics: dict[str, Any]) -> None:
    with store.write() as conn:
        update_adapter_fields(conn, adapter_id, metrics=dumps(metrics), updated=time.time())


def record_evaluation(
    store: Store,
    adapter_id: str,
    metrics: dict[str, Any],
    reason: str,
    to_status: Status | None = None,
    data: dict | None = None,
    actor: str = "learnloop",
) -> Adapter:
    """Store an evaluation's metrics and its event (and the gate's move, if any) in one transaction.
    The move (trained -> to_status) happens only if the adapter is still trained when the result
    is written (it may have been promoted or archived meanwhile). Without a move, the event keeps
    the status (from = to) so the history shows every evaluation."""
    with store.write() as conn:
        row = adapter_row(store, adapter_id, conn)
        if row is None:
            raise NotFound(f"No adapter {shown(adapter_id)}. List adapters with list_adapters (CLI: learnloop list).")
        current = row["status"]
        target = to_status if to_status and current == "trained" and to_status in MOVES[current] else current
        update_adapter_fields(conn, adapter_id, metrics=dumps(metrics), updated=time.time())
        set_adapter_status(conn, adapter_id, current, target, actor, reason, data)
    return get_adapter(store, adapter_id)


def route_of(row) -> tuple[str, str | None, str | None]:
    return row["role"], row["task_type"], row["complexity"]


def set_production(
    store: Store, adapter_id: str, actor: str, reason: str, force: bool = False, check=None
) -> tuple[Adapter, str | None]:
    """Make an adapter the production adapter of its route, archiving the one it replaces,
    in one transaction (a crash at any point leaves exactly one production adapter).
    `check(row, old_row)`, if given, runs inside the transaction and may raise to refuse.
    Returns the adapter and the id it replaced (or None)."""
    with store.write() as conn:
        row = adapter_row(store, adapter_id, conn)
        if row is None:
            raise NotFound(f"No adapter {shown(adapter_id)}. List adapters with list_adapters (CLI: learnloop list).")
        current = row["status"]
        if current == "production":
            raise Conflict(f"Adapter {adapter_id} is already in production for its route.")
        if current in ("failed", "training"):
            raise Conflict(
                f"Adapter {adapter_id} is {current}; only a trained, candidate or archived adapter can be promoted."
            )
        if current != "candidate" and not force and current != "archived":
            raise Conflict(
                f"Adapter {adapter_id} is {current}: only a candidate goes to production. Evaluate it "
                "(evaluate_adapter) so the gate makes it a candidate, or pass force to override."
            )
        old = production_for_route(conn, *route_of(row))
        if check is not None:
            check(row, old)
        if old is not None:
            set_adapter_status(
                conn,
                old["id"],
                "production",
                "archived",
                actor,
                f"replaced by {adapter_id}: {reason}",
                {"replaced_by": adapter_id},
            )
        set_adapter_status(
            conn,
            adapter_id,
            current,
            "production",
            actor,
            reason,
            {"replaced": old["id"] if old is not None else None, "forced": force},
        )
    return get_adapter(store, adapter_id), (old["id"] if old is not None else None)


def previous_production(store: Store, role: str, task_type: str | None = None, complexity: str | None = None):
    """The adapter a rollback of this route would restore, or None."""
    with store.read() as conn:
        return previous_production_row(conn, role, task_type, complexity)


def rollback_route(
    store: Store,
    role: str,
    task_type: str | None = None,
    complexity: str | None = None,
    actor: str = "learnloop",
    reason: str = "rollback",
) -> tuple[Adapter, str | None]:
    """Put the most recently replaced production adapter of a route back into production,
    archiving the current one, in one transaction. Returns (restored adapter, archived id)."""
    with store.write() as conn:
        prev = previous_production_row(conn, role, task_type, complexity)
        if prev is None:
            raise Conflict(
                f"Nothing to roll back to for role {role!r}"
                + (f" task_type {task_type!r}" if task_type else "")
                + (f" complexity {complexity!r}" if complexity else "")
                + ": no adapter of this route was ever replaced in production."
            )
        current = production_for_route(conn, role, task_type, complexity)
        if current is not None:
            set_adapter_status(
                conn,
                current["id"],
                "production",
                "archived",
                actor,
                f"rolled back: {reason}",
                {"rollback_to": prev["id"]},
            )
        set_adapter_status(
            conn,
            prev["id"],
            "archived",
            "production",
            actor,
            f"rollback: {reason}",
            {"rollback_from": current["id"] if current is not None else None},
        )
    return get_adapter(store, prev["id"]), (current["id"] if current is not None else None)
