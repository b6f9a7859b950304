"""Reading runs back for a person: the latest runs under a few filters, who scored each, and the
mean reward per day of each role or adapter (the dashboard's table and charts). Read-only.

Who scored a run: `pending` (no reward yet), `logged` (the reward came with the run), or the
actor its latest reward event records (the door a token's reward came through: mcp, cli, http,
python; `gateway` for the gateway's sandbox; `<user> via <door>` for the owner's correction)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel

from learning.runs.record import row_to_run
from learning.runs.schema import Run
from learning.store import Store


class DailyReward(BaseModel):
    day: str  # YYYY-MM-DD, UTC
    mean_reward: float
    runs: int  # scored runs that day


def latest_runs(
    store: Store,
    role: str | None = None,
    agent: str | None = None,
    adapter_id: str | None = None,
    min_reward: float | None = None,
    max_reward: float | None = None,
    scored_by: str | None = None,
    limit: int = 50,
) -> list[Run]:
    """The newest runs matching every filter given (a reward bound leaves pending runs out)."""
    where, args = [], []
    if scored_by == "pending":
        where.append("reward IS NULL")
    elif scored_by == "logged":
        where.append("reward IS NOT NULL AND NOT EXISTS (SELECT 1 FROM reward_events e WHERE e.run_id = runs.id)")
    elif scored_by is not None:
        where.append("(SELECT actor FROM reward_events e WHERE e.run_id = runs.id ORDER BY e.id DESC LIMIT 1) = ?")
        args.append(scored_by)
    for column, value in (("role", role), ("agent", agent), ("adapter_id", adapter_id)):
        if value is not None:
            where.append(f"{column} = ?")
            args.append(value)
    if min_reward is not None:
        where.append("reward >= ?")
        args.append(min_reward)
    if max_reward is not None:
        where.append("reward <= ?")
        args.append(max_reward)
    sql = f"SELECT * FROM runs {'WHERE ' + ' AND '.join(where) if where else ''} ORDER BY ts DESC, id DESC LIMIT ?"
    with store.read() as conn:
        return [row_to_run(r) for r in conn.execute(sql, [*args, limit]).fetchall()]


def scorers(store: Store, runs: list[Run]) -> dict[int, str]:
    """Who scored each of these runs (see the module's docstring)."""
    ids = [r.id for r in runs if r.reward is not None]
    latest: dict[int, str] = {}
    if ids:
        marks = ",".join("?" * len(ids))
        sql = f"SELECT run_id, actor FROM reward_events WHERE run_id IN ({marks}) ORDER BY id"
        with store.read() as conn:
            latest = {r["run_id"]: r["actor"] for r in conn.execute(sql, ids)}
    return {r.id: "pending" if r.reward is None else latest.get(r.id, "logged") for r in runs}


def daily_rewards(store: Store, by: Literal["role", "adapter"] = "role") -> dict[str, list[DailyReward]]:
    """Mean reward per UTC day over scored runs, oldest day first, for each role or each adapter
    (runs the base model served are "base")."""
    key = "+role" if by == "role" else "ifnull(adapter_id, 'base')"  # +: a scan, see runs.stats
    sql = (
        f"SELECT {key} AS key, date(ts, 'unixepoch') AS day, avg(reward) AS mean, count(*) AS runs FROM runs "
        "WHERE reward IS NOT NULL GROUP BY key, day ORDER BY key, day"
    )
    out: dict[str, list[DailyReward]] = {}
    with store.read() as conn:
        for r in conn.execute(sql):
            out.setdefault(r["key"], []).append(DailyReward(day=r["day"], mean_reward=r["mean"], runs=r["runs"]))
    return out


def runs_version(store: Store) -> tuple[int, int]:
    """Changes whenever a figure over runs can: runs are only ever added (ids may be written out of
    order, the gateway reserves them, so the count and not the highest id) and a stored run's
    reward only changes with a reward event. (The gateway's sandbox adding meta to a pending run
    changes no figure.)"""
    with store.read() as conn:
        runs = conn.execute("SELECT count(*) FROM runs").fetchone()[0]
        events = conn.execute("SELECT ifnull(max(id), 0) FROM reward_events").fetchone()[0]
    return int(runs), int(events)
