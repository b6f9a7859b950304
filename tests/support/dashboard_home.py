"""A home for the dashboard's tests: runs of two roles over three days, a pending run whose text
is hostile markup, an evaluated adapter with a loss curve, a running and a finished job."""

from __future__ import annotations

import json
import time
from datetime import datetime, timezone
from pathlib import Path

from learning.evaluate.evaluation import task_outcomes
from learning.evaluate.gate import GateConfig, apply_gate
from learning.jobs.queries import insert_job, update_job
from learning.registry import adapters as registry
from learning.runs.record import log_run
from learning.runs.rewards import correct_reward
from learning.runs.schema import RewardIn
from learning.store import Store, dumps

HOSTILE_OUTPUT = "<script>alert(1)</script>"
HOSTILE_AGENT = 'x"onmouseover="alert(2)'
HOSTILE_INSTRUCTION = '"onmouseover=alert(3) <img src=x onerror=alert(4)>'
CODER_REWARDS = [0.2, 0.4, 0.9, 0.7, 0.5, 1.0]
FIXER_REWARDS = [0.3, 0.6]
CORRECTED_BY = "carol"
# A GRPO job's progress as its callbacks write it (learning/train/progress.py, grpo.py).
RUNNING_PROGRESS = {
    "step": 3,
    "total_steps": 10,
    "loss": 1.5,
    "eta_s": 42,
    "steps_per_s": 0.25,
    "reward": 0.625,
    "dropped_share": 0.25,
    "loss_curve": [[1, 2.0], [2, 1.75], [3, 1.5]],
    "reward_curve": [[1, 0.25], [2, 0.5], [3, 0.625]],
}
ADAPTER_PASSES = [True] * 18 + [False] * 2
BASE_PASSES = [True] * 9 + [False] * 9 + [True, False]


def _day(d: int) -> datetime:
    return datetime(2026, 11, d, 12, tzinfo=timezone.utc)


def gate_metrics() -> dict:
    """Metrics as the evaluation stores them, from the gate's own functions on per-task outcomes:
    the adapter passes ADAPTER_PASSES of the tested tasks, the base BASE_PASSES."""
    checks = {
        name: [
            {"tested": True, "passed": ok, "tests_passed": int(ok), "tests_total": 1, "sandbox": "bwrap"}
            for ok in passes
        ]
        for name, passes in (("adapter", ADAPTER_PASSES), ("base", BASE_PASSES))
    }
    checks["adapter"][0]["suspicious"] = [HOSTILE_OUTPUT]  # a monitor reason shown as text
    result = {
        "adapter": {
            "eval_loss": 1.2,
            "checks": checks["adapter"],
            "pass_rate": sum(ADAPTER_PASSES) / len(ADAPTER_PASSES),
        },
        "base": {"eval_loss": 2.0, "checks": checks["base"], "pass_rate": sum(BASE_PASSES) / len(BASE_PASSES)},
    }
    gate = apply_gate(result["adapter"], result["base"], GateConfig(pass_rate_tolerance=0.1), rows_carry_tests=True)
    return {"eval_loss": 1.2, "base_eval_loss": 2.0, "gate": gate, "tasks": task_outcomes(result)}


def build_home(root: Path) -> int:
    """Fill the home at root; returns the hostile run's id."""
    store = Store(root)
    folder = root / "adapters" / "coder-a1"
    folder.mkdir(parents=True)
    (folder / "metadata.json").write_text(json.dumps({"loss_curve": [[1, 2.5], [2, 1.75], [3, 1.25]]}))
    registry.create_adapter(store, "coder-a1", "coder", "tiny", str(folder), status="trained")
    registry.record_evaluation(store, "coder-a1", gate_metrics(), "gate passed", "candidate", {"gate": True})
    for i, reward in enumerate(CODER_REWARDS):
        run = {"role": "coder", "output": f"def f{i}(): return {i}", "reward": reward, "time": _day(1 + i % 3)}
        logged = log_run(
            store, run | {"agent": "alice" if i % 2 else "bob", "adapter_id": "coder-a1" if i >= 4 else None}
        )
        if i == 2:  # checked by hand: the same reward, now corrected by the home's owner
            correct_reward(store, logged.run_id, RewardIn(reward=reward), "checked by hand", CORRECTED_BY)
    for reward in FIXER_REWARDS:
        log_run(store, {"role": "fixer", "output": "patch", "reward": reward, "time": _day(2)})
    hostile = {"role": "judge", "output": HOSTILE_OUTPUT, "agent": HOSTILE_AGENT, "instruction": HOSTILE_INSTRUCTION}
    hostile_id = log_run(store, hostile).run_id
    now = time.time()
    job = dict(kind="train", target="x:y", params="{}", subject="coder-a1", progress=dumps({}))
    insert_job(store, job | dict(id="train-run1", status="queued", created=now, log_path=str(root / "j1.log")))
    progress = dumps(RUNNING_PROGRESS)
    update_job(store, "train-run1", status="running", started=now, pid=2**22 + 7, progress=progress)
    done = dict(id="train-done", status="succeeded", created=now - 60, started=now - 60, finished=now - 5)
    insert_job(store, job | done | dict(result=dumps({"adapter_id": "coder-a1"}), log_path=str(root / "j2.log")))
    return hostile_id
