"""The gate that makes an evaluated adapter a candidate: its conditions (GateConfig), each checked
against the adapter's and the base's metrics with the numbers and the shortfall, and the reason
recorded with the evaluation.

When test rows carry tests, the gate decides by execution, task by task: both models answered the
same prompts and each answer passed its row's tests or not, so the comparison is paired. The
difference of pass rates (adapter - base) gets a paired bootstrap interval at `confidence` (10,000
resamples of the rows, seeded: the same outcomes give the same interval) and the exact McNemar test
on the discordant pairs (rows one model passed and the other failed). The adapter passes only if
the interval's lower end is at least -pass_rate_tolerance: not worse beyond the tolerance at that
confidence. Loss alone never passes an adapter whose test rows carry tests: when none of them ran
(max_generate 0), the condition fails.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, Field

RESAMPLES = 10_000


# The gate's conditions, declared once: GateConfig's fields and evaluate_adapter's arguments.
MinLossImprovement = Annotated[
    float,
    Field(
        ge=0,
        description="Gate: the adapter's eval loss must be below the base's by more than this (0: strictly lower).",
    ),
]
PassRateTolerance = Annotated[
    float,
    Field(
        ge=0,
        le=1,
        description="Gate: the adapter's pass rate may be at most this much below the base's (0: not below).",
    ),
]
MinPassRate = Annotated[
    float | None,
    Field(ge=0, le=1, description="Gate: the adapter must also reach this pass rate (e.g. 0.9). Default: none."),
]
Confidence = Annotated[
    float,
    Field(
        ge=0.5,
        lt=1,
        description="Gate: confidence of the paired interval on the pass rate from tests (adapter - base); "
        "its lower end must be at least -pass_rate_tolerance.",
    ),
]


class GateConfig(BaseModel):
    """When an evaluated adapter becomes a candidate. Every condition must hold."""

    min_loss_improvement: MinLossImprovement = 0.0
    pass_rate_tolerance: PassRateTolerance = 0.0
    min_pass_rate: MinPassRate = None
    confidence: Confidence = 0.95
    promote_to_candidate: bool = Field(default=True, description="Move trained -> candidate when the gate passes.")


def paired_comparison(adapter: list[bool], base: list[bool], confidence: float, tolerance: float) -> dict[str, Any]:
    """Adapter vs base on the same tasks (True: every test passed): pass rates, their difference
    with a paired bootstrap interval, the exact McNemar test, and whether the adapter is not worse
    than the base beyond `tolerance` at `confidence` (the interval's lower end >= -tolerance)."""
    import numpy as np
    from scipy.stats import binomtest

    n = len(adapter)
    adapter_only = sum(a and not b for a, b in zip(adapter, base))
    base_only = sum(b and not a for a, b in zip(adapter, base))
    discordant = adapter_only + base_only
    diff = (adapter_only - base_only) / n
    # Each resample draws n rows; only the discordant ones move the difference.
    draws = np.random.default_rng(0).multinomial(
        n, [adapter_only / n, base_only / n, 1 - discordant / n], size=RESAMPLES
    )
    diffs = (draws[:, 0] - draws[:, 1]) / n
    low, high = (float(x) for x in np.quantile(diffs, [(1 - confidence) / 2, (1 + confidence) / 2]))
    return {
        "tasks": n,
        "adapter_passed": sum(adapter),
        "base_passed": sum(base),
        "adapter": sum(adapter) / n,
        "base": sum(base) / n,
        "difference": diff,
        "interval": [low, high],
        "confidence": confidence,
        "method": f"paired bootstrap, {RESAMPLES:,} resamples",
        "mcnemar": {
            "adapter_only": adapter_only,
            "base_only": base_only,
            "p_value": float(binomtest(adapter_only, discordant, 0.5).pvalue) if discordant else 1.0,
            "test": "exact McNemar (binomial on the discordant pairs), two-sided",
        },
        "tolerance": tolerance,
        "not_worse": low >= -tolerance - 1e-12,
    }


def tested_outcomes(metrics: dict[str, Any]) -> list[bool]:
    """The outcome of each row whose tests ran (True: every test passed), in row order."""
    return [bool(c["passed"]) for c in metrics.get("checks") or [] if c.get("tested")]


def _tests_condition(adapter: dict[str, Any], base: dict[str, Any], gate: GateConfig) -> dict[str, Any]:
    a, b = tested_outcomes(adapter), tested_outcomes(base)
    if not a or len(a) != len(b):
        return {
            "name": "tests_not_worse_than_base",
            "passed": False,
            "adapter": None,
            "base": None,
            "shortfall": None,
            "why": "the test rows carry tests but none ran for both models; evaluate with max_generate > 0",
        }
    cmp = paired_comparison(a, b, gate.confidence, gate.pass_rate_tolerance)
    low = cmp["interval"][0]
    return {
        "name": "tests_not_worse_than_base",
        "passed": cmp["not_worse"],
        "adapter": cmp["adapter"],
        "base": cmp["base"],
        "required_above": -gate.pass_rate_tolerance,
        "shortfall": None if cmp["not_worse"] else -gate.pass_rate_tolerance - low,
        "comparison": cmp,
    }


def apply_gate(
    adapter: dict[str, Any], base: dict[str, Any], gate: GateConfig, rows_carry_tests: bool = False
) -> dict[str, Any]:
    """Each condition with the numbers, whether it held, and by how much it missed. With
    rows_carry_tests (or any row tested), the tested rows are compared task by task; the other
    checked rows (compile-only and the like) keep their own pass-rate condition."""
    conditions = []
    a_loss, b_loss = adapter.get("eval_loss"), base.get("eval_loss")
    need = (b_loss - gate.min_loss_improvement) if b_loss is not None else None
    ok = a_loss is not None and need is not None and a_loss < need
    conditions.append(
        {
            "name": "eval_loss_below_base",
            "passed": ok,
            "adapter": a_loss,
            "base": b_loss,
            "required_below": need,
            "shortfall": None if ok or need is None or a_loss is None else a_loss - need,
        }
    )
    tested = rows_carry_tests or bool(tested_outcomes(adapter))
    if tested:
        conditions.append(_tests_condition(adapter, base, gate))
    a_pass, b_pass = adapter.get("pass_rate"), base.get("pass_rate")
    if tested or "pass_rate_checks" in adapter:  # the rows without tests, on their own
        a_pass, b_pass = adapter.get("pass_rate_checks"), base.get("pass_rate_checks")
    if a_pass is None or b_pass is None:
        conditions.append(
            {
                "name": "pass_rate_not_below_base",
                "passed": True,
                "adapter": a_pass,
                "base": b_pass,
                "skipped": "no untested rows checked"
                if tested
                else "no generation checks for this role or no prompts checked",
            }
        )
    else:
        ok = a_pass >= b_pass - gate.pass_rate_tolerance - 1e-12
        conditions.append(
            {
                "name": "pass_rate_not_below_base",
                "passed": ok,
                "adapter": a_pass,
                "base": b_pass,
                "tolerance": gate.pass_rate_tolerance,
                "basis": adapter.get("checks_basis") or "checks",
                "shortfall": None if ok else (b_pass - gate.pass_rate_tolerance) - a_pass,
            }
        )
    a_pass = adapter.get("pass_rate")  # the headline: from tests when any row was tested
    if gate.min_pass_rate is not None:
        ok = a_pass is not None and a_pass >= gate.min_pass_rate
        conditions.append(
            {
                "name": "min_pass_rate",
                "passed": ok,
                "adapter": a_pass,
                "threshold": gate.min_pass_rate,
                "shortfall": None if ok else gate.min_pass_rate - (a_pass or 0.0),
            }
        )
    failed = [c["name"] for c in conditions if not c["passed"]]
    return {"passed": not failed, "failed": failed, "conditions": conditions, "config": gate.model_dump()}


def gate_reason(gate: dict[str, Any]) -> str:
    tests = next((c for c in gate["conditions"] if c.get("comparison")), None)
    reason = _conditions_reason(gate)
    if tests is not None:
        reason += "; " + tested_summary(tests["comparison"])
    return reason


def tested_summary(cmp: dict[str, Any]) -> str:
    """One line for a person: tested pass rates, the interval and the McNemar p-value."""
    low, high = cmp["interval"]
    return (
        f"pass rate from tests {cmp['adapter_passed']}/{cmp['tasks']} (adapter) vs {cmp['base_passed']}/{cmp['tasks']} "
        f"(base), difference {cmp['difference']:+.3f}, {cmp['confidence']:.0%} interval [{low:+.3f}, {high:+.3f}], "
        f"McNemar p = {cmp['mcnemar']['p_value']:.3g}"
    )


def _conditions_reason(gate: dict[str, Any]) -> str:
    if gate["passed"]:
        return "gate passed: " + "; ".join(
            f"{c['name']} adapter {_fmt(c.get('adapter'))} vs {_fmt(c.get('base', c.get('threshold')))}"
            for c in gate["conditions"]
        )
    return "gate failed: " + "; ".join(_failure(c) for c in gate["conditions"] if not c["passed"])


def _failure(c: dict[str, Any]) -> str:
    if "why" in c:
        return f"{c['name']}: {c['why']}"
    if "comparison" in c:
        cmp = c["comparison"]
        return (
            f"{c['name']}: the {cmp['confidence']:.0%} interval on the difference reaches "
            f"{cmp['interval'][0]:+.3f}, below -{cmp['tolerance']:.3g} (the tolerance) by {_fmt(c['shortfall'])}"
        )
    return (
        f"{c['name']} short by {_fmt(c.get('shortfall'))} (adapter {_fmt(c.get('adapter'))}, "
        f"needed {_fmt(c.get('required_below', c.get('threshold', c.get('base'))))})"
    )


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
