"""FSDP across processes on CPU (gloo): the same run as DDP, sharded; the plan refuses what it cannot do.

With 2 processes FSDP's reduce-scatter and DDP's all-reduce both add two numbers (exact in either
order) and the forward runs the same weights gathered, so the adapters came out bitwise equal
here (max |diff| 0.0 over 6 steps, loss curves equal). The tolerance (1e-5 absolute) leaves room
for a reduction order that differs elsewhere (float32 rounding, ~1e-7 relative an operation), and
stays ~200x below what one optimizer step changes (Adam at lr 2e-3; lora_B reaches ~6e-3 in 6 steps).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from learning.errors import InvalidInput
from learning.jobs import manage as jobs
from learning.registry import adapters as registry
from learning.store import Store
from learning.train import launch as training
from tests.support.tiny import tiny_base
from tests.support.train_helpers import lora_tensors, make_dataset

BASE = "embedded:tiny"
RUN: dict[str, Any] = dict(base=BASE, max_steps=6, num_processes=2)
ATOL, RTOL = 1e-5, 1e-4


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    s = Store(tmp_path_factory.mktemp("fsdp") / "home")
    make_dataset(s, "ds-sft")
    yield s
    s.close()


def wait(store, job_id):
    status = jobs.wait_job(store, job_id, timeout=600)
    assert status.status in jobs.FINAL, f"job {job_id} still {status.status}"
    return status


def sharded(kind: str, **more: Any) -> dict[str, Any]:
    return {"batch_size": 4, "save_steps": 2, "seed": 3, "sharding": kind, **more}


@pytest.fixture(scope="module")
def runs(store):
    """DDP and FSDP runs of the same seed and batch, and an FSDP run cancelled then resumed."""
    tiny_base(store)
    ddp = training.train_adapter(store, "coder", "ds-sft", adapter_id="ddp", overrides=sharded("ddp"), **RUN)
    fsdp = training.train_adapter(store, "coder", "ds-sft", adapter_id="fsdp", overrides=sharded("fsdp"), **RUN)
    cut = training.train_adapter(store, "coder", "ds-sft", adapter_id="cut", overrides=sharded("fsdp"), **RUN)
    assert ddp.job_id and fsdp.job_id and cut.job_id
    jobs.cancel_job(store, cut.job_id)
    cancelled = wait(store, cut.job_id)
    resumed = training.train_adapter(store, "coder", "ds-sft", resume=True, adapter_id="cut", num_processes=2)
    assert resumed.job_id
    return dict(
        ddp=wait(store, ddp.job_id),
        fsdp=wait(store, fsdp.job_id),
        cancelled=cancelled,
        resumed=wait(store, resumed.job_id),
    )


def metadata(store, adapter_id: str) -> dict[str, Any]:
    return json.loads((Path(registry.get_adapter(store, adapter_id).path) / "metadata.json").read_text())


@pytest.mark.slow
def test_fsdp_adapter_equals_ddp_within_tolerance(store, runs):
    import torch

    for name in ("ddp", "fsdp"):
        assert runs[name].status == "succeeded", (runs[name].error, runs[name].log_tail)
    ddp = lora_tensors(Path(registry.get_adapter(store, "ddp").path))
    fsdp = lora_tensors(Path(registry.get_adapter(store, "fsdp").path))
    assert ddp.keys() == fsdp.keys() and ddp
    for name in ddp:
        torch.testing.assert_close(fsdp[name], ddp[name], atol=ATOL, rtol=RTOL)
    curves = [metadata(store, a)["loss_curve"] for a in ("ddp", "fsdp")]
    assert [s for s, _ in curves[0]] == [s for s, _ in curves[1]] == list(range(1, 7))
    assert all(abs(a - b) < 1e-4 for (_, a), (_, b) in zip(*curves))


@pytest.mark.slow
def test_metadata_records_the_sharding_and_the_wrapped_class(store, runs):
    fsdp, ddp = metadata(store, "fsdp"), metadata(store, "ddp")
    assert fsdp["sharding"] == {"kind": "fsdp", "version": 2, "wrap": ["LlamaDecoderLayer"], "state_dict": "full"}
    assert fsdp["hyperparameters"]["sharding"] == "fsdp" and fsdp["num_processes"] == 2
    assert ddp["sharding"] == {"kind": "ddp"}
    assert fsdp["peak_rss_mb"] > 0 and ddp["peak_rss_mb"] > 0


@pytest.mark.slow
def test_fsdp_adapter_reloads_with_peft(store, runs):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    adapter = registry.get_adapter(store, "fsdp")
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(adapter.base_model), adapter.path)
    saved = lora_tensors(Path(adapter.path))
    loaded = {k: v for k, v in model.state_dict().items() if "lora_" in k}
    assert len(loaded) == len(saved)
    for name, value in saved.items():
        torch.testing.assert_close(loaded[name.replace(".weight", ".default.weight")], value, rtol=0, atol=0)
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([[1, 2, 3, 4]])).logits
    assert torch.isfinite(logits).all()


@pytest.mark.slow
def test_fsdp_cancel_then_resume_equals_the_uninterrupted_run(store, runs):
    import torch

    assert runs["cancelled"].status == "cancelled", runs["cancelled"].error
    assert runs["resumed"].status == "succeeded", (runs["resumed"].error, runs["resumed"].log_tail)
    assert metadata(store, "cut")["resumed_from"]
    full = lora_tensors(Path(registry.get_adapter(store, "fsdp").path))
    cut = lora_tensors(Path(registry.get_adapter(store, "cut").path))
    for name in full:
        torch.testing.assert_close(cut[name], full[name], atol=ATOL, rtol=RTOL)


# ---- the plan refuses what it cannot do ----------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(num_processes=1, overrides={"sharding": "fsdp"}), "num_processes >= 2"),
        (dict(num_processes=2, sharding="fsdp", quantize="4bit"), "4bit/8bit"),
        (dict(num_processes=2, overrides={"sharding": "fsdp", "quantize": "8bit"}), "4bit/8bit"),
        (dict(overrides={"sharding": "zero3"}), "sharding"),
    ],
)
def test_plan_refuses_bad_sharding(store, kwargs, message):
    with pytest.raises(InvalidInput, match=message):
        training.train_adapter(store, "coder", "ds-sft", base=BASE, dry_run=True, **kwargs)


def test_plan_with_fsdp_does_not_quantize_on_its_own(store):
    plan = training.train_adapter(
        store, "coder", "ds-sft", base=BASE, dry_run=True, num_processes=2, sharding="fsdp"
    ).plan
    assert plan.config["sharding"] == "fsdp" and plan.config["quantize"] == "none"
    default = training.train_adapter(store, "coder", "ds-sft", base=BASE, dry_run=True, num_processes=2).plan
    assert default.config["sharding"] == "ddp" and plan.est_memory_mb < default.est_memory_mb
