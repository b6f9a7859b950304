"""Routing: which adapter should serve a task, decided in well under a millisecond.

Routes are the (role, task_type, complexity) of production adapters. For a request the
router tries, in order, and the first route with a production adapter (or a running
experiment) wins:

  1. exact      (role, task_type, complexity)   when both are given
  2. task_type  (role, task_type, -)            when task_type is given
  3. complexity (role, -, complexity)           when complexity is given
  4. role       (role, -, -)
  5. base       the base model (adapter_id None)

The task type comes before the complexity because it names the skill a task needs; the
complexity only how hard it is.

The route table lives in memory, one per database file, shared by the threads of a
process. Each call checks it in two steps: `PRAGMA data_version` and the connection's own
change counter tell, without reading a table, whether anyone wrote since the last call; only
then a one-row query reads the registry's generation (the newest adapter event id and the
experiment counts) and reloads the table when that changed. A promote or rollback in any
process is therefore seen by the next call. The router never writes to the registry: it
appends one row to `decisions` per selection, and the id of that row is what an agent passes
back in log_run so the reward is attributed to the adapter (and experiment arm) that served it.
"""

from __future__ import annotations

import hashlib
import random
import re
import secrets
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, NamedTuple

from pydantic import BaseModel, Field

from learning.errors import InvalidInput, shown
from learning.params import Complexity, Role, TaskType
from learning.registry.queries import adapter_brief
from learning.runs.schema import LIMITS, ROLE_PATTERN
from learning.serve.deploy import latest_deployment
from learning.store import Store

Level = Literal["exact", "task_type", "complexity", "role", "base"]
Arm = Literal["control", "candidate"]
STATS_TTL_S = 1.0  # how stale Thompson sampling's per-arm reward sums may be


class Selection(BaseModel):
    adapter_id: str | None = Field(description="Adapter to use; None means the base model.")
    adapter_path: str | None = Field(description="Folder with the adapter's weights (None for the base).")
    base_model: str | None = Field(
        description="Base model the adapter was trained on (None when the role has no adapters)."
    )
    served_name: str | None = Field(description="Name under which a runtime serves this adapter, if it was deployed.")
    deployment_url: str | None = Field(description="Where that deployment listens, if known.")
    route: Level = Field(description="Which route level matched: exact, task_type, complexity, role or base.")
    experiment_id: str | None = Field(description="The experiment this decision belongs to, if any.")
    arm: Arm | None = Field(description="Experiment arm chosen, if any.")
    decision_id: str = Field(description="Pass this to log_run (decision_id) so the reward is attributed.")


@dataclass
class _Table:
    production: dict[tuple, dict]
    experiments: dict[tuple, dict]
    bases: dict[str, str]


@dataclass
class _Cache:
    lock: threading.Lock = field(default_factory=threading.Lock)
    token: tuple | None = None
    table: _Table | None = None
    local: threading.local = field(default_factory=threading.local)
    arm_stats: dict[str, tuple[float, dict]] = field(default_factory=dict)


_CACHES: dict[str, _Cache] = {}


def _cache(store: Store) -> _Cache:
    key = str(store.path)
    cache = _CACHES.get(key)
    if cache is None:
        cache = _CACHES.setdefault(key, _Cache())
    return cache


def _load(store: Store, conn) -> _Table:
    production, experiments, bases = route_table(conn)
    key = lambda r: (r["role"], r["task_type"], r["complexity"])  # noqa: E731
    running = {}
    for r in experiments:
        cand = adapter_brief(conn, r["candidate_id"])
        if cand is not None and cand["status"] not in ("failed", "training"):  # never serve a broken candidate
            running[key(r)] = {**dict(r), "candidate": dict(cand)}
    return _Table(
        production={key(r): dict(r) for r in production},
        experiments=running,
        bases={r["role"]: r["base_model"] for r in bases},
    )


def _table(store: Store, conn, cache: _Cache) -> _Table:
    probe = (id(conn), conn.execute("PRAGMA data_version").fetchone()["data_version"], conn.total_changes)
    if cache.table is not None and getattr(cache.local, "probe", None) == probe:
        return cache.table
    token = route_token(conn)
    with cache.lock:
        if token != cache.token or cache.table is None:
            cache.table, cache.token = _load(store, conn), token
            cache.arm_stats.clear()
        table = cache.table
    cache.local.probe = probe
    return table


def route_keys(role: str, task_type: str | None, complexity: str | None) -> list[tuple[Level, tuple]]:
    """The routes a task matches, most specific first, each with its level."""
    keys: list[tuple[Level, tuple]] = []
    if task_type and complexity:
        keys.append(("exact", (role, task_type, complexity)))
    if task_type:
        keys.append(("task_type", (role, task_type, None)))
    if complexity:
        keys.append(("complexity", (role, None, complexity)))
    keys.append(("role", (role, None, None)))
    return keys


def _unit(*parts: object) -> float:
    """A number in [0, 1) from a hash of the parts: the same parts, the same number."""
    digest = hashlib.blake2b("\x1f".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def _arm_stats(store: Store, conn, cache: _Cache, experiment_id: str) -> dict:
    now = time.monotonic()
    hit = cache.arm_stats.get(experiment_id)
    if hit is not None and now - hit[0] < STATS_TTL_S:
        return hit[1]
    stats = {r["arm"]: (r["runs"], r["reward_sum"]) for r in experiment_arm_rewards(conn, experiment_id)}
    cache.arm_stats[experiment_id] = (now, stats)
    return stats


def thompson_arm(stats: dict, seed: int, experiment_id: str, key: str) -> str:
    """Draw each arm's mean reward from Beta(1 + sum r, 1 + sum (1 - r)); the higher draw wins."""
    rng = random.Random(int(_unit(seed, experiment_id, key) * 2**53))
    draws = {}
    for arm in ("control", "candidate"):
        n, s = stats.get(arm, (0, 0.0))
        draws[arm] = rng.betavariate(1.0 + s, 1.0 + n - s)
    return "candidate" if draws["candidate"] > draws["control"] else "control"


def _choose_arm(store: Store, conn, cache: _Cache, exp: dict, key: str) -> str:
    if exp["mode"] == "canary":
        return "candidate" if _unit(exp["seed"], exp["id"], key) < exp["fraction"] else "control"
    return thompson_arm(_arm_stats(store, conn, cache, exp["id"]), exp["seed"], exp["id"], key)


def _resolve(
    store, conn, cache, table: _Table, role, task_type, complexity, key: str, seed: int | None
) -> tuple[Any, Level, str | None, Arm | None]:
    """(adapter row or None, level, experiment id, arm)."""
    keys = route_keys(role, task_type, complexity)
    for i, (level, route) in enumerate(keys):
        exp = table.experiments.get(route)
        prod = table.production.get(route)
        if exp is not None:
            # The control arm: the first route from here on with a production adapter, else the base.
            control: tuple[Level, Any] = ("base", None)
            for lv, r in keys[i:]:
                if r in table.production:
                    control = (lv, table.production[r])
                    break
            if control[1] is None or control[1]["id"] != exp["candidate_id"]:
                arm = _choose_arm(store, conn, cache, exp if seed is None else {**exp, "seed": seed}, key)
                if arm == "candidate":
                    return exp["candidate"], level, exp["id"], arm
                return control[1], control[0], exp["id"], "control"
        if prod is not None:
            return prod, level, None, None
    return None, "base", None, None


def _remember_own_write(cache: _Cache, conn) -> None:
    """A decision row is no change to the route table: keep this thread's probe valid after
    writing one, so the next call does not re-read the registry's generation for it. (Another
    connection's commit still changes PRAGMA data_version, which the probe holds.)"""
    probe = getattr(cache.local, "probe", None)
    if probe is not None and probe[0] == id(conn):
        cache.local.probe = (probe[0], probe[1], conn.total_changes)


def _check(role: str, task_type: str | None, complexity: str | None, task_key: str | None) -> None:
    problems = []
    if not isinstance(role, str) or not re.fullmatch(ROLE_PATTERN, role):
        problems.append(f"'role' must be a lower-case name such as coder, fixer or judge, got {shown(role)}.")
    for name, value in (("task_type", task_type), ("complexity", complexity), ("task_key", task_key)):
        if value is not None and (not isinstance(value, str) or not value or len(value) > LIMITS[name]):
            problems.append(f"'{name}' must be a non-empty string of at most {LIMITS[name]} characters.")
    if problems:
        raise InvalidInput("Invalid selection request: " + " ".join(problems))


def select_adapter(
    store: Store,
    role: Role,
    task_type: TaskType = None,
    complexity: Complexity = None,
    task_key: Annotated[
        str | None, Field(description="Stable key of the task (same key, same choice under an experiment).")
    ] = None,
    seed: int | None = None,
    record: bool = True,
) -> Selection:
    """Which adapter to use for the next task: adapter id and path (None = the base model),
    the base model, the served name where it is deployed, and a decision_id. Call it before
    each task and pass decision_id to log_run afterwards so the reward counts for the
    adapter that earned it. Never changes the registry; it only logs the decision.

    Deterministic for a given task_key under an experiment; without a task_key the
    decision id stands in for it. `seed` overrides the experiment's own seed (for reproducible
    simulations); leave it out in production so every caller splits traffic the same way. The
    decision is written before this returns (one short transaction); with record=False it is
    not, and log_run will not accept its id."""
    selection, row = decide(store, role, task_type, complexity, task_key, seed)
    if record:
        with store.write() as conn:
            insert_decision(conn, row)
        _remember_own_write(_cache(store), conn)
    return selection


def decide(
    store: Store,
    role: str,
    task_type: str | None = None,
    complexity: str | None = None,
    task_key: str | None = None,
    seed: int | None = None,
) -> tuple[Selection, DecisionRow]:
    """select_adapter without the write: the selection and the decision row that records it, for
    a caller that writes the row itself (the gateway writes it in one transaction with the run)."""
    _check(role, task_type, complexity, task_key)
    cache = _cache(store)
    decision_id = "d-" + secrets.token_hex(8)
    with store.read() as conn:
        table = _table(store, conn, cache)
        adapter, level, experiment_id, arm = _resolve(
            store, conn, cache, table, role, task_type, complexity, task_key or decision_id, seed
        )
        deployment = latest_deployment(store, adapter["id"], conn) if adapter is not None else None
    adapter_id = adapter["id"] if adapter else None
    row = DecisionRow(
        id=decision_id,
        ts=time.time(),
        role=role,
        task_type=task_type,
        complexity=complexity,
        task_key=task_key,
        adapter_id=adapter_id,
        route=level,
        experiment_id=experiment_id,
        arm=arm,
    )
    selection = Selection(
        adapter_id=adapter_id,
        adapter_path=adapter["path"] if adapter else None,
        base_model=adapter["base_model"] if adapter else table.bases.get(role),
        served_name=deployment["served_name"] if deployment is not None else None,
        deployment_url=deployment["url"] if deployment is not None else None,
        route=level,
        experiment_id=experiment_id,
        arm=arm,
        decision_id=decision_id,
    )
    return selection, row


# ---- SQL: the route table, the registry's generation, and the decisions table ------------------


class DecisionRow(NamedTuple):
    """One row of the decisions table, its fields in column order."""

    id: str
    ts: float
    role: str
    task_type: str | None
    complexity: str | None
    task_key: str | None
    adapter_id: str | None
    route: str
    experiment_id: str | None
    arm: str | None


def insert_decision(conn: sqlite3.Connection, row: DecisionRow) -> None:
    conn.execute(
        f"INSERT INTO decisions ({', '.join(DecisionRow._fields)}) "
        f"VALUES ({', '.join('?' * len(DecisionRow._fields))})",
        row,
    )


def route_token(conn: sqlite3.Connection) -> tuple:
    """Changes whenever an adapter moves (every move writes an event) or an experiment
    starts or stops: the router's cache key."""
    row = conn.execute(
        "SELECT (SELECT ifnull(max(id), 0) FROM adapter_events) AS last_event, "
        "(SELECT count(*) FROM experiments) AS experiments, (SELECT count(stopped) FROM experiments) AS stopped"
    ).fetchone()
    return row["last_event"], row["experiments"], row["stopped"]


def route_table(conn: sqlite3.Connection) -> tuple[list[sqlite3.Row], list[sqlite3.Row], list[sqlite3.Row]]:
    """Production adapters, running experiments, and each role's latest base model."""
    production = conn.execute(
        "SELECT id, role, task_type, complexity, base_model, path FROM adapters WHERE status = 'production'"
    ).fetchall()
    experiments = conn.execute("SELECT * FROM experiments WHERE status = 'running'").fetchall()
    bases = conn.execute(
        "SELECT role, base_model FROM adapters a WHERE created = "
        "(SELECT max(created) FROM adapters b WHERE b.role = a.role)"
    ).fetchall()
    return production, experiments, bases


def experiment_arm_rewards(conn: sqlite3.Connection, experiment_id: str) -> list[sqlite3.Row]:
    """Scored runs attributed (through their decision) to each arm of an experiment: count and
    reward sum. Pending runs (not scored yet) count once log_reward scores them."""
    return conn.execute(
        "SELECT d.arm AS arm, count(r.id) AS runs, ifnull(sum(r.reward), 0) AS reward_sum "
        "FROM decisions d JOIN runs r ON r.decision_id = d.id "
        "WHERE d.experiment_id = ? AND r.reward IS NOT NULL GROUP BY d.arm",
        (experiment_id,),
    ).fetchall()
