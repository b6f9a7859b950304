"""Training on a real two-node Ray cluster on loopback (tests/support/ray_cluster.py).

The CLI and the jobs it starts run in the cluster's network namespace; the home is an ordinary
folder, as for any job. Each run uses 2 Ray Train workers (gloo) on the tiny embedded base.
"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest

from learning.jobs import manage as jobs
from learning.registry import adapters as registry
from learning.registry.queries import adapter_rows
from learning.store import Store
from learning.train import launch as training
from tests.conftest import LEARNLOOP, subprocess_env
from tests.support.ray_cluster import LoopbackCluster, unavailable
from tests.support.tiny import tiny_base
from tests.support.train_helpers import make_dataset

pytestmark = [
    pytest.mark.slow,
    pytest.mark.cluster,
    pytest.mark.skipif(bool(unavailable()), reason=unavailable() or ""),
]

BASE = "embedded:tiny"
# One process with batch 4 and two workers with batch 2 each see 4 rows a step.
SINGLE = {"batch_size": 4, "seed": 7}
PER_WORKER = {"batch_size": 2, "seed": 7}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = LoopbackCluster(tmp_path_factory.mktemp("ray"))
    try:
        c.start()
        yield c
    finally:
        c.stop()
        assert not c.leftovers(), "Ray processes outlived the cluster"


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    s = Store(tmp_path_factory.mktemp("cluster") / "home")
    tiny_base(s)
    make_dataset(s, "ds-sft", rows=32)
    make_dataset(s, "ds-dpo", kind="dpo", fmt="prompt_completion", rows=32)
    make_dataset(s, "ds-tested", rows=16, tests=["assert True"])  # passes whenever the answer's code runs
    yield s
    s.close()


def train(cluster: LoopbackCluster, store: Store, *args: str, wait: bool = True, timeout: float = 600):
    """`learnloop train ... --json` inside the cluster's namespace; its JSON answer."""
    argv = [*LEARNLOOP, "train", "--role", "coder", "--base", BASE, "--json", "--wait" if wait else "--no-wait", *args]
    out = cluster.run(argv, timeout=timeout, env=subprocess_env(store.home))
    assert out.stdout.strip(), out.stderr[-3000:] + cluster.client_server_logs()
    return json.loads(out.stdout), out


def on_two_workers(cluster, store, dataset: str, steps: int, *args: str, overrides=PER_WORKER, wait: bool = True):
    """`train` on the loopback cluster: 2 workers, `steps` steps, dataset and overrides as given."""
    common = ["--dataset", dataset, "--cluster", cluster.address, "--num-processes", "2", "--max-steps", str(steps)]
    return train(cluster, store, *common, "--overrides", json.dumps(overrides), *args, wait=wait)


def loss_curve(store: Store, adapter_id: str) -> list[float]:
    meta = json.loads((Path(registry.get_adapter(store, adapter_id).path) / "metadata.json").read_text())
    return [loss for _, loss in meta["loss_curve"]]


# ---- refused in the plan ---------------------------------------------------------------


def test_bad_cluster_requests_are_refused_before_any_job(cluster, store):
    before = len(adapter_rows(store))
    cases = [
        (["--cluster", "not an address"], "is not a Ray address"),
        (["--cluster", "127.0.0.1:1"], "no Ray cluster answers"),
        (["--cluster", cluster.address, "--num-processes", "3"], "can place 2 worker"),
        (["--cluster", cluster.address, "--resources-per-worker", '{"CPU": 2}'], "can place 0 worker"),
        (["--cluster", cluster.address, "--resources-per-worker", '{"TPU": 1}'], "unknown resource TPU"),
        (["--cluster", cluster.address, "--resources-per-worker", '{"CPU": 1, "memory": 1048576}'], "MB per worker"),
        (
            [
                "--cluster",
                cluster.address,
                "--method",
                "grpo",
                "--dataset",
                "ds-tested",
                "--overrides",
                '{"log_samples": true}',
            ],
            "log_samples writes runs",
        ),
    ]
    for args, message in cases:
        out = cluster.run(
            [*LEARNLOOP, "train", "--role", "coder", "--dataset", "ds-sft", "--base", BASE, *args],
            env=subprocess_env(store.home),
            timeout=180,
        )
        assert out.returncode != 0 and message in out.stderr, (args, out.stderr[-1500:])
    from_env = cluster.run(
        [*LEARNLOOP, "train", "--role", "coder", "--dataset", "ds-sft", "--base", BASE],
        env={**subprocess_env(store.home), "LEARNLOOP_CLUSTER": "127.0.0.1:1"},
        timeout=180,
    )
    assert from_env.returncode != 0 and "no Ray cluster answers at 127.0.0.1:1" in from_env.stderr
    assert len(adapter_rows(store)) == before and not jobs.list_jobs(store)  # nothing half-registered


def test_the_dry_run_plan_names_the_cluster(cluster, store):
    plan, out = train(
        cluster, store, "--dataset", "ds-sft", "--cluster", cluster.client_address, "--num-processes", "2", "--dry-run"
    )
    assert plan["dry_run"] and plan["plan"]["cluster"]["address"] == cluster.client_address, out.stderr
    assert plan["plan"]["cluster"]["resources_per_worker"] == {"CPU": 1.0}
    assert any("2 node(s)" in note for note in plan["plan"]["notes"])


# ---- trained on the cluster, as locally ------------------------------------------------


def test_sft_on_two_workers_matches_one_process(cluster, store):
    local = training.train_adapter(
        store, "coder", "ds-sft", base=BASE, max_steps=6, overrides=SINGLE, adapter_id="coder-local"
    )
    assert jobs.wait_job(store, local.job_id or "", timeout=600).status == "succeeded"
    ddp = training.train_adapter(
        store, "coder", "ds-sft", base=BASE, max_steps=6, num_processes=2, overrides=PER_WORKER, adapter_id="coder-ddp"
    )
    assert jobs.wait_job(store, ddp.job_id or "", timeout=600).status == "succeeded"
    answer, out = on_two_workers(cluster, store, "ds-sft", 6, "--adapter-id", "coder-ray")
    assert answer["status"] == "succeeded", out.stdout[-3000:]
    adapter = registry.get_adapter(store, "coder-ray")
    assert adapter.status == "trained" and adapter.metrics["steps"] == 6
    assert adapter.params["cluster"]["address"] == cluster.address
    meta = json.loads((Path(adapter.path) / "metadata.json").read_text())
    assert meta["num_processes"] == 2 and meta["cluster"]["address"] == cluster.address
    assert meta["dataset"]["id"] == "ds-sft" and str(store.home) in meta["base_model"]["path"]
    assert "learnloop-worker-" not in json.dumps(meta)  # the home's paths, not a worker's scratch
    assert (Path(adapter.path) / "adapter_model.safetensors").exists()
    # Ray's two workers do what accelerate's two processes do: the same curve, up to float sums.
    ray_curve, ddp_curve = loss_curve(store, "coder-ray"), loss_curve(store, "coder-ddp")
    assert len(ray_curve) == len(ddp_curve) == 6
    assert all(abs(r - d) <= 1e-3 for r, d in zip(ray_curve, ddp_curve)), (ray_curve, ddp_curve)
    # One process sees the same 4 rows a step in another order (each worker samples its half):
    # the first step's loss within 15%, the curve's sum within 10%.
    local_curve = loss_curve(store, "coder-local")
    assert abs(ray_curve[0] - local_curve[0]) / local_curve[0] < 0.15
    assert abs(sum(ray_curve) - sum(local_curve)) / sum(local_curve) < 0.10
    events = [e.to_status for e in registry.adapter_history(store, "coder-ray")]
    assert events == ["training", "trained"]


def test_dpo_on_two_workers(cluster, store):
    answer, out = on_two_workers(cluster, store, "ds-dpo", 3, "--method", "dpo")
    assert answer["status"] == "succeeded", out.stdout[-3000:]
    adapter = registry.get_adapter(store, answer["adapter_id"])
    assert adapter.status == "trained" and adapter.metrics["steps"] == 3 and adapter.params["config"]["method"] == "dpo"


def test_fsdp_on_two_workers(cluster, store):
    answer, out = on_two_workers(cluster, store, "ds-sft", 3, "--sharding", "fsdp")
    assert answer["status"] == "succeeded", out.stdout[-3000:]
    meta = json.loads((Path(registry.get_adapter(store, answer["adapter_id"]).path) / "metadata.json").read_text())
    assert meta["sharding"]["kind"] == "fsdp" and meta["sharding"]["wrap"] == ["LlamaDecoderLayer"], meta["sharding"]


def test_grpo_scores_each_workers_answers_in_the_jail_of_its_node(cluster, store):
    grpo = {"batch_size": 2, "num_generations": 4, "max_completion_length": 16, "temperature": 1.5}
    answer, out = on_two_workers(
        cluster, store, "ds-tested", 2, "--method", "grpo", overrides={**grpo, "no_signal_steps": 50}
    )
    assert answer["status"] == "succeeded", out.stdout[-3000:]
    metrics = registry.get_adapter(store, answer["adapter_id"]).metrics["grpo"]
    # 2 prompts a worker and step, 4 answers each, 2 workers, 2 steps; every answer run in a jail
    assert metrics["groups"] == 8 and metrics["answers_scored"] >= 16 and len(metrics["reward_by_step"]) == 2


# ---- cancel, a lost worker, resume -------------------------------------------------------


def _started(cluster, store, adapter_id: str, steps: int) -> str:
    answer, _ = on_two_workers(
        cluster,
        store,
        "ds-sft",
        steps,
        "--adapter-id",
        adapter_id,
        overrides={**PER_WORKER, "save_steps": 2},
        wait=False,
    )
    return answer["job_id"]


def _wait_for_step(store, job_id: str, step: int, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = jobs.job_status(store, job_id, log_lines=0)
        assert status.status not in jobs.FINAL, status.error
        if (status.progress or {}).get("step", 0) >= step:
            return
        time.sleep(0.5)
    raise AssertionError(f"job {job_id} did not reach step {step}")


def test_cancel_stops_the_workers(cluster, store):
    job_id = _started(cluster, store, "coder-cancel", 400)
    _wait_for_step(store, job_id, 3)
    assert len(cluster.workers()) == 2
    jobs.cancel_job(store, job_id)
    status = jobs.wait_job(store, job_id, timeout=180)
    assert status.status == "cancelled" and "resume" in (status.error or ""), status.error
    deadline = time.monotonic() + 60
    while cluster.workers() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not cluster.workers(), "the Ray Train workers outlived the cancel"
    assert list((Path(registry.get_adapter(store, "coder-cancel").path) / "checkpoints").glob("checkpoint-*"))


def test_a_killed_worker_fails_the_job_and_resume_continues_on_one_worker(cluster, store):
    job_id = _started(cluster, store, "coder-killed", 60)
    _wait_for_step(store, job_id, 5)  # checkpoints at 2 and 4 are home by now, or on their way
    victim = cluster.workers()[-1]
    victim.send_signal(signal.SIGKILL)
    status = jobs.wait_job(store, job_id, timeout=300)
    assert status.status == "failed", status.status
    assert "worker failed" in (status.error or "") and "resume=true" in (status.error or ""), status.error
    assert registry.get_adapter(store, "coder-killed").status == "failed"
    home_ckpts = sorted((Path(registry.get_adapter(store, "coder-killed").path) / "checkpoints").glob("checkpoint-*"))
    assert home_ckpts, "no checkpoint came home before the worker died"

    answer, out = train(
        cluster,
        store,
        "--dataset",
        "ds-sft",
        "--cluster",
        cluster.address,
        "--num-processes",
        "1",
        "--resume",
        "--adapter-id",
        "coder-killed",
    )
    assert answer["status"] == "succeeded", out.stdout[-3000:]
    adapter = registry.get_adapter(store, "coder-killed")
    assert adapter.status == "trained" and adapter.metrics["steps"] == 60  # the run's own length
    meta = json.loads((Path(adapter.path) / "metadata.json").read_text())
    assert Path(meta["resumed_from"]).name in {p.name for p in home_ckpts}
    assert meta["num_processes"] == 1
