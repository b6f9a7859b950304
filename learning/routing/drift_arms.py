"""The two arms of a drift check: which adapters they are, the rewards of the runs each served,
and their summaries.

The new arm is the adapter checked; the old arm is the one it replaced in production (from the
registry's events), or the base model (runs of the role with no adapter) when it replaced
nothing; inside an experiment, its candidate and control arms. learning/routing/drift.py tests
and decides.
"""

from __future__ import annotations

import sqlite3
from typing import Any, NamedTuple

from pydantic import BaseModel, Field

from learning.clock import iso
from learning.errors import Conflict, InvalidInput, NotFound, check, shown
from learning.registry.queries import adapter_row, known_roles, production_for_route, role_known
from learning.routing.experiments import experiment_row
from learning.store import Store, loads


class ArmSummary(BaseModel):
    adapter_id: str | None = Field(description="None: the base model (runs of the role with no adapter).")
    runs: int
    mean_reward: float | None
    sd: float | None
    first_time: str | None
    last_time: str | None


def resolve_arms(
    store: Store, role, task_type, complexity, new_id, old_id, experiment_id
) -> tuple[str, str | None, str | None, str, str | None, str | None]:
    """(role, task_type, complexity, new id, old id or None for base, experiment id)."""
    if experiment_id is not None:
        exp = experiment_row(store, experiment_id)
        if exp is None:
            raise NotFound(f"No experiment {shown(experiment_id)}. List them with list_experiments.")
        if role is not None and role != exp["role"]:
            raise InvalidInput(f"Experiment {experiment_id} is for role {exp['role']!r}, not {shown(role)}.")
        return exp["role"], exp["task_type"], exp["complexity"], exp["candidate_id"], exp["control_id"], experiment_id
    if new_id is None:
        if role is None:
            raise InvalidInput("Give a role (compares its production adapter with the one it replaced) or --new ID.")
        if not role_known(store, role):
            known = known_roles(store)
            raise NotFound(
                f"No adapters or runs for role {shown(role)}. Known roles: {', '.join(known) or 'none yet'}."
            )
        with store.read() as conn:
            current = production_for_route(conn, role, task_type, complexity)
        if current is None:
            raise Conflict(
                f"Role {role!r}"
                + (f" task_type {task_type!r}" if task_type else "")
                + (f" complexity {complexity!r}" if complexity else "")
                + " has no production adapter: nothing to compare. Promote one first, or pass --new and --old."
            )
        new_id = current["id"]
    new = adapter_row(store, new_id)
    if new is None:
        raise NotFound(f"No adapter {shown(new_id)}. List adapters with list_adapters (CLI: learnloop list).")
    problems = []
    if role is not None and new["role"] != role:
        problems.append(f"adapter {new_id} is for role {new['role']!r}, not {shown(role)}.")
    if old_id is None:
        event = last_production_event(store, new_id)
        data = loads(event["data"]) if event is not None else {}
        old_id = data.get("replaced") or data.get("rollback_from")
    else:
        old = adapter_row(store, old_id)
        if old is None:
            raise NotFound(f"No adapter {shown(old_id)}. List adapters with list_adapters (CLI: learnloop list).")
        if old["role"] != new["role"]:
            problems.append(
                f"adapters of different roles cannot be compared: {new_id} is {new['role']!r}, "
                f"{old_id} is {old['role']!r}."
            )
        if old_id == new_id:
            problems.append("new and old are the same adapter.")
    check(problems, "Cannot compare:")
    return new["role"], new["task_type"], new["complexity"], new_id, old_id, None


def summarise_arms(
    store: Store,
    role: str,
    task_type: str | None,
    complexity: str | None,
    new_id: str | None,
    old_id: str | None,
    experiment_id: str | None,
    start: float | None,
    end: float | None,
    last_n: int | None,
):
    """The new arm's and the old arm's (summary, rewards), from the runs each served."""
    fetch: dict[str, Any] = dict(role=role, start=start, end=end, last_n=last_n, experiment_id=experiment_id)

    def rewards(adapter_id: str | None, arm: str | None):
        # An experiment's arms are its decisions' arms. Outside one, an adapter's runs are its own,
        # and the base model's are the role's runs without adapter on the same task_type/complexity.
        route: dict[str, Any] = (
            dict(task_type=task_type, complexity=complexity) if adapter_id is None and arm is None else {}
        )
        return arm_rewards(store, adapter_id=adapter_id, arm=arm, **route, **fetch)

    arms = ("candidate", "control") if experiment_id else (None, None)
    return summarise_arm(rewards(new_id, arms[0]), new_id), summarise_arm(rewards(old_id, arms[1]), old_id)


def summarise_arm(rows: list[RewardPoint], adapter_id: str | None):
    """An arm's summary, and its rewards as an array (numpy loads here, with the first check)."""
    import numpy as np

    rewards = np.array([r.reward for r in rows], dtype=float)
    n = len(rewards)
    return ArmSummary(
        adapter_id=adapter_id,
        runs=n,
        mean_reward=round(float(rewards.mean()), 4) if n else None,
        sd=round(float(rewards.std(ddof=1)), 4) if n > 1 else None,
        first_time=iso(rows[0].ts) if n else None,
        last_time=iso(rows[-1].ts) if n else None,
    ), rewards


# ---- SQL: the rewards runs earned, and production events ---------------------------------------------


class RewardPoint(NamedTuple):
    ts: float
    reward: float


def arm_rewards(
    store: Store,
    role: str | None,
    adapter_id: str | None,
    task_type: str | None = None,
    complexity: str | None = None,
    start: float | None = None,
    end: float | None = None,
    last_n: int | None = None,
    experiment_id: str | None = None,
    arm: str | None = None,
) -> list[RewardPoint]:
    """The rewards of the scored runs served by one adapter (None: the base model, which needs a
    role), oldest first; optionally only runs of a route, a time window, the last N, or one experiment
    (with an arm: the runs of that arm, whichever adapter served them)."""
    where: list[str]
    args: list[Any]
    where, args = (["r.adapter_id IS ?"], [adapter_id]) if arm is None else ([], [])
    where.append("r.reward IS NOT NULL")  # pending runs (not scored yet) have no reward to compare
    for col, value in (("r.role", role), ("r.task_type", task_type), ("r.complexity", complexity)):
        if value is not None:
            where.append(f"{col} = ?")
            args.append(value)
    if start is not None:
        where.append("r.ts >= ?")
        args.append(start)
    if end is not None:
        where.append("r.ts < ?")
        args.append(end)
    join = ""
    if experiment_id is not None:
        join = "JOIN decisions d ON d.id = r.decision_id"
        where.append("d.experiment_id = ?")
        args.append(experiment_id)
        if arm is not None:
            where.append("d.arm = ?")
            args.append(arm)
    sql = f"SELECT r.ts, r.reward FROM runs r {join} WHERE {' AND '.join(where)} ORDER BY r.ts DESC, r.id DESC"
    if last_n is not None:
        sql += " LIMIT ?"
        args.append(last_n)
    with store.read() as conn:
        rows = conn.execute(sql, args).fetchall()
    return [RewardPoint(r["ts"], r["reward"]) for r in reversed(rows)]


def last_production_event(store: Store, adapter_id: str) -> sqlite3.Row | None:
    with store.read() as conn:
        return conn.execute(
            "SELECT * FROM adapter_events WHERE adapter_id = ? AND to_status = 'production' ORDER BY id DESC LIMIT 1",
            (adapter_id,),
        ).fetchone()
