"""Reading runs back for a person: the latest runs under a few filters, and each role's mean
reward per day (the dashboard's table and chart). Read-only."""

from __future__ import annotations

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
    limit: int = 50,
) -> list[Run]:
    """The newest runs matching every filter given (a reward bound leaves pending runs out)."""
    where, args = [], []
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


def daily_rewards(store: Store) -> dict[str, list[DailyReward]]:
    """Each role's mean reward per UTC day over its scored runs, oldest day first."""
    sql = (
        "SELECT role, date(ts, 'unixepoch') AS day, avg(reward) AS mean, count(*) AS runs FROM runs "
        "WHERE reward IS NOT NULL GROUP BY role, day ORDER BY role, day"
    )
    out: dict[str, list[DailyReward]] = {}
    with store.read() as conn:
        for r in conn.execute(sql):
            out.setdefault(r["role"], []).append(DailyReward(day=r["day"], mean_reward=r["mean"], runs=r["runs"]))
    return out
