"""Experiments: run a candidate adapter beside a route's production adapter (or the base).

Two modes:
- canary: a fixed fraction of the route's traffic goes to the candidate. Which task goes
  where is a hash of (seed, experiment id, task_key), so a task is always served the same way.
- thompson: Thompson sampling on the rewards each arm has earned. Each arm's mean reward has
  a Beta posterior with fractional rewards: Beta(1 + sum of rewards, 1 + sum of (1 - reward))
  over the runs attributed to the arm through their decision_id (a Bernoulli reward r counts
  as r successes and 1 - r failures, which is exact for 0/1 rewards and keeps the posterior
  mean at the arm's mean reward for fractional ones). The arm whose posterior draw is higher
  wins; draws come from a generator seeded by (seed, experiment id, task_key), so a decision
  is reproducible given the same data.

Every selection under an experiment is a decision row naming the experiment and the arm, so
detect_drift can compare the two arms on the same traffic over the same period.
"""

from __future__ import annotations

import secrets
import sqlite3
import time
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field

from learning.clock import iso, stamp
from learning.errors import Conflict, InvalidInput, NotFound, check, shown
from learning.params import Complexity, Reason, Role, RoleFilter, TaskType
from learning.registry.queries import adapter_brief, production_for_route
from learning.routing.router import Arm, experiment_arm_rewards, route_keys
from learning.store import Store

Mode = Literal["canary", "thompson"]
STARTABLE = ("candidate", "trained", "archived")


class ArmStats(BaseModel):
    arm: Arm
    adapter_id: str | None = Field(description="None: the control arm serves the base model (or the fallback route).")
    runs: int = Field(description="Runs attributed to this arm through decision_id.")
    mean_reward: float | None


class Experiment(BaseModel):
    id: str
    role: str
    task_type: str | None
    complexity: str | None
    candidate_id: str
    control_id: str | None = Field(
        description="Adapter serving the route when the experiment started (its own production "
        "adapter or a less specific route's; None: the base model)."
    )
    mode: Mode
    fraction: float | None = Field(description="Canary share of traffic for the candidate.")
    seed: int
    status: Literal["running", "stopped"]
    created: str
    stopped: str | None
    reason: str
    arms: list[ArmStats]


def to_experiment(store: Store, row: sqlite3.Row) -> Experiment:
    with store.read() as conn:
        stats = {r["arm"]: r for r in experiment_arm_rewards(conn, row["id"])}
    arms = []
    sides: tuple[tuple[Arm, str | None], ...] = (("control", row["control_id"]), ("candidate", row["candidate_id"]))
    for arm, adapter_id in sides:
        s = stats.get(arm)
        runs = s["runs"] if s else 0
        arms.append(
            ArmStats(
                arm=arm,
                adapter_id=adapter_id,
                runs=runs,
                mean_reward=round(s["reward_sum"] / runs, 4) if s and runs else None,
            )
        )
    return Experiment.model_validate(
        dict(row) | {"created": iso(row["created"]), "stopped": iso(row["stopped"]), "arms": arms}
    )


def _control(store: Store, conn, role: str, task_type: str | None, complexity: str | None):
    """The production adapter that serves the route today (its own, or a less specific one's)."""
    for _, key in route_keys(role, task_type, complexity):
        row = production_for_route(conn, *key)
        if row is not None:
            return row
    return None


def start_experiment(
    store: Store,
    role: Role,
    candidate_id: Annotated[str, Field(description="Adapter to try beside production on its route.")],
    mode: Annotated[
        Mode, Field(description="canary (fixed share of traffic) or thompson (share follows rewards).")
    ] = "canary",
    fraction: Annotated[float | None, Field(description="Canary share for the candidate, e.g. 0.1.")] = None,
    seed: Annotated[int, Field(description="Seed of the hash that assigns tasks to arms.")] = 0,
    reason: Reason = "",
) -> Experiment:
    """Serve a candidate adapter beside the route's production adapter (or the base) on part
    of the traffic. select_adapter then reports the experiment and arm with each decision.
    The experiment's route is the candidate's (role, task_type, complexity)."""
    problems = []
    if mode not in ("canary", "thompson"):
        problems.append(f"mode must be canary or thompson, got {mode!r}.")
    if mode == "canary":
        fraction = 0.1 if fraction is None else fraction
        if not 0 < fraction < 1:
            problems.append(f"fraction must be between 0 and 1 (exclusive) for a canary, got {fraction}.")
    elif fraction is not None:
        problems.append("fraction applies to canary experiments only; Thompson sampling sets the split from rewards.")
    check(problems)
    with store.write() as conn:
        cand = adapter_brief(conn, candidate_id)
        if cand is None:
            raise NotFound(f"No adapter {shown(candidate_id)}. List adapters with list_adapters (CLI: learnloop list).")
        if cand["role"] != role:
            raise InvalidInput(
                f"Adapter {candidate_id} was trained for role {cand['role']!r}, not {role!r}: "
                "an experiment compares adapters of one role."
            )
        if cand["status"] not in STARTABLE:
            raise Conflict(
                f"Adapter {candidate_id} is {cand['status']}; only a {', '.join(STARTABLE)} adapter can "
                "be a candidate in an experiment."
            )
        route = (role, cand["task_type"], cand["complexity"])
        running = running_experiment(conn, *route)
        if running is not None:
            raise Conflict(
                f"Experiment {running['id']} already runs on this route; stop it first "
                f"(stop_experiment, CLI: learnloop experiment stop --id {running['id']})."
            )
        control = _control(store, conn, *route)
        experiment_id = f"exp-{role}-{stamp()}-{secrets.token_hex(2)}"
        insert_experiment(
            conn,
            dict(
                id=experiment_id,
                role=role,
                task_type=cand["task_type"],
                complexity=cand["complexity"],
                candidate_id=candidate_id,
                control_id=control["id"] if control is not None else None,
                mode=mode,
                fraction=fraction if mode == "canary" else None,
                seed=int(seed),
                status="running",
                created=time.time(),
                reason=reason,
            ),
        )
    row = experiment_row(store, experiment_id)
    assert row is not None  # just inserted
    return to_experiment(store, row)


def stop_experiment(
    store: Store,
    experiment_id: Annotated[str | None, Field(description="The experiment to stop ...")] = None,
    role: Annotated[str | None, Field(description="... or the role whose route runs one.")] = None,
    task_type: TaskType = None,
    complexity: Complexity = None,
    reason: Reason = "",
) -> Experiment:
    """Stop an experiment: all traffic goes back to production. Returns each arm's runs and mean
    reward; its decisions stay recorded."""
    if (experiment_id is None) == (role is None):
        raise InvalidInput("Give exactly one of an experiment id or a role (with its task_type / complexity).")
    with store.write() as conn:
        if experiment_id is not None:
            row = experiment_row(store, experiment_id, conn)
            if row is None:
                raise NotFound(f"No experiment {shown(experiment_id)}. List them with list_experiments.")
        else:
            assert role is not None  # exactly one of the two was given
            row = running_experiment(conn, role, task_type, complexity)
            if row is None:
                raise NotFound(
                    f"No experiment runs on role {shown(role)}"
                    + (f" task_type {task_type!r}" if task_type else "")
                    + (f" complexity {complexity!r}" if complexity else "")
                    + ". List them with list_experiments."
                )
        if row["status"] != "running":
            raise Conflict(f"Experiment {row['id']} is already stopped.")
        mark_stopped(conn, row["id"], reason)
    stopped = experiment_row(store, row["id"])
    assert stopped is not None  # experiments are never deleted
    return to_experiment(store, stopped)


def list_experiments(store: Store, role: RoleFilter = None) -> list[Experiment]:
    """Experiments, newest first, with each arm's runs and mean reward."""
    return [to_experiment(store, r) for r in experiment_rows(store, role)]


# ---- SQL: the experiments table ----------------------------------------------------------------


def insert_experiment(conn: sqlite3.Connection, row: dict[str, Any]) -> None:
    cols = list(row)
    conn.execute(
        f"INSERT INTO experiments ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})", [row[c] for c in cols]
    )


def experiment_row(store: Store, experiment_id: str, conn: sqlite3.Connection | None = None) -> sqlite3.Row | None:
    with store.read() as c:
        return (conn or c).execute("SELECT * FROM experiments WHERE id = ?", (experiment_id,)).fetchone()


def running_experiment(
    conn: sqlite3.Connection, role: str, task_type: str | None, complexity: str | None
) -> sqlite3.Row | None:
    return conn.execute(
        "SELECT * FROM experiments WHERE status = 'running' AND role = ? AND ifnull(task_type, '') = ifnull(?, '') "
        "AND ifnull(complexity, '') = ifnull(?, '')",
        (role, task_type, complexity),
    ).fetchone()


def mark_stopped(conn: sqlite3.Connection, experiment_id: str, reason: str) -> None:
    conn.execute(
        "UPDATE experiments SET status = 'stopped', stopped = ?, reason = ? WHERE id = ?",
        (time.time(), reason, experiment_id),
    )


def experiment_rows(store: Store, role: str | None = None) -> list[sqlite3.Row]:
    with store.read() as conn:
        if role:
            return conn.execute("SELECT * FROM experiments WHERE role = ? ORDER BY created DESC", (role,)).fetchall()
        return conn.execute("SELECT * FROM experiments ORDER BY created DESC").fetchall()
