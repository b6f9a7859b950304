"""The drift simulator: seeded reward streams for two arms, run through detect_drift's decision
rule (learning.routing.drift_stats.compare) at one or many looks. tests/test_drift.py checks
false-alarm rates and power with it; bench/drift_sim.py prints the full table.
"""

from __future__ import annotations

import numpy as np

from learning.routing.drift_stats import REGRESSION, compare


def summaries(rewards: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Running (n, mean, variance) after each run, along the last axis."""
    rewards = np.asarray(rewards, dtype=float)
    n = np.arange(1, rewards.shape[-1] + 1)
    s1, s2 = np.cumsum(rewards, axis=-1), np.cumsum(rewards**2, axis=-1)
    mean = s1 / n
    with np.errstate(divide="ignore", invalid="ignore"):
        var = np.where(n > 1, (s2 - n * mean**2) / np.maximum(n - 1, 1), 0.0)
    return n, mean, np.maximum(var, 0.0)


def beta_params(mean: float, sd: float) -> tuple[float, float]:
    """Beta(a, b) with the given mean and standard deviation."""
    k = mean * (1 - mean) / sd**2 - 1
    return mean * k, (1 - mean) * k


def simulate(
    rng: np.random.Generator,
    reps: int,
    n: int,
    old_mean: float,
    rel_drop: float,
    kind: str = "beta",
    sd: float = 0.2,
    looks: list[int] | None = None,
    threshold: float = 0.05,
    alpha: float = 0.05,
    sequential: bool = False,
    min_runs: int = 20,
) -> float:
    """Share of repetitions declared a regression: at n runs per arm, or at any of `looks`
    (runs per arm at each look). Rewards are Beta(mean, sd) or Bernoulli(mean)."""
    new_mean = old_mean * (1 - rel_drop)

    def draw(mean: float) -> np.ndarray:
        if kind == "bernoulli":
            return (rng.random((reps, n)) < mean).astype(float)
        return rng.beta(*beta_params(mean, sd), size=(reps, n))

    new, old = draw(new_mean), draw(old_mean)
    idx = np.array(looks if looks else [n]) - 1
    idx = idx[idx + 1 >= min_runs]
    nn, mn, vn = summaries(new)
    no, mo, vo = summaries(old)
    res = compare(
        nn[idx],
        mn[:, idx],
        vn[:, idx],
        no[idx],
        mo[:, idx],
        vo[:, idx],
        threshold=threshold,
        alpha=alpha,
        sequential=sequential,
    )
    return float(np.mean(np.any(res["code"] == REGRESSION, axis=1)))
