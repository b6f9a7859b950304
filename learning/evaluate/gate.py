"""The gate that makes an evaluated adapter a candidate: its conditions (GateConfig), each checked
against the adapter's and the base's metrics with the numbers and the shortfall, and the reason
recorded with the evaluation."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class GateConfig(BaseModel):
    """When an evaluated adapter becomes a candidate. Every condition must hold."""

    min_loss_improvement: float = Field(
        default=0.0,
        ge=0,
        description="The adapter's eval loss must be below the base's by more than this (0: strictly lower).",
    )
    pass_rate_tolerance: float = Field(
        default=0.0,
        ge=0,
        le=1,
        description="The adapter's pass rate may be at most this much below the base's (0: not below).",
    )
    min_pass_rate: float | None = Field(
        default=None,
        ge=0,
        le=1,
        description="Absolute pass rate the adapter must reach; None: no threshold (0.9 is a common choice).",
    )
    promote_to_candidate: bool = Field(default=True, description="Move trained -> candidate when the gate passes.")


def apply_gate(adapter: dict[str, Any], base: dict[str, Any], gate: GateConfig) -> dict[str, Any]:
    """Each condition with the numbers, whether it held, and by how much it missed."""
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
    a_pass, b_pass = adapter.get("pass_rate"), base.get("pass_rate")
    if a_pass is None or b_pass is None:
        conditions.append(
            {
                "name": "pass_rate_not_below_base",
                "passed": True,
                "adapter": a_pass,
                "base": b_pass,
                "skipped": "no generation checks for this role or no prompts checked",
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
                "shortfall": None if ok else (b_pass - gate.pass_rate_tolerance) - a_pass,
            }
        )
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
    if gate["passed"]:
        return "gate passed: " + "; ".join(
            f"{c['name']} adapter {_fmt(c.get('adapter'))} vs {_fmt(c.get('base', c.get('threshold')))}"
            for c in gate["conditions"]
        )
    return "gate failed: " + "; ".join(
        f"{c['name']} short by {_fmt(c.get('shortfall'))} (adapter {_fmt(c.get('adapter'))}, "
        f"needed {_fmt(c.get('required_below', c.get('threshold', c.get('base'))))})"
        for c in gate["conditions"]
        if not c["passed"]
    )


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
