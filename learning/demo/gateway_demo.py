"""`learnloop demo --gateway`: the loop closed through the gateway, for an agent that only speaks HTTP.

The agent is a plain OpenAI-API client (httpx). It sends coding tasks (learning/evaluate/codeenv.py)
to `POST /v1/completions` with model `learnloop/coder`, the task's hidden tests in `metadata.tests`,
and never calls an MCP tool or the library. The gateway, the in-process backend on the embedded
base served on a free loopback port, routes each request, answers it, records it as a run and
scores the answer in the sandbox. Between two rounds of held-out traffic the demo stands in for
the person who runs learnloop: it curates the runs the gateway recorded, trains, evaluates and
promotes; the same gateway, never restarted, then serves the adapter.

Stages (each timed, each reported through `report(stage, message, done, total)`):
  base      build or reuse the embedded base model
  gateway   start the gateway in this process (in-process backend, loopback, a free port)
  before    held-out tasks through the gateway, greedy: routed to the base; pass rate in traffic
  traffic   training tasks through the gateway, `samples` answers each at `temperature`
  curate    make_sft from the runs the gateway recorded and scored, the prompt as sent; only
            reward 1.0 (rejection sampling: the answers that passed every test)
  train     train_adapter on that dataset (a job in its own process)
  evaluate  evaluate_adapter: its gate runs the tests the gateway attached to each run
  promote   the candidate to production (the demo confirms); --quick forces it when the gate,
            on a run that small, did not pass, and says so
  after     the same held-out tasks through the same gateway: now the adapter answers

Pass rates are the share of held-out requests whose recorded reward (from the gateway's own
scoring) is 1.0.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import httpx
from pydantic import BaseModel, Field

from learning.data.curate import make_sft
from learning.demo.demo import DemoConfig, stage_base, stage_evaluate, stage_train
from learning.demo.homes import demo_home
from learning.demo.summary import verdict
from learning.evaluate import codeenv
from learning.gateway.app import build_app, serve_in_thread
from learning.gateway.inprocess import InProcess
from learning.gateway.recording import AGENT
from learning.loop.stages import Stage, run_stages
from learning.registry.adapters import get_adapter
from learning.routing.lifecycle import promote
from learning.runs.record import get_run, row_to_run, run_row
from learning.store import Store

Report = Callable[..., None]
MODEL = "learnloop/coder"
SCORING_WAIT_S = 900.0


class GatewayDemoConfig(DemoConfig):
    train_tasks: int = Field(default=250, description="Training tasks the agent sends through the gateway.")
    samples: int = Field(default=3, description="Answers asked for each training task.")
    temperature: float = Field(default=0.5, description="Sampling temperature of the training traffic.")
    heldout_tasks: int = Field(default=100, description="Held-out tasks sent before and after the promotion.")
    max_per_task: int = Field(default=2, description="Curation: distinct passing answers kept per task.")
    min_rows: int = Field(default=10, description="Curation: fewest rows a dataset may have.")
    force_promote: bool = Field(default=False, description="Promote even when the gate did not pass (--quick).")


# The tiny base passes almost nothing: --quick checks the plumbing, not the learning, so its
# dataset keeps every scored answer and its adapter is promoted whatever the gate says.
QUICK = GatewayDemoConfig(
    base_size="tiny",
    train_tasks=20,
    samples=2,
    heldout_tasks=8,
    min_reward=0.0,
    min_rows=2,
    max_steps=8,
    max_new_tokens=24,
    eval_examples=16,
    eval_generate=4,
    force_promote=True,
)


class GatewayDemoSummary(BaseModel):
    home: str
    quick: bool
    gateway_url: str | None = None
    base_model: str | None = None
    heldout_tasks: int = 0
    base_pass_rate: float | None = Field(default=None, description="Held-out requests before: reward 1.0 (base).")
    adapter_pass_rate: float | None = Field(default=None, description="The same requests after the promotion.")
    margin: float | None = None
    base_mean_reward: float | None = None
    adapter_mean_reward: float | None = None
    served_by_adapter: int = Field(default=0, description="Requests after the promotion that the adapter answered.")
    traffic_requests: int = 0
    traffic_pass_rate: float | None = Field(default=None, description="Training requests whose answer passed.")
    requests: int = Field(default=0, description="Every request the agent sent to the gateway.")
    runs_recorded: int = Field(default=0, description="Runs the gateway recorded for them.")
    scored_by_gateway: int = Field(default=0, description="Of those, scored by the gateway's sandbox.")
    dataset_id: str | None = None
    dataset_rows: int = 0
    adapter_id: str | None = None
    gate_passed: bool | None = None
    adapter_status: str | None = None
    forced_promotion: bool = False
    adapter_beat_base: bool = False
    verdict: str = ""
    seconds: dict[str, float] = Field(default_factory=dict)
    total_seconds: float = 0.0
    summary_path: str | None = None
    stages: list[Stage] = Field(default_factory=list)


# ---- the agent: HTTP only ------------------------------------------------------------------------


def send(client: httpx.Client, task: codeenv.Task, cfg: GatewayDemoConfig, temperature: float) -> tuple[int, str]:
    """One task as an OpenAI completion request; (the run id, the adapter that answered)."""
    body = {
        "model": MODEL,
        "prompt": codeenv.prompt(task),
        "max_tokens": cfg.max_new_tokens,
        "temperature": temperature,
        "stop": list(codeenv.stop_for(task)),
        "metadata": {"tests": list(task.tests), "task_type": task.family, "task_key": task.key},
    }
    response = client.post("/v1/completions", json=body)
    response.raise_for_status()
    return int(response.headers["x-learnloop-run-id"]), response.headers["x-learnloop-adapter"]


def send_all(
    url: str, tasks: list[codeenv.Task], cfg: GatewayDemoConfig, temperature: float, stage: str, report: Report
) -> list[tuple[int, str]]:
    out = []
    with httpx.Client(base_url=url, timeout=600.0) as client:
        for i, task in enumerate(tasks):
            out.append(send(client, task, cfg, temperature))
            report(stage, f"{i + 1}/{len(tasks)} requests to {MODEL}", i + 1, len(tasks))
    return out


# ---- what the gateway recorded ------------------------------------------------------------------


def scored_rewards(store: Store, run_ids: list[int], stage: str, report: Report) -> list[float]:
    """The rewards the gateway's scoring recorded for these runs, waiting for the last ones."""
    deadline = time.monotonic() + SCORING_WAIT_S
    rewards: dict[int, float] = {}
    while len(rewards) < len(run_ids):
        for run_id in run_ids:
            if run_id not in rewards and (reward := get_run(store, run_id).reward) is not None:
                rewards[run_id] = reward
        if len(rewards) < len(run_ids):
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"{len(run_ids) - len(rewards)} answers were never scored: the gateway could not run the "
                    "sandbox (see the messages above; LEARNLOOP_SANDBOX selects it)."
                )
            report(stage, f"the gateway scored {len(rewards)}/{len(run_ids)} answers", len(rewards), len(run_ids))
            time.sleep(0.2)
    return [rewards[i] for i in run_ids]


def rates(rewards: list[float]) -> dict[str, float]:
    n = len(rewards) or 1
    return {"pass_rate": round(sum(r == 1.0 for r in rewards) / n, 4), "mean_reward": round(sum(rewards) / n, 4)}


# ---- stages ------------------------------------------------------------------------------------


def stage_gateway(store: Store, cfg: GatewayDemoConfig, state: dict, report: Report) -> dict:
    report("gateway", "starting the gateway (in-process backend) on loopback")
    app = build_app(store, InProcess(state["base"]))
    state["url"] = state["stack"].enter_context(serve_in_thread(app))
    return {"url": state["url"], "backend": "inprocess", "base": state["base"]}


def heldout(store: Store, cfg: GatewayDemoConfig, state: dict, report: Report, stage: str) -> dict:
    """The held-out tasks through the gateway, greedy, each scored by the gateway."""
    tasks = codeenv.make_tasks(cfg.heldout_tasks, "heldout", "coder", seed=cfg.seed + 1)
    sent = send_all(state["url"], tasks, cfg, 0.0, stage, report)
    rewards = scored_rewards(store, [run_id for run_id, _ in sent], stage, report)
    state["requests"] = state.get("requests", 0) + len(sent)
    state.setdefault("run_ids", []).extend(run_id for run_id, _ in sent)
    state[stage] = {**rates(rewards), "n": len(tasks), "served_by": sorted({adapter for _, adapter in sent})}
    state[stage]["served_by_adapter"] = sum(adapter == state.get("adapter_id") for _, adapter in sent)
    return state[stage]


def stage_traffic(store: Store, cfg: GatewayDemoConfig, state: dict, report: Report) -> dict:
    import torch

    torch.manual_seed(cfg.seed)  # the gateway samples in this process: the same answers each run
    state["traffic_started"] = time.time()
    tasks = codeenv.make_tasks(cfg.train_tasks, "train", "coder", seed=cfg.seed)
    repeated = [task for task in tasks for _ in range(cfg.samples)]
    sent = send_all(state["url"], repeated, cfg, cfg.temperature, "traffic", report)
    rewards = scored_rewards(store, [run_id for run_id, _ in sent], "traffic", report)
    state["requests"] = state.get("requests", 0) + len(sent)
    state.setdefault("run_ids", []).extend(run_id for run_id, _ in sent)
    solved = {t.key for t, r in zip(repeated, rewards) if r == 1.0}
    state["traffic"] = {**rates(rewards), "requests": len(sent), "tasks": len(tasks), "tasks_solved": len(solved)}
    return state["traffic"]


def stage_curate(store: Store, cfg: GatewayDemoConfig, state: dict, report: Report) -> dict:
    report("curate", f"make_sft from the gateway's runs (min reward {cfg.min_reward})")
    made = make_sft(
        store,
        role="coder",
        min_reward=cfg.min_reward,
        agent=AGENT,
        since=state["traffic_started"],  # the training traffic only: the held-out requests came before
        template="{instruction}",  # a completion's run holds the prompt as sent: train on exactly that
        max_per_task=cfg.max_per_task,
        min_rows=cfg.min_rows,
        seed=cfg.seed,
    )
    state["datasets"] = {"coder": made.dataset_id}
    state["dataset_rows"] = made.train_rows + made.test_rows
    return {
        "dataset_id": made.dataset_id,
        "train": made.train_rows,
        "test": made.test_rows,
        "mean_reward": made.mean_reward,
        "template": "{instruction}",
    }


def stage_promote(store: Store, cfg: GatewayDemoConfig, state: dict, report: Report) -> dict:
    adapter = get_adapter(store, state["adapter_id"])
    gate = adapter.status == "candidate"
    if not gate and not cfg.force_promote:
        return {"promoted": False, "status": adapter.status, "reason": "the gate did not pass: the base keeps serving"}
    # The demo stands in for the person who confirms a promotion to production.
    reason = "learnloop demo --gateway: gate passed" if gate else "learnloop demo --gateway --quick: forced"
    done = promote(store, adapter.id, "production", force=not gate, reason=reason, actor="learnloop-demo", confirm=True)
    state["forced"] = not gate
    return {"promoted": True, "status": done.to_status, "forced": not gate}


STAGES: list[tuple[str, Callable]] = [
    ("base", stage_base),
    ("gateway", stage_gateway),
    ("before", partial(heldout, stage="before")),
    ("traffic", stage_traffic),
    ("curate", stage_curate),
    ("train", stage_train),
    ("evaluate", stage_evaluate),
    ("promote", stage_promote),
    ("after", partial(heldout, stage="after")),
]


def run_gateway_demo(
    home: str | Path | None = None,
    quick: bool = False,
    config: GatewayDemoConfig | None = None,
    report: Report | None = None,
    allow_production_home: bool = False,
) -> GatewayDemoSummary:
    """Run every stage in order; the first that fails ends the run (the summary says which).

    The home: `demo_home` (learning/demo/homes.py): a folder of the demo's own without `home`."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # tiny models: one thread is as fast, and reproducible
    cfg = config or (QUICK if quick else GatewayDemoConfig())
    report = report or (lambda *a, **k: None)
    store = Store(demo_home(home, gateway=True, allow_production_home=allow_production_home))
    state: dict[str, Any] = {"started_at": time.time(), "stack": contextlib.ExitStack()}
    stages: list[Stage] = []

    def on_event(name: str, status: str) -> None:
        report(name, status, final=status != "starting")

    with state["stack"]:  # leaving it stops the gateway: its last runs and scores are written
        run_stages(
            ((name, partial(fn, store, cfg, state, report)) for name, fn in STAGES),
            stages,
            error_text=lambda exc: f"{type(exc).__name__}: {exc}",
            on_event=on_event,
        )
    summary = gateway_summary(store, cfg, state, stages, quick)
    summary.summary_path = str(store.home / "gateway_demo.json")
    Path(summary.summary_path).write_text(summary.model_dump_json(indent=2))
    store.close()
    return summary


def gateway_summary(
    store: Store, cfg: GatewayDemoConfig, state: dict, stages: list[Stage], quick: bool
) -> GatewayDemoSummary:
    before, after, traffic = state.get("before") or {}, state.get("after") or {}, state.get("traffic") or {}
    runs = [run_row(store, run_id) for run_id in state.get("run_ids", [])]
    runs = [row_to_run(row) for row in runs if row is not None]
    adapter = get_adapter(store, state["adapter_id"]) if state.get("adapter_id") else None
    s = GatewayDemoSummary(
        home=str(store.home),
        quick=quick,
        gateway_url=state.get("url"),
        base_model=state.get("base"),
        heldout_tasks=cfg.heldout_tasks,
        base_pass_rate=before.get("pass_rate"),
        adapter_pass_rate=after.get("pass_rate"),
        base_mean_reward=before.get("mean_reward"),
        adapter_mean_reward=after.get("mean_reward"),
        served_by_adapter=after.get("served_by_adapter", 0),
        traffic_requests=traffic.get("requests", 0),
        traffic_pass_rate=traffic.get("pass_rate"),
        requests=state.get("requests", 0),
        runs_recorded=len(runs),
        scored_by_gateway=sum(r.signals.get("scored_by") == "gateway" for r in runs),
        dataset_id=(state.get("datasets") or {}).get("coder"),
        dataset_rows=state.get("dataset_rows", 0),
        adapter_id=state.get("adapter_id"),
        gate_passed=(state.get("eval") or {}).get("gate_passed"),
        adapter_status=adapter.status if adapter else None,
        forced_promotion=state.get("forced", False),
        seconds={st.name: st.seconds for st in stages},
        total_seconds=round(sum(st.seconds for st in stages), 2),
        stages=stages,
    )
    if s.base_pass_rate is not None and s.adapter_pass_rate is not None:
        s.margin = round(s.adapter_pass_rate - s.base_pass_rate, 4)
    s.adapter_beat_base, s.verdict = verdict(s.base_pass_rate, s.adapter_pass_rate, cfg.heldout_tasks)
    return s
