"""Drift: does a new adapter earn less than the one it replaced? Roll it back if so.

The two arms are the runs served by the new adapter and by the one it replaced in
production (from the registry's events), or by the base model (runs of the role with no
adapter) when it replaced nothing; learning.routing.drift_arms picks them and sums them up.
The statistics and the decision rule are in learning.routing.drift_stats; this module calls
them, records the check (record=False: only compares), and with auto_rollback undoes a
regression through the registry; drift_history reads the checks back. numpy and scipy load on the first check, not at import (the MCP server and the CLI start
without them).
"""

from __future__ import annotations

import math
import sqlite3
import time
from typing import Annotated, Any, Literal, NamedTuple

from pydantic import BaseModel, Field

from learning.clock import iso
from learning.errors import ConfirmationNeeded, check
from learning.params import Complexity, Confirm, TaskType
from learning.registry import adapters as registry
from learning.registry.queries import previous_production_row, production_for_route
from learning.routing.drift_arms import ArmSummary, resolve_arms, summarise_arms
from learning.runs.stats import time_window
from learning.store import Store, dumps, loads

Decision = Literal["regression", "improvement", "no_change", "insufficient_data"]


class DriftResult(BaseModel):
    role: str
    task_type: str | None
    complexity: str | None
    new: ArmSummary
    old: ArmSummary
    experiment_id: str | None = Field(description="When set, only runs routed through this experiment were compared.")
    window: str = Field(description="Which runs were compared.")
    method: Literal["welch", "msprt"] = Field(
        description="welch: fixed-horizon Welch t-test; msprt: always-valid "
        "mixture sequential test (safe to check after every batch)."
    )
    difference: float | None = Field(description="mean(new) - mean(old).")
    relative_change: float | None = Field(description="mean(new) / mean(old) - 1.")
    ci_low: float | None = Field(
        description="Lower end of the 95% interval of the relative change (Welch, delta method)."
    )
    ci_high: float | None
    p_value: float | None = Field(description="One-sided p-value in the direction observed (drop or rise).")
    threshold: float
    alpha: float
    min_runs: int
    decision: Decision
    runs_per_arm_needed: int = Field(description="Runs per arm for 80% power to flag a relative drop of 2 x threshold.")
    more_runs_needed: int = Field(
        description="Runs still missing (both arms together) to reach that size and min_runs."
    )
    rolled_back: bool
    rollback: str | None = Field(description="What auto_rollback did, or why it did nothing.")
    message: str


def _num(x) -> float | None:
    x = float(x)
    return round(x, 6) if math.isfinite(x) else None


def detect_drift(
    store: Store,
    role: Annotated[
        str | None, Field(description="Compare this role's production adapter with the one it replaced (or the base).")
    ] = None,
    task_type: TaskType = None,
    complexity: Complexity = None,
    new_id: Annotated[str | None, Field(description="Or compare this adapter ...")] = None,
    old_id: Annotated[
        str | None, Field(description="... with this one (default: the one new_id replaced, or the base).")
    ] = None,
    experiment_id: Annotated[
        str | None, Field(description="Compare the two arms of this experiment, on its traffic only.")
    ] = None,
    days: Annotated[float | None, Field(description="Only runs of the last N days.")] = None,
    since: Annotated[str | None, Field(description="Only runs from this time (ISO 8601).")] = None,
    until: Annotated[str | None, Field(description="Only runs before this time (ISO 8601).")] = None,
    last_n: Annotated[int | None, Field(description="Only the last N runs of each arm.")] = None,
    threshold: Annotated[float, Field(description="Smallest relative drop that counts (0.05 = 5%).")] = 0.05,
    alpha: Annotated[float, Field(description="False-alarm rate allowed.")] = 0.05,
    min_runs: Annotated[int, Field(description="Runs needed in each arm before deciding.")] = 30,
    sequential: Annotated[
        bool,
        Field(description="Use the always-valid sequential test: safe when you check again after every batch of runs."),
    ] = False,
    auto_rollback: Annotated[
        bool, Field(description="On a regression, roll the route back. Needs confirm=true.")
    ] = False,
    confirm: Confirm = False,
    actor: str = "detect_drift",
    record: bool = True,
) -> DriftResult:
    """Is a new adapter earning less than the one it replaced? Compares rewards of the runs
    each served: counts, means, relative change with a 95% interval, p-value, and a decision
    (regression, improvement, no_change, insufficient_data with how many more runs are
    needed). Records the check. Changes production only with auto_rollback=true and
    confirm=true, and only on a regression."""
    if auto_rollback and not confirm:
        raise ConfirmationNeeded(drift_consent(store, auto_rollback=True) or "")
    _check_options(threshold, alpha, min_runs, last_n)
    start, end = time_window(since, until, days)
    role, task_type, complexity, new_id, old_id, experiment_id = resolve_arms(
        store, role, task_type, complexity, new_id, old_id, experiment_id
    )
    (new, r_new), (old, r_old) = summarise_arms(
        store, role, task_type, complexity, new_id, old_id, experiment_id, start, end, last_n
    )
    result = _compare(new, r_new, old, r_old, threshold, alpha, min_runs, sequential)
    out = DriftResult(
        role=role,
        task_type=task_type,
        complexity=complexity,
        experiment_id=experiment_id,
        window=_window(start, end, last_n, experiment_id),
        **result,
    )
    if auto_rollback:
        out.rolled_back, out.rollback = _rollback(store, out, actor, confirm)
    if record:
        insert_drift_check(store, time.time(), role, new_id, old_id, out.decision, dumps(out.model_dump(mode="json")))
    return out


def _check_options(threshold: float, alpha: float, min_runs: int, last_n: int | None) -> None:
    problems = []
    if not 0 < threshold < 1:
        problems.append(f"threshold must be a relative drop between 0 and 1 (0.05 = 5%), got {threshold}.")
    if not 0 < alpha < 0.5:
        problems.append(f"alpha must be between 0 and 0.5, got {alpha}.")
    if min_runs < 2:
        problems.append("min_runs must be at least 2.")
    if last_n is not None and last_n < 2:
        problems.append("last_n must be at least 2.")
    check(problems)


def _window(start: float | None, end: float | None, last_n: int | None, experiment_id: str | None) -> str:
    """Which runs were compared, in words."""
    return (
        ", ".join(
            filter(
                None,
                [
                    f"since {iso(start)}" if start else None,
                    f"until {iso(end)}" if end else None,
                    f"last {last_n} runs per arm" if last_n else None,
                    f"experiment {experiment_id}" if experiment_id else None,
                ],
            )
        )
        or "all runs"
    )


def _compare(
    new: ArmSummary,
    r_new,
    old: ArmSummary,
    r_old,
    threshold: float,
    alpha: float,
    min_runs: int,
    sequential: bool,
) -> dict[str, Any]:
    """Test the two arms' rewards and decide: the DriftResult's fields past the route and window."""
    from learning.routing import drift_stats as st

    v_new = float(r_new.var(ddof=1)) if new.runs > 1 else 0.0
    v_old = float(r_old.var(ddof=1)) if old.runs > 1 else 0.0
    needed = _runs_per_arm_needed(new, old, v_new, v_old, threshold, alpha, min_runs)
    result: dict[str, Any] = dict(
        new=new,
        old=old,
        method="msprt" if sequential else "welch",
        threshold=threshold,
        alpha=alpha,
        min_runs=min_runs,
        runs_per_arm_needed=needed,
        more_runs_needed=max(0, needed - new.runs) + max(0, needed - old.runs),
        difference=None,
        relative_change=None,
        ci_low=None,
        ci_high=None,
        p_value=None,
        rolled_back=False,
        rollback=None,
    )
    if new.runs >= 2 and old.runs >= 2:
        s = st.compare(
            new.runs,
            float(r_new.mean()),
            v_new,
            old.runs,
            float(r_old.mean()),
            v_old,
            threshold=threshold,
            alpha=alpha,
            sequential=sequential,
        )
        p = s["p_drop"] if s["diff"] < 0 else s["p_rise"]
        result.update(
            difference=_num(s["diff"]),
            relative_change=_num(s["rel"]),
            ci_low=_num(s["rel_lo"]),
            ci_high=_num(s["rel_hi"]),
            p_value=_num(p),
        )
        code = int(s["code"])
    if new.runs < min_runs or old.runs < min_runs:
        decision = "insufficient_data"
    else:
        decision = st.DECISIONS[code]
    result.update(decision=decision, message=_message(decision, new, old, result))
    return result


def _runs_per_arm_needed(
    new: ArmSummary, old: ArmSummary, v_new: float, v_old: float, threshold: float, alpha: float, min_runs: int
) -> int:
    """Runs per arm for 80% power (at least min_runs)."""
    from learning.routing import drift_stats as st

    m_old = old.mean_reward if old.mean_reward is not None else (new.mean_reward or 0.5)  # None: no runs
    # An arm with fewer than 2 runs borrows the other's variance, else the Bernoulli worst case.
    fallback = m_old * (1 - m_old) if m_old < 1 else 0.25
    e_new = v_new if new.runs > 1 else (v_old if old.runs > 1 else fallback)
    e_old = v_old if old.runs > 1 else (v_new if new.runs > 1 else fallback)
    return max(min_runs, st.runs_per_arm_needed(e_new, e_old, m_old, threshold, alpha))


def drift_consent(store: Store, auto_rollback: bool = False) -> str | None:
    """What a person must agree to before detect_drift (None: it only checks)."""
    if not auto_rollback:
        return None
    return "auto_rollback: on a regression, the route's previous production adapter goes back to production."


def _label(arm: ArmSummary) -> str:
    return arm.adapter_id or "the base model"


def _message(decision: str, new: ArmSummary, old: ArmSummary, r: dict) -> str:
    if decision == "insufficient_data":
        return (
            f"Not enough runs to decide: {new.runs} for {_label(new)}, {old.runs} for {_label(old)}; "
            f"{r['more_runs_needed']} more needed (at least {r['min_runs']} per arm, {r['runs_per_arm_needed']} "
            "for 80% power). Nothing was rolled back."
        )
    change = f"{r['relative_change']:+.1%}" if r["relative_change"] is not None else f"{r['difference']:+.3f}"
    ci = f" (95% CI {r['ci_low']:+.1%} to {r['ci_high']:+.1%})" if r["ci_low"] is not None else ""
    what = {
        "regression": "earns less than",
        "improvement": "earns more than",
        "no_change": "shows no significant change against",
    }[decision]
    return f"{_label(new)} {what} {_label(old)}: mean reward {change}{ci}, p = {r['p_value']:.3g}."


def _rollback(store: Store, out: DriftResult, actor: str, confirm: bool) -> tuple[bool, str]:
    """Undo a regression: restore the adapter it replaced, or fall back to the base model."""
    if out.decision != "regression":
        return False, f"No rollback: the decision is {out.decision}, not regression."
    route = (out.role, out.task_type, out.complexity)
    with store.read() as conn:
        current = production_for_route(conn, *route)
        previous = previous_production_row(conn, *route)
    if current is None or current["id"] != out.new.adapter_id:
        return False, f"No rollback: {out.new.adapter_id} is not the production adapter of its route any more."
    assert out.new.adapter_id is not None  # it is the production adapter's id
    reason = f"drift: {out.message}"
    if out.old.adapter_id is None and previous is None:
        registry.move(store, out.new.adapter_id, "archived", actor, reason)
        return True, f"Archived {out.new.adapter_id}; the route falls back to the next route or the base model."
    if previous is None or previous["id"] != out.old.adapter_id:
        return False, (
            f"No rollback: a rollback would restore {previous['id'] if previous is not None else 'nothing'}, "
            f"not {_label(out.old)} that this check compared against."
        )
    from learning.routing.lifecycle import rollback  # redeploys the route's runtime, if one is configured

    done = rollback(store, *route, reason=reason, actor=actor, confirm=confirm)
    return True, (
        f"Rolled back: {done.restored.adapter_id} is in production again"
        + (f", {done.archived.adapter_id} archived." if done.archived else ".")
    )


def latest_drift(store: Store, role: str) -> DriftResult | None:
    row = latest_drift_check(store, role)
    return DriftResult.model_validate(loads(row["result"])) if row is not None else None


class DriftCheck(NamedTuple):
    """One recorded check: when it ran (Unix time) and what it found."""

    ts: float
    result: DriftResult


def drift_history(store: Store, role: str, limit: int = 200) -> list[DriftCheck]:
    """A role's recorded checks, oldest first: the last `limit` of them. Only reads; a row that no
    longer reads as a DriftResult (edited by hand) is left out rather than failing the history."""
    with store.read() as conn:
        rows = conn.execute(
            "SELECT ts, result FROM drift_checks WHERE role = ? ORDER BY id DESC LIMIT ?", (role, limit)
        ).fetchall()
    checks = []
    for r in reversed(rows):
        try:
            checks.append(DriftCheck(r["ts"], DriftResult.model_validate(loads(r["result"]))))
        except ValueError:  # pydantic's ValidationError and json's JSONDecodeError are ValueErrors
            continue
    return checks


# ---- SQL: the drift_checks table ---------------------------------------------------------------


def insert_drift_check(
    store: Store, ts: float, role: str | None, new_id: str | None, old_id: str | None, decision: str, result: str
) -> None:
    with store.write() as conn:
        conn.execute(
            "INSERT INTO drift_checks (ts, role, new_id, old_id, decision, result) VALUES (?, ?, ?, ?, ?, ?)",
            (ts, role, new_id, old_id, decision, result),
        )


def latest_drift_check(store: Store, role: str) -> sqlite3.Row | None:
    with store.read() as conn:
        return conn.execute("SELECT * FROM drift_checks WHERE role = ? ORDER BY id DESC LIMIT 1", (role,)).fetchone()
