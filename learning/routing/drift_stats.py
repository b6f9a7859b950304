"""The statistics behind detect_drift, vectorised with numpy so that simulations
(tests/support/drift_simulation.py) run thousands of repetitions at once.

Every function takes per-arm summaries (count n, mean m, sample variance v with ddof=1)
as numbers or numpy arrays of any one shape, "new" first, "old" (the baseline) second.

Fixed horizon (one look at the data):
  Welch's t statistic for the difference of means d = m_new - m_old, with Welch-Satterthwaite
  degrees of freedom. One-sided p-values: p_drop for H0 "new >= old" against "new < old",
  p_rise for the mirror. The relative change r = m_new / m_old - 1 gets a delta-method
  confidence interval (Welch degrees of freedom).

Sequential (any number of looks, e.g. after every 20 new runs, with no inflation):
  a one-sided mixture sequential probability ratio test (mSPRT, Robbins 1970; Johari et al.
  2017) on the difference of means. With V = v_new/n_new + v_old/n_old, the likelihood ratio
  of a difference theta against 0 is exp((theta*d - theta^2/2) / V) (normal approximation);
  mixing theta over a normal N(0, tau^2) restricted to theta < 0 (density doubled) gives
      L_drop = 2 sqrt(V/(V+tau^2)) exp(d^2 tau^2 / (2V(V+tau^2))) Phi(-d tau / sqrt(V(V+tau^2))).
  Under "no drop" L_drop is a non-negative (super)martingale, so by Ville's inequality
  P(L_drop ever >= 1/alpha) <= alpha however often one looks: the always-valid p-value is
  1/max L. tau is the drop one hopes to detect: 2 x threshold x m_old.

Decision (both modes): regression when the test rejects "no drop" at alpha AND the point
estimate of the relative change is a drop of at least `threshold`; improvement mirrors it;
otherwise no change. The extra condition only removes alarms, so the false-alarm rate under
no true change stays <= alpha; it keeps statistically clear but tiny drops from rolling back.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.special import ndtr, ndtri, stdtr, stdtrit

POWER = 0.8
NO_CHANGE, REGRESSION, IMPROVEMENT = 0, 1, 2
DECISIONS = ("no_change", "regression", "improvement")


def welch(n_new, m_new, v_new, n_old, m_old, v_old) -> dict:
    """Difference of means, its standard error, Welch df, t and the one-sided p-values."""
    n_new, m_new, v_new, n_old, m_old, v_old = map(np.asarray, (n_new, m_new, v_new, n_old, m_old, v_old))
    a, b = v_new / n_new, v_old / n_old
    se2 = a + b
    with np.errstate(divide="ignore", invalid="ignore"):
        df = se2**2 / (a**2 / np.maximum(n_new - 1, 1) + b**2 / np.maximum(n_old - 1, 1))
        df = np.where(np.isfinite(df), df, n_new + n_old - 2.0)
        diff = m_new - m_old
        t = np.where(se2 > 0, diff / np.sqrt(se2), np.sign(diff) * np.inf)
    p_drop = stdtr(df, t)
    p_rise = stdtr(df, -t)
    # All rewards equal in both arms: no evidence either way.
    p_drop = np.where((se2 == 0) & (diff == 0), 1.0, p_drop)
    p_rise = np.where((se2 == 0) & (diff == 0), 1.0, p_rise)
    return {"diff": diff, "se": np.sqrt(se2), "df": df, "t": t, "p_drop": p_drop, "p_rise": p_rise}


def relative_ci(n_new, m_new, v_new, n_old, m_old, v_old, df, level: float = 0.95):
    """Relative change m_new/m_old - 1 and its delta-method interval (nan when m_old is 0)."""
    m_old = np.asarray(m_old, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.asarray(m_new) / m_old
        se = np.sqrt(np.asarray(v_new) / n_new + ratio**2 * np.asarray(v_old) / n_old) / m_old
        q = stdtrit(df, 0.5 + level / 2)
        rel = np.where(m_old > 0, ratio - 1, np.nan)
        return rel, np.where(m_old > 0, rel - q * se, np.nan), np.where(m_old > 0, rel + q * se, np.nan)


def msprt(diff, se, tau) -> tuple[np.ndarray, np.ndarray]:
    """log L_drop and log L_rise of the one-sided normal-mixture SPRT (see module doc)."""
    V = np.asarray(se, dtype=float) ** 2
    tau2 = np.asarray(tau, dtype=float) ** 2
    with np.errstate(divide="ignore", invalid="ignore"):
        base = 0.5 * np.log(V / (V + tau2)) + diff**2 * tau2 / (2 * V * (V + tau2))
        z = diff * np.sqrt(tau2) / np.sqrt(V * (V + tau2))
        log_drop = math.log(2) + base + np.log(np.maximum(ndtr(-z), 1e-300))
        log_rise = math.log(2) + base + np.log(np.maximum(ndtr(z), 1e-300))
    # Zero variance: no information unless the means differ, then certainty.
    log_drop = np.where(V > 0, log_drop, np.where(diff < 0, np.inf, -np.inf))
    log_rise = np.where(V > 0, log_rise, np.where(diff > 0, np.inf, -np.inf))
    return log_drop, log_rise


def compare(
    n_new,
    m_new,
    v_new,
    n_old,
    m_old,
    v_old,
    threshold: float = 0.05,
    alpha: float = 0.05,
    sequential: bool = False,
    level: float = 0.95,
) -> dict:
    """All the statistics and the decision code (NO_CHANGE / REGRESSION / IMPROVEMENT)."""
    w = welch(n_new, m_new, v_new, n_old, m_old, v_old)
    rel, lo, hi = relative_ci(n_new, m_new, v_new, n_old, m_old, v_old, w["df"], level)
    out = {**w, "rel": rel, "rel_lo": lo, "rel_hi": hi}
    if sequential:
        tau = np.maximum(2 * threshold * np.asarray(m_old, dtype=float), 0.01)
        log_drop, log_rise = msprt(w["diff"], w["se"], tau)
        out["p_drop"] = np.minimum(1.0, np.exp(-log_drop))
        out["p_rise"] = np.minimum(1.0, np.exp(-log_rise))
    rel_f = np.nan_to_num(rel, nan=0.0)
    drop = (out["p_drop"] < alpha) & (rel_f <= -threshold)
    rise = (out["p_rise"] < alpha) & ((rel_f >= threshold) | (np.isnan(rel) & (w["diff"] > 0)))
    out["code"] = np.where(drop, REGRESSION, np.where(rise, IMPROVEMENT, NO_CHANGE))
    return out


def runs_per_arm_needed(
    var_new: float, var_old: float, m_old: float, threshold: float = 0.05, alpha: float = 0.05, power: float = POWER
) -> int:
    """Runs per arm at which a true relative drop of 2 x threshold is declared a regression
    (fixed horizon) with the given power. The rule fires when the estimated drop exceeds
    both z_(1-alpha) standard errors and the threshold, so with effect e = 2*threshold*m_old
    and per-run variance s2 = var_new + var_old: n = s2 * max(((z_a+z_b)/e)^2, (z_b/(e-t))^2)."""
    s2 = var_new + var_old
    if not s2 > 0:
        s2 = 2 * 0.25  # nothing known yet: the Bernoulli worst case
    m = m_old if m_old and m_old > 0 else 0.5
    effect, thr = 2 * threshold * m, threshold * m
    za, zb = float(ndtri(1 - alpha)), float(ndtri(power))
    return int(math.ceil(s2 * max(((za + zb) / effect) ** 2, (zb / (effect - thr)) ** 2)))
