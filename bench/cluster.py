"""Training beyond one process: a 2-worker Ray Train job against one process and accelerate's DDP.

    python bench/cluster.py [--base embedded:tiny] [--rows 96] [--steps 200] [--sharding]

Starts a real two-node Ray cluster on loopback (in a network namespace of its own, as the
tests do: needs root and the cluster extra), then trains the tiny embedded base with the
same rows a step three ways, one job after the other:

  one process, batch 4 | accelerate DDP, 2 processes x batch 2 | Ray Train, 2 workers x batch 2

and prints for each: steps/s in the trainer (steps / train runtime), the job's wall time
(created to finished, to the second) and the time from submitting to the first step (the plan,
for Ray asking the cluster, included), with ratios against the single process. With --sharding it also trains 2 processes locally with DDP and with FSDP and
prints the peak memory per process of each.
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import json
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from learning.jobs import manage as jobs  # noqa: E402
from learning.registry import adapters as registry  # noqa: E402
from learning.store import Store  # noqa: E402
from learning.train import launch as training  # noqa: E402
from tests.conftest import LEARNLOOP, subprocess_env  # noqa: E402
from tests.support.ray_cluster import LoopbackCluster, unavailable  # noqa: E402
from tests.support.train_helpers import make_dataset  # noqa: E402

BASE = "embedded:tiny"  # --base embedded:small for steps with more compute in them


def seconds(stamp: str | None) -> float:
    assert stamp is not None
    return datetime.fromisoformat(stamp).timestamp()


def follow(store: Store, job_id: str, submitted: float) -> dict:
    """Wait for the job; its figures, with the first step seen by polling its progress."""
    first_step = None
    while True:
        status = jobs.job_status(store, job_id, log_lines=0)
        if first_step is None and status.progress.get("stage") == "train":
            first_step = time.time() - submitted
        if status.status in jobs.FINAL:
            break
        time.sleep(0.1)
    if status.status != "succeeded":
        raise SystemExit(f"{job_id} {status.status}: {status.error}")
    adapter = registry.get_adapter(store, status.subject or "")
    metrics = adapter.metrics
    return {
        "steps_per_s": metrics["steps"] / metrics["train_runtime_s"],
        "wall_s": seconds(status.finished) - seconds(status.created),
        "first_step_s": first_step,
        "peak_mb": metrics.get("peak_rss_mb"),  # rank 0 process; on a GPU, peak_gpu_mb is the one to compare
        "loss": metrics.get("train_loss"),
    }


def local(store: Store, base: str, steps: int, processes: int, overrides: dict) -> dict:
    submitted = time.time()
    started = training.train_adapter(
        store, "coder", "ds", base=base, max_steps=steps, num_processes=processes, overrides=overrides
    )
    return follow(store, started.job_id or "", submitted)


def on_ray(cluster: LoopbackCluster, store: Store, base: str, steps: int) -> dict:
    submitted = time.time()
    argv = [*LEARNLOOP, "train", "--role", "coder", "--dataset", "ds", "--base", base, "--json", "--no-wait"]
    argv += ["--cluster", cluster.address, "--num-processes", "2", "--max-steps", str(steps)]
    argv += ["--overrides", json.dumps({"batch_size": 2, "seed": 7})]
    out = cluster.run(argv, timeout=300, env=subprocess_env(store.home))
    if out.returncode != 0:
        raise SystemExit(out.stderr[-2000:])
    return follow(store, json.loads(out.stdout)["job_id"], submitted)


def line(name: str, r: dict, base: dict) -> str:
    return (
        f"| {name} | {r['steps_per_s']:.2f} ({r['steps_per_s'] / base['steps_per_s']:.2f}x) "
        f"| {r['wall_s']:.1f} ({r['wall_s'] / base['wall_s']:.2f}x) | {r['first_step_s']:.1f} "
        f"(+{r['first_step_s'] - base['first_step_s']:.1f} s) | {r['loss']:.4f} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--base", default=BASE, choices=["embedded:tiny", "embedded:small"])
    parser.add_argument("--rows", type=int, default=96)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--sharding", action="store_true", help="also DDP vs FSDP peak memory, 2 local processes")
    args = parser.parse_args()
    if why := unavailable():
        raise SystemExit(f"cannot start a loopback Ray cluster here: {why}")
    from learning.models.tinybase import ensure_base

    versions = {p: md.version(p) for p in ("ray", "torch", "transformers", "peft", "trl", "accelerate")}
    print(f"versions: {versions}")
    with tempfile.TemporaryDirectory(prefix="bench-cluster-") as tmp:
        store = Store(Path(tmp) / "home")
        ensure_base(store, args.base.split(":")[1])
        make_dataset(store, "ds", rows=args.rows)
        cluster = LoopbackCluster(Path(tmp) / "ray")
        t0 = time.time()
        cluster.start()
        print(f"cluster of 2 nodes up in {time.time() - t0:.1f} s")
        try:
            single = local(store, args.base, args.steps, 1, {"batch_size": 4, "seed": 7})
            ddp = local(store, args.base, args.steps, 2, {"batch_size": 2, "seed": 7})
            ray = on_ray(cluster, store, args.base, args.steps)
        finally:
            cluster.stop()
        print(f"\n{args.steps} steps, 4 rows a step, {args.base}, CPU (gloo)\n")
        print("| run | steps/s (vs one process) | job wall s | submit to first step s | final loss |")
        print("|---|---|---|---|---|")
        print(line("one process, batch 4", single, single))
        print(line("accelerate DDP, 2 x batch 2", ddp, single))
        print(line("Ray Train, 2 workers x batch 2", ray, single))
        if args.sharding:
            fsdp = local(store, args.base, args.steps, 2, {"batch_size": 2, "seed": 7, "sharding": "fsdp"})
            print("\n| 2 local processes | peak memory per process MB | steps/s |\n|---|---|---|")
            for name, r in (("DDP", ddp), ("FSDP", fsdp)):
                print(f"| {name} | {r['peak_mb']} | {r['steps_per_s']:.2f} |")
        store.close()


if __name__ == "__main__":
    main()
