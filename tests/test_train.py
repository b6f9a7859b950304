"""train_adapter on the tiny embedded base: real jobs, real processes, real PEFT/TRL.

Jobs start a Python process each (imports take seconds), so the module shares one home and
runs its jobs side by side where it can.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any, cast

import anyio
import pytest

from learning.errors import InvalidInput
from learning.jobs import manage as jobs
from learning.jobs import queries as job_queries
from learning.registry import adapters as registry
from learning.registry.queries import adapter_rows
from learning.store import Store
from learning.train import launch as training
from learning.train.config import TrainConfig
from learning.train.job import BaseRef, DatasetRef, TrainJob
from tests.conftest import live_processes, run_cli
from tests.support.tiny import tiny_base
from tests.support.train_helpers import lora_tensors, make_dataset

BASE = "embedded:tiny"
FAST = {"batch_size": 4, "save_steps": 100}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    home = tmp_path_factory.mktemp("train") / "home"
    s = Store(home)
    tiny_base(s)
    make_dataset(s, "ds-sft")
    make_dataset(s, "ds-chat", fmt="messages")
    make_dataset(s, "ds-dpo", kind="dpo", fmt="prompt_completion")
    make_dataset(s, "ds-kto", kind="kto", fmt="prompt_completion")
    make_dataset(s, "ds-fixer", role="fixer")
    make_dataset(s, "ds-small", rows=5)
    yield s
    s.close()


def wait(store, job_id, timeout=300):
    status = jobs.wait_job(store, job_id, timeout=timeout)
    assert status.status in jobs.FINAL, f"job {job_id} still {status.status}"
    return status


# ---- bad input: errors before any process starts -----------------------------------------


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(base="/no/such/model"), "does not exist"),
        (dict(dataset_id="nope"), "No dataset 'nope'"),
        (dict(dataset_id="ds-fixer"), "role 'fixer'"),
        (dict(method="dpo"), "preference dataset"),
        (dict(dataset_id="ds-dpo"), "needs an SFT dataset"),
        (dict(preset="huge"), "Unknown preset"),
        (dict(overrides={"rank": 0}), "rank"),
        (dict(overrides={"learning_rate": -1, "dropout": 2}), "dropout"),
        (dict(adapter_id="../../etc"), "Invalid adapter id"),
        (dict(dataset_id="ds-small"), "at least 10"),
        (dict(overrides={"bogus": 1}), "bogus"),
    ],
)
def test_bad_input_fails_before_any_job(store, kwargs, message):
    args = {**dict(role="coder", dataset_id="ds-sft", base=BASE), **kwargs}
    before = len(job_queries.job_rows(store))
    with pytest.raises(InvalidInput, match=message):
        training.train_adapter(store, **args)
    assert len(job_queries.job_rows(store)) == before and not adapter_rows(store, status="training")


def test_all_problems_are_reported_together(store):
    with pytest.raises(InvalidInput) as exc:
        training.train_adapter(store, "coder", "nope", base="/no/such", preset=cast(Any, "huge"))
    assert len(exc.value.problems) == 3


def test_not_a_causal_lm_is_rejected(store, tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["BertModel"], "model_type": "bert"}))
    with pytest.raises(InvalidInput, match="not a causal language model"):
        training.train_adapter(store, "coder", "ds-sft", base=str(tmp_path))


def test_dry_run_reports_the_plan(store):
    result = training.train_adapter(
        store, "coder", "ds-sft", base=BASE, preset="light", dry_run=True, overrides={"batch_size": 4, "epochs": 2}
    )
    plan = result.plan
    assert result.job_id is None and result.dry_run and plan.train_rows == 24
    assert plan.steps == 12 and plan.config["rank"] == 8 and plan.tokens_estimate > 0
    assert plan.est_time_s > 0 and plan.est_memory_mb > 0 and result.adapter_id.startswith("coder-")
    assert not adapter_rows(store)


# ---- training jobs -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def runs(store):
    """One uninterrupted run, and the same run cancelled then resumed; side by side. The cancel is
    sent at once, so the job stops at its first step whatever the machine's speed."""
    cfg: dict[str, Any] = dict(base=BASE, max_steps=8, overrides=FAST)
    full = training.train_adapter(store, "coder", "ds-sft", adapter_id="coder-full", **cfg)
    cut = training.train_adapter(store, "coder", "ds-sft", adapter_id="coder-cut", **cfg)
    assert full.job_id and full.adapter_id == "coder-full"
    assert cut.job_id is not None
    jobs.cancel_job(store, cut.job_id)
    cancelled = wait(store, cut.job_id)
    cut_status = registry.get_adapter(store, "coder-cut").status
    resumed = training.train_adapter(store, "coder", "ds-sft", resume=True, adapter_id="coder-cut")
    return dict(
        full=wait(store, full.job_id), cancelled=cancelled, cut_status=cut_status, resumed=wait(store, resumed.job_id)
    )


@pytest.mark.slow
def test_sft_changes_lora_weights_not_the_base(store, runs):
    from safetensors.torch import load_file

    assert runs["full"].status == "succeeded", runs["full"].error
    adapter = registry.get_adapter(store, "coder-full")
    assert adapter.status == "trained" and adapter.metrics["steps"] == 8 and adapter.base_hash
    tensors = lora_tensors(Path(adapter.path))
    lora_b = [t for name, t in tensors.items() if "lora_B" in name]
    assert lora_b and all(t.abs().sum() > 0 for t in lora_b)  # B starts at zero
    base_file = store.home / "base" / "tiny" / "model.safetensors"
    info = json.loads((store.home / "base" / "tiny" / "learnloop_base.json").read_text())
    assert info["size"] == "tiny"
    meta = json.loads((Path(adapter.path) / "metadata.json").read_text())
    from learning.models.fingerprint import base_fingerprint

    assert meta["base_model"]["sha256"] == base_fingerprint(str(base_file.parent))["sha256"] == adapter.base_hash
    assert meta["dataset"]["id"] == "ds-sft" and meta["hyperparameters"]["rank"] == 16
    assert meta["steps"] == 8 and meta["tokens_seen"] > 0 and meta["train_loss"] > 0 and meta["versions"]["trl"]
    assert load_file(str(base_file))  # still readable, untouched by training (hash above)
    assert any((Path(adapter.path) / "tensorboard").rglob("events.out.tfevents*"))
    progress = runs["full"].progress
    assert progress["step"] == progress["total_steps"] == 8 and progress["tokens_per_s"] > 0


@pytest.mark.slow
def test_saved_adapter_reloads_with_peft_and_gives_the_same_logits(store, runs):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = registry.get_adapter(store, "coder-full").path
    base_path = store.home / "base" / "tiny"
    tok = AutoTokenizer.from_pretrained(base_path)
    ids = tok("Write a function add_3 that returns x plus 3.\n", return_tensors="pt")
    base = AutoModelForCausalLM.from_pretrained(base_path)
    with torch.no_grad():
        base_logits = base(**ids).logits
        model = PeftModel.from_pretrained(base, path).eval()
        logits = model(**ids).logits
        again = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_path), path).eval()(**ids).logits
        with model.disable_adapter():
            assert torch.equal(model(**ids).logits, base_logits)  # base weights untouched
    assert torch.equal(logits, again)
    assert not torch.allclose(logits, base_logits)  # the adapter does something
    # The adapter saved at the end equals the trainer's last checkpoint.
    last = sorted((Path(path) / "checkpoints").glob("checkpoint-*"))[-1]
    final, ckpt = lora_tensors(Path(path)), lora_tensors(last)
    assert final.keys() == ckpt.keys() and all(torch.equal(final[k], ckpt[k]) for k in final)


@pytest.mark.slow
def test_cancel_then_resume_equals_an_uninterrupted_run(store, runs):
    import torch

    assert runs["cancelled"].status == "cancelled" and "resume" in runs["cancelled"].error
    assert runs["cut_status"] == "failed"
    assert runs["resumed"].status == "succeeded", runs["resumed"].error
    assert registry.get_adapter(store, "coder-cut").status == "trained"
    full = lora_tensors(Path(registry.get_adapter(store, "coder-full").path))
    cut = lora_tensors(Path(registry.get_adapter(store, "coder-cut").path))
    assert full.keys() == cut.keys()
    for name in full:
        torch.testing.assert_close(cut[name], full[name], rtol=0, atol=1e-6)
    checkpoints = list((Path(registry.get_adapter(store, "coder-cut").path) / "checkpoints").glob("checkpoint-*"))
    assert len(checkpoints) <= 2  # the last two are kept
    events = [e.to_status for e in registry.adapter_history(store, "coder-cut")]
    assert events == ["training", "failed", "training", "trained"]


@pytest.mark.slow
def test_server_answers_while_training_and_a_killed_job_is_marked_failed(store):
    from mcp import Client

    from server.mcp import build_server

    async def scenario():
        async with Client(build_server(str(store.home))) as client:
            started = (
                await client.call_tool(
                    "train_adapter",
                    {
                        "role": "coder",
                        "dataset_id": "ds-sft",
                        "base": BASE,
                        "max_steps": 400,
                        "overrides": {"batch_size": 4, "save_steps": 2},
                        "adapter_id": "coder-killed",
                    },
                )
            ).structured_content
            answers = []
            deadline = time.monotonic() + 240
            while time.monotonic() < deadline:
                status = jobs.job_status(store, started["job_id"], log_lines=0)
                if status.progress.get("step", 0) >= 3:
                    break
                answers.append((await client.call_tool("run_stats", {})).is_error)
                await anyio.sleep(0.2)
            assert status.status == "running" and answers and not any(answers)
            stats = await client.call_tool("run_stats", {})
            assert not stats.is_error
            return started

    started = anyio.run(scenario)
    row = job_queries.job_row(store, started["job_id"])
    assert row is not None
    os.kill(row["pid"], signal.SIGKILL)
    deadline = time.monotonic() + 30
    while jobs.job_status(store, started["job_id"], log_lines=0).status == "running" and time.monotonic() < deadline:
        time.sleep(0.2)
    status = jobs.job_status(store, started["job_id"])
    assert status.status == "failed" and "died" in (status.error or "")
    assert registry.get_adapter(store, "coder-killed").status == "failed"
    # It can be resumed from its latest checkpoint (checked, not run, to keep the suite short).
    plan = training.train_adapter(store, "coder", "ds-sft", resume=True, adapter_id="coder-killed", dry_run=True)
    assert plan.plan.resume and plan.plan.steps == 400


@pytest.mark.slow
def test_dpo_kto_chat_sft_and_qlora_run_a_few_steps(store):
    started = {
        "dpo": training.train_adapter(store, "coder", "ds-dpo", base=BASE, method="dpo", max_steps=2, overrides=FAST),
        "kto": training.train_adapter(store, "coder", "ds-kto", base=BASE, method="kto", max_steps=2, overrides=FAST),
        "chat": training.train_adapter(store, "coder", "ds-chat", base=BASE, max_steps=2, overrides=FAST),
        "qlora": training.train_adapter(
            store, "coder", "ds-sft", base=BASE, max_steps=2, quantize="4bit", overrides=FAST
        ),
    }
    for name, s in started.items():
        status = wait(store, s.job_id)
        assert status.status == "succeeded", (name, status.error, status.log_tail)
        adapter = registry.get_adapter(store, s.adapter_id)
        assert adapter.status == "trained" and adapter.metrics["steps"] == 2
        assert adapter.method == (name if name in ("dpo", "kto") else "sft")
    assert registry.get_adapter(store, started["qlora"].adapter_id).params["config"]["quantize"] == "4bit"
    # Adapters of one role started within the same second get distinct, sortable ids.
    ids = [s.adapter_id for s in started.values()]
    assert len(set(ids)) == 4 and all(i.startswith("coder-2") for i in ids)


@pytest.mark.slow
def test_ddp_with_two_cpu_processes_trains(store):
    s = training.train_adapter(store, "coder", "ds-sft", base=BASE, max_steps=3, num_processes=2, overrides=FAST)
    status = wait(store, s.job_id, timeout=400)
    assert status.status == "succeeded", (status.error, status.log_tail)
    adapter = registry.get_adapter(store, s.adapter_id)
    assert adapter.status == "trained" and adapter.metrics["steps"] == 3
    meta = json.loads((Path(adapter.path) / "metadata.json").read_text())
    assert meta["num_processes"] == 2
    # 24 rows, 4 per process and step, 2 processes: 3 steps are exactly one epoch.
    assert adapter.metrics["epochs"] == 1.0


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="reads /proc")
def test_ddp_workers_die_when_the_job_process_is_killed(store):
    s = training.train_adapter(
        store,
        "coder",
        "ds-sft",
        base=BASE,
        max_steps=5000,
        num_processes=2,
        overrides={"batch_size": 4, "save_steps": 10000},
        adapter_id="coder-ddp-killed",
    )
    assert s.job_id is not None
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        status = jobs.job_status(store, s.job_id, log_lines=0)
        if status.status in jobs.FINAL or status.progress.get("step", 0) >= 1:
            break
        time.sleep(0.2)
    assert status.status == "running" and status.progress.get("step", 0) >= 1, (status.error, status.log_tail)
    assert len(live_processes("learning.train.recipe", s.job_id)) >= 3  # the launcher and two workers
    row = job_queries.job_row(store, s.job_id)
    assert row is not None
    os.kill(row["pid"], signal.SIGKILL)
    # The kernel kills the launcher with the job process and the workers with the launcher:
    # nothing here (no reconcile yet) does it for them.
    deadline = time.monotonic() + 20
    while live_processes("learning.train.recipe", s.job_id) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not live_processes("learning.train.recipe", s.job_id)
    status = jobs.job_status(store, s.job_id)
    assert status.status == "failed" and "died" in (status.error or "")
    assert registry.get_adapter(store, "coder-ddp-killed").status == "failed"


@pytest.mark.slow
def test_cli_train_wait_json(store):
    result = run_cli(
        "train",
        "--role",
        "coder",
        "--dataset",
        "ds-sft",
        "--base",
        BASE,
        "--max-steps",
        "2",
        "--rank",
        "4",
        "--wait",
        "--json",
        home=store.home,
        timeout=400,
    )
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["status"] == "succeeded" and out["job_id"] and out["adapter_id"].startswith("coder-")
    assert registry.get_adapter(store, out["adapter_id"]).params["config"]["rank"] == 4
    bad = run_cli("train", "--role", "coder", "--dataset", "ds-sft", "--preset", "huge", "--json", home=store.home)
    assert bad.returncode != 0 and "Unknown preset" in bad.stderr


def test_presets_and_yaml_file_form(tmp_path):
    from learning.train.config import build_config, load_yaml, to_yaml

    assert [build_config(p).rank for p in ("light", "default", "heavy")] == [8, 16, 64]
    assert build_config("light", {"rank": 4, "learning_rate": None}).rank == 4
    cfg = build_config("heavy", {"learning_rate": 5e-5})
    (tmp_path / "c.yaml").write_text("preset: heavy\n" + to_yaml(cfg))
    preset, overrides = load_yaml(tmp_path / "c.yaml")
    assert build_config(preset, overrides) == cfg
    with pytest.raises(InvalidInput, match="KTO needs batch_size"):
        build_config("default", {"method": "kto", "batch_size": 1})


def test_job_params_keep_the_shape_recorded_jobs_and_adapters_have():
    """Read back as a TrainJob and written again, a job row's params are the same JSON, so recorded
    jobs and adapters still resume; the base keeps the fields it was given, no others."""
    params = {
        "config": TrainConfig(max_steps=3).model_dump(),
        "dataset_id": "ds",
        "base": {"kind": "hub", "ref": "org/model", "revision": "abc"},
        "num_processes": 2,
        "start_from": {"id": "a", "path": "/x", "rank": 4, "alpha": 8.0, "target_modules": ["q_proj"]},
        "adapter_id": "coder-1",
        "role": "coder",
        "adapter_dir": "/h/adapters/coder-1",
        "dataset_path": "/h/datasets/ds",
        "dataset_format": "messages",
        "dataset_hash": "h",
    }
    job = TrainJob.read(json.loads(json.dumps(params)))
    assert job.params() == params and job.config.max_steps == 3 and job.dataset.format == "messages"
    assert job.adapter_params() == {
        k: params[k] for k in ("config", "dataset_id", "base", "num_processes", "start_from")
    }
    for base in ({"kind": "embedded", "size": "tiny"}, {"kind": "path", "ref": "/m", "imported_as": "m", "gguf": None}):
        assert TrainJob.read({**params, "base": base}).params()["base"] == base
    with pytest.raises(ValueError, match="size"):
        BaseRef(kind="embedded")


def test_adapter_ids_stay_unique_within_one_second(tmp_path):
    fresh = Store(tmp_path / "ids")
    plan = training.TrainPlan(
        adapter_id=registry.new_adapter_id("coder"),
        role="coder",
        dataset_id="d",
        base_model=BASE,
        method="sft",
        config={},
        train_rows=10,
        steps=1,
        tokens_estimate=1,
        est_time_s=1,
        est_memory_mb=1,
        num_processes=1,
        resume=False,
    )
    job = TrainJob(
        adapter_id=plan.adapter_id,
        role="coder",
        adapter_dir="",
        config=TrainConfig(),
        base=BaseRef(kind="embedded", size="tiny"),
        dataset=DatasetRef(id="d", path="", format="prompt_completion", content_hash=""),
    )
    ids = [training._create_unique(fresh, plan, job, explicit=False) for _ in range(3)]
    assert ids == [plan.adapter_id, f"{plan.adapter_id}-2", f"{plan.adapter_id}-3"]
    assert sorted(ids) == ids
