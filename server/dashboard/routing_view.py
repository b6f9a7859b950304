"""What the Routing page shows: production routes, experiments, and for each running experiment
its arms (Thompson: each arm's Beta posterior; canary: the traffic split) with the verdict
detect_drift would give on its traffic; then each role's recorded drift checks over time.

Nothing here writes: the verdict is detect_drift with record=False (and no rollback). numpy
and scipy load with the first running experiment shown."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from markupsafe import Markup

from learning.clock import iso
from learning.registry.adapters import list_adapters
from learning.registry.queries import known_roles
from learning.routing.drift import DriftCheck, DriftResult, detect_drift, drift_history
from learning.routing.experiments import Experiment, list_experiments
from learning.routing.router import experiment_arm_rewards
from learning.store import Store
from server.dashboard.charts import line_chart

# P(best) is a Monte Carlo estimate: this many joint draws of the arms' posteriors from a
# generator with a fixed seed, so the page shows the same figure for the same data (its
# standard error is at most 0.5 / sqrt(20,000) = 0.0035).
POSTERIOR_DRAWS = 20_000
POSTERIOR_SEED = 20_261_130
CREDIBLE = 0.95
HISTORY_ROWS = 10
HISTORY_LIMIT = 200


@dataclass(frozen=True)
class ArmPosterior:
    """One Thompson arm: its attributed scored runs and Beta(alpha, beta) posterior."""

    arm: str
    adapter_id: str | None
    runs: int
    reward_sum: float
    alpha: float
    beta: float
    mean: float
    low: float
    high: float
    p_best: float


@dataclass(frozen=True)
class ExperimentPanel:
    """A running experiment: its arms as its mode sees them, and its canary verdict."""

    experiment: Experiment
    posteriors: list[ArmPosterior]
    verdict: DriftResult


@dataclass(frozen=True)
class RoleHistory:
    """A role's recorded drift checks: the relative change chart and the latest checks."""

    chart: Markup
    checks: list[DriftCheck]


def arm_sums(store: Store, experiment_id: str) -> dict[str, tuple[int, float]]:
    """Each arm's (runs, reward sum), read by the router's own query and keyed as the router
    keeps them for thompson_arm."""
    with store.read() as conn:
        rows = experiment_arm_rewards(conn, experiment_id)
    return {r["arm"]: (int(r["runs"]), float(r["reward_sum"])) for r in rows}


def p_best(params: list[tuple[float, float]], draws: int = POSTERIOR_DRAWS, seed: int = POSTERIOR_SEED) -> list[float]:
    """For Beta(alpha, beta) arms, the share of seeded joint draws in which each arm is highest."""
    import numpy as np

    rng = np.random.default_rng(seed)
    samples = np.column_stack([rng.beta(a, b, size=draws) for a, b in params])
    wins = np.bincount(samples.argmax(axis=1), minlength=len(params))
    return [float(w) / draws for w in wins]


def arm_posteriors(store: Store, experiment: Experiment) -> list[ArmPosterior]:
    """Each arm's posterior as thompson_arm draws from it: Beta(1 + sum r, 1 + sum (1 - r)),
    its mean, equal-tailed 95% credible interval (exact, from the inverse incomplete beta
    function) and P(best)."""
    from scipy.special import betaincinv

    sums = arm_sums(store, experiment.id)
    params = []
    for arm in experiment.arms:
        n, s = sums.get(arm.arm, (0, 0.0))
        params.append((1.0 + s, 1.0 + n - s))
    tail = (1 - CREDIBLE) / 2
    return [
        ArmPosterior(
            arm=arm.arm,
            adapter_id=arm.adapter_id,
            runs=sums.get(arm.arm, (0, 0.0))[0],
            reward_sum=sums.get(arm.arm, (0, 0.0))[1],
            alpha=a,
            beta=b,
            mean=a / (a + b),
            low=float(betaincinv(a, b, tail)),
            high=float(betaincinv(a, b, 1 - tail)),
            p_best=best,
        )
        for arm, (a, b), best in zip(experiment.arms, params, p_best(params))
    ]


def experiment_panel(store: Store, experiment: Experiment) -> ExperimentPanel:
    """A running experiment's arms and the verdict detect_drift(experiment_id=...) would give."""
    posteriors = arm_posteriors(store, experiment) if experiment.mode == "thompson" else []
    return ExperimentPanel(experiment, posteriors, detect_drift(store, experiment_id=experiment.id, record=False))


def _time_text(ts: float) -> str:
    return iso(ts).replace("T", " ").removesuffix("Z")


def role_history(store: Store, role: str) -> RoleHistory | None:
    """The role's checks over time: relative change with its 95% interval (checks without one,
    e.g. insufficient data, are left out of the chart), and the latest checks, newest first."""
    checks = drift_history(store, role, limit=HISTORY_LIMIT)
    if not checks:
        return None
    series: dict[str, list[tuple[float, float]]] = {"change": [], "95% low": [], "95% high": []}
    for ts, r in checks:
        for name, value in zip(series, (r.relative_change, r.ci_low, r.ci_high)):
            if value is not None:
                series[name].append((ts, value))
    title = f"Relative change in mean reward, new against old, with its 95% interval: {role}"
    chart = line_chart(series, title, x_text=_time_text)
    return RoleHistory(chart, checks[::-1][:HISTORY_ROWS])


def routing_page(store: Store) -> dict[str, Any]:
    production = list_adapters(store, status="production")
    roles = sorted(set(known_roles(store)) | {a.role for a in production})
    experiments = list_experiments(store)
    histories = {role: role_history(store, role) for role in roles}
    return {
        "production": production,
        "experiments": experiments,
        "running": [experiment_panel(store, e) for e in experiments if e.status == "running"],
        "drift": {role: h.checks[0].result if h is not None else None for role, h in histories.items()},
        "history": {role: h for role, h in histories.items() if h is not None},
        "time_text": _time_text,
    }
