"""The demo's last stages: held-out tasks routed by select_adapter and answered by the base, the
SFT adapter and the final adapter; then drift."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from learning.demo.answers import AGENT, Report, answer_and_score, rates
from learning.evaluate import codeenv
from learning.models.generate import load_model, without_adapter
from learning.registry.adapters import get_adapter
from learning.routing.drift import detect_drift
from learning.routing.router import select_adapter
from learning.runs.record import log_runs
from learning.store import Store


def _route(store: Store, tasks: list[codeenv.Task], fallback: str | None) -> tuple[list[Any], str | None]:
    """select_adapter for every task; the adapter the route gives (or the trained one when the
    route has no production adapter, so the comparison still happens)."""
    decisions = [select_adapter(store, role="coder", task_type=t.family, task_key=t.key) for t in tasks]
    routed = {d.adapter_id for d in decisions} - {None}
    return decisions, (routed.pop() if len(routed) == 1 else fallback)


def stage_heldout(store: Store, cfg, state: dict, report: Report) -> dict:
    state["heldout_started"] = time.time()
    tasks = codeenv.make_tasks(cfg.heldout_tasks, "heldout", "coder", seed=cfg.seed + 1)
    decisions, adapter_id = _route(store, tasks, state.get("adapter_id"))
    report("heldout", f"{len(tasks)} held-out tasks routed to {adapter_id or 'the base model'}")
    model, tok = load_model(state["base"], get_adapter(store, adapter_id).path if adapter_id else None)
    adapter_answers, adapter_scores = answer_and_score(model, tok, tasks, cfg)
    with without_adapter(model):
        base_answers, base_scores = answer_and_score(model, tok, tasks, cfg)
    sft_id = state.get("sft_adapter_id")
    sft_scores = _sft_answers(store, model, tok, tasks, cfg, sft_id) if sft_id and adapter_id else None
    name = Path(state["base"]).name
    records = [
        codeenv.run_record(
            t,
            a,
            s,
            agent=AGENT,
            model=name,
            adapter_id=adapter_id,
            decision_id=d.decision_id if d.adapter_id == adapter_id else None,
            source="heldout-adapter",
        )
        for t, a, s, d in zip(tasks, adapter_answers, adapter_scores, decisions)
    ]
    records += [
        codeenv.run_record(t, a, s, agent=AGENT, model=name, source="heldout-base")
        for t, a, s in zip(tasks, base_answers, base_scores)
    ]
    if sft_scores is not None:
        records += [
            codeenv.run_record(t, a, s, agent=AGENT, model=name, adapter_id=sft_id, source="heldout-sft")
            for t, (a, s) in zip(tasks, sft_scores)
        ]
    logged = len(log_runs(store, records))
    state["executions"] = state.get("executions", 0) + len(records)
    scores = {"base": base_scores, "adapter": adapter_scores}
    if sft_scores is not None:
        scores["sft"] = [s for _, s in sft_scores]
    fams = {}
    for fam in codeenv.FAMILIES:
        idx = [i for i, t in enumerate(tasks) if t.family == fam]
        fams[fam] = {**{k: rates([v[i] for i in idx])["pass_rate"] for k, v in scores.items()}, "n": len(idx)}
    state["heldout"] = {**{k: rates(v) for k, v in scores.items()}, "by_family": fams}
    samples = [
        {"task": t.instruction, "base": b, "adapter": a}
        for t, b, a in list(zip(tasks, base_answers, adapter_answers))[:3]
    ]
    return {
        "adapter_id": adapter_id,
        "routed_to_adapter": sum(d.adapter_id == adapter_id for d in decisions),
        "runs_logged": logged,
        **state["heldout"],
        "samples": samples,
    }


def _sft_answers(store: Store, model, tok, tasks: list[codeenv.Task], cfg, sft_id: str) -> list[tuple[str, Any]]:
    """The SFT adapter's answers (the one GRPO started from), loaded beside the final adapter."""
    model.load_adapter(get_adapter(store, sft_id).path, adapter_name="sft")
    model.set_adapter("sft")
    try:
        answers, scores = answer_and_score(model, tok, tasks, cfg)
    finally:
        model.set_adapter("default")
    return list(zip(answers, scores))


def stage_drift(store: Store, cfg, state: dict, report: Report) -> dict:
    # Only the held-out runs: the population's reference answers must not count as the base's.
    res = detect_drift(
        store,
        role="coder",
        new_id=state["adapter_id"],
        since=state["heldout_started"],
        min_runs=min(30, cfg.heldout_tasks),
    )
    state["drift"] = res.decision
    return {
        "decision": res.decision,
        "message": res.message,
        "relative_change": res.relative_change,
        "p_value": res.p_value,
    }
