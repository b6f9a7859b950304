"""A picture of a role's rewards over time: one rolling-mean line per adapter and the base
model, promotions and rollbacks as vertical lines, the latest drift decision in the title."""

from __future__ import annotations

import sqlite3
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, Field

from learning.errors import NotFound, shown
from learning.home import safe_id, subdir
from learning.params import Role
from learning.registry.queries import adapter_event_rows, known_roles, role_known
from learning.routing.drift import DriftResult, latest_drift
from learning.store import Store, loads


class Report(BaseModel):
    path: str = Field(description="The PNG written.")
    role: str
    runs: int
    series: dict[str, int] = Field(description="Runs per line: adapter id, or 'base'.")
    promotions: int
    rollbacks: int
    drift_decision: str | None = Field(description="Decision of the latest recorded drift check of the role.")


def _rolling(values: list[float], window: int) -> list[float]:
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def write_report(
    store: Store,
    role: Role,
    out: Annotated[str | None, Field(description="PNG to write (default: <home>/reports/).")] = None,
    window: Annotated[int, Field(ge=1, description="Runs in the rolling mean.")] = 20,
) -> Report:
    """Plot reward over time per adapter, with promotions, rollbacks and the latest drift decision."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt

    safe_id(role, "role")  # it names the file
    rows = role_rewards(store, role)
    if not rows and not role_known(store, role):
        raise NotFound(
            f"No adapters or runs for role {shown(role)}. Known roles: {', '.join(known_roles(store)) or 'none yet'}."
        )
    series = _series(rows)
    events = adapter_event_rows(store, role=role)
    fig, ax = plt.subplots(figsize=(10, 5), dpi=110)
    _draw_lines(ax, series, window)
    promotions, rollbacks = _mark_production(ax, events)
    check = latest_drift(store, role)
    ax.set_title(_title(role, window, check), fontsize=10)
    ax.set_ylabel("reward")
    ax.set_ylim(-0.02, 1.02)
    ax.xaxis.set_major_formatter(mdates.DateFormatter("%m-%d %H:%M"))
    fig.autofmt_xdate()
    if series:
        ax.legend(loc="lower left", fontsize=8)
    ax.grid(alpha=0.3)
    path = Path(out) if out else subdir(store.home, "reports") / f"{role}-{time.strftime('%Y%m%d-%H%M%S')}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Report(
        path=str(path.resolve()),
        role=role,
        runs=len(rows),
        series={k: len(v[1]) for k, v in series.items()},
        promotions=promotions,
        rollbacks=rollbacks,
        drift_decision=check.decision if check else None,
    )


def _series(rows: list[sqlite3.Row]) -> dict[str, tuple[list, list, list]]:
    """name (adapter id or 'base') -> times, rewards, and the stretch number of each run (a stretch
    is a spell of consecutive runs served by the same adapter)."""
    series: dict[str, tuple[list, list, list]] = {}
    stretch, last = 0, None
    for r in rows:
        name = r["adapter_id"] or "base"
        stretch += name != last
        last = name
        ts, rewards, stretches = series.setdefault(name, ([], [], []))
        ts.append(datetime.fromtimestamp(r["ts"], tz=timezone.utc))
        rewards.append(r["reward"])
        stretches.append(stretch)
    return series


def _draw_lines(ax, series: dict[str, tuple[list, list, list]], window: int) -> None:
    """One rolling-mean line per adapter (and the base), over its runs' rewards as faint dots."""
    for name, (ts, rewards, stretches) in sorted(series.items(), key=lambda kv: kv[1][0][0]):
        # A line breaks where another adapter served in between (NaN is a gap for matplotlib).
        xs, ys = [], []
        for i, (t, y) in enumerate(zip(ts, _rolling(rewards, window))):
            if i and stretches[i] != stretches[i - 1]:
                xs.append(t)
                ys.append(float("nan"))
            xs.append(t)
            ys.append(y)
        (line,) = ax.plot(xs, ys, lw=1.8, label=f"{name} ({len(rewards)} runs)")
        ax.scatter(ts, rewards, s=6, alpha=0.15, color=line.get_color())


def _mark_production(ax, events: list[sqlite3.Row]) -> tuple[int, int]:
    """A vertical line at each move to production (black: promotion, red dashed: rollback);
    returns (promotions, rollbacks)."""
    promotions = rollbacks = 0
    marked = 0
    for e in events:
        if e["to_status"] != "production":
            continue
        marked += 1
        is_rollback = "rollback_from" in (loads(e["data"]) or {})
        rollbacks += is_rollback
        promotions += not is_rollback
        x = datetime.fromtimestamp(e["ts"], tz=timezone.utc)
        ax.axvline(
            x,  # pyright: ignore[reportArgumentType]  # a date on a date axis; the stubs only declare float
            color="red" if is_rollback else "black",
            ls="--" if is_rollback else "-",
            lw=1.2,
            alpha=0.8,
        )
        ax.annotate(
            ("rollback to " if is_rollback else "promote ") + e["adapter_id"],
            (x, 0.99 - 0.2 * (marked % 3)),
            xycoords=("data", "axes fraction"),
            rotation=90,
            va="top",
            ha="right",
            fontsize=7,
        )
    return promotions, rollbacks


def _title(role: str, window: int, check: DriftResult | None) -> str:
    title = f"{role}: reward (rolling mean of {window} runs)"
    if check is not None:
        change = f" {check.relative_change:+.1%}" if check.relative_change is not None else ""
        title += f"\nlatest drift check: {check.decision}{change} ({check.new.adapter_id or 'base'} vs {check.old.adapter_id or 'base'})"
    else:
        title += "\nno drift check recorded yet"
    return title


def role_rewards(store: Store, role: str) -> list[sqlite3.Row]:
    """ts, reward and adapter_id of every scored run of a role (pending ones left out), oldest first."""
    with store.read() as conn:
        return conn.execute(
            "SELECT ts, reward, adapter_id FROM runs WHERE role = ? AND reward IS NOT NULL ORDER BY ts, id", (role,)
        ).fetchall()
