"""A home for the dashboard's tests: runs of two roles over three days, a pending run whose text
is hostile markup, an evaluated adapter with a loss curve, a running and a finished job."""

from __future__ import annotations

import json
import time
from datetime import datetime, timezone
from pathlib import Path

from learning.jobs.queries import insert_job, update_job
from learning.registry import adapters as registry
from learning.runs.record import log_run
from learning.store import Store, dumps

HOSTILE_OUTPUT = "<script>alert(1)</script>"
HOSTILE_AGENT = 'x"onmouseover="alert(2)'
HOSTILE_INSTRUCTION = '"onmouseover=alert(3) <img src=x onerror=alert(4)>'
CODER_REWARDS = [0.2, 0.4, 0.9, 0.7, 0.5, 1.0]
FIXER_REWARDS = [0.3, 0.6]


def _day(d: int) -> datetime:
    return datetime(2026, 11, d, 12, tzinfo=timezone.utc)


def build_home(root: Path) -> int:
    """Fill the home at root; returns the hostile run's id."""
    store = Store(root)
    folder = root / "adapters" / "coder-a1"
    folder.mkdir(parents=True)
    (folder / "metadata.json").write_text(json.dumps({"loss_curve": [[1, 2.5], [2, 1.75], [3, 1.25]]}))
    registry.create_adapter(store, "coder-a1", "coder", "tiny", str(folder), status="trained")
    registry.record_evaluation(
        store, "coder-a1", {"eval_loss": 1.2, "base_eval_loss": 2.0}, "gate passed", "candidate", {"gate": True}
    )
    for i, reward in enumerate(CODER_REWARDS):
        run = {"role": "coder", "output": f"def f{i}(): return {i}", "reward": reward, "time": _day(1 + i % 3)}
        log_run(store, run | {"agent": "alice" if i % 2 else "bob", "adapter_id": "coder-a1" if i >= 4 else None})
    for reward in FIXER_REWARDS:
        log_run(store, {"role": "fixer", "output": "patch", "reward": reward, "time": _day(2)})
    hostile = {"role": "judge", "output": HOSTILE_OUTPUT, "agent": HOSTILE_AGENT, "instruction": HOSTILE_INSTRUCTION}
    hostile_id = log_run(store, hostile).run_id
    now = time.time()
    job = dict(kind="train", target="x:y", params="{}", subject="coder-a1", progress=dumps({}))
    insert_job(store, job | dict(id="train-run1", status="queued", created=now, log_path=str(root / "j1.log")))
    progress = dumps({"step": 3, "total_steps": 10, "loss": 1.5, "eta_s": 42})
    update_job(store, "train-run1", status="running", started=now, pid=2**22 + 7, progress=progress)
    done = dict(id="train-done", status="succeeded", created=now - 60, started=now - 60, finished=now - 5)
    insert_job(store, job | done | dict(result=dumps({"adapter_id": "coder-a1"}), log_path=str(root / "j2.log")))
    return hostile_id
