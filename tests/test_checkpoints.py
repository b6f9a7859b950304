"""A torn checkpoint is skipped: resume falls back to the newest intact one and says why."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from learning.jobs import manage as jobs
from learning.registry import adapters as registry
from learning.registry.queries import set_adapter_status
from learning.store import Store
from learning.train import launch as training
from learning.train.checkpoints import checkpoint_problem, newest_intact
from tests.support.tiny import tiny_base
from tests.support.train_helpers import make_dataset


def write_checkpoint(folder: Path, step: int) -> Path:
    import torch
    from safetensors.torch import save_file

    folder.mkdir(parents=True)
    save_file({"w": torch.ones(16, 16)}, str(folder / "adapter_model.safetensors"))
    torch.save({"state": {}}, folder / "optimizer.pt")
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    return folder


def truncate(path: Path, keep: float = 0.5) -> None:
    os.truncate(path, int(path.stat().st_size * keep))


@pytest.mark.parametrize(
    "tear, reason",
    [
        (lambda f: truncate(f / "adapter_model.safetensors"), "adapter_model.safetensors is"),
        (lambda f: truncate(f / "adapter_model.safetensors", 0.001), "adapter_model.safetensors"),
        (lambda f: (f / "trainer_state.json").unlink(), "trainer_state.json is missing"),
        (lambda f: (f / "trainer_state.json").write_text('{"global_st'), "trainer_state.json does not parse"),
        (lambda f: (f / "adapter_model.safetensors").unlink(), "no adapter_model.safetensors"),
        (lambda f: truncate(f / "optimizer.pt"), "optimizer.pt is not a complete"),
    ],
)
def test_a_torn_checkpoint_is_skipped_for_the_older_intact_one(tmp_path, tear, reason):
    ckpts = tmp_path / "checkpoints"
    older = write_checkpoint(ckpts / "checkpoint-2", 2)
    newest = write_checkpoint(ckpts / "checkpoint-10", 10)  # numeric order, not by name
    assert checkpoint_problem(newest) is None and newest_intact(ckpts) == (str(newest), [])
    tear(newest)
    found, skipped = newest_intact(ckpts)
    assert found == str(older)
    assert [s["checkpoint"] for s in skipped] == ["checkpoint-10"] and reason in skipped[0]["reason"]
    tear(older)
    assert newest_intact(ckpts)[0] is None and len(newest_intact(ckpts)[1]) == 2


@pytest.mark.slow
def test_resume_after_a_torn_newest_checkpoint_uses_the_older_one(tmp_path):
    store = Store(tmp_path / "home")
    tiny_base(store)
    make_dataset(store, "ds-sft")
    started = training.train_adapter(
        store,
        "coder",
        "ds-sft",
        adapter_id="coder-torn",
        base="embedded:tiny",
        max_steps=4,
        overrides={"batch_size": 4, "save_steps": 1},
    )
    assert started.job_id
    assert jobs.wait_job(store, started.job_id, timeout=300).status == "succeeded"
    ckpts = Path(registry.get_adapter(store, "coder-torn").path) / "checkpoints"
    assert sorted(p.name for p in ckpts.glob("checkpoint-*")) == ["checkpoint-3", "checkpoint-4"]
    # The job was killed while saving step 4: its weights are torn and the adapter failed.
    truncate(ckpts / "checkpoint-4" / "adapter_model.safetensors")
    with store.write() as conn:
        set_adapter_status(conn, "coder-torn", "trained", "failed", "test", "killed while saving")
    resumed = training.train_adapter(store, "coder", "ds-sft", resume=True, adapter_id="coder-torn")
    assert resumed.job_id
    status = jobs.wait_job(store, resumed.job_id, timeout=300)
    assert status.status == "succeeded", (status.error, status.log_tail)
    log = Path(status.log_path).read_text()
    assert "skipped torn checkpoint(s): checkpoint-4 (adapter_model.safetensors is" in log
    assert "resuming from checkpoint-3" in log
    assert status.progress["checkpoints_skipped"][0]["checkpoint"] == "checkpoint-4"
    assert status.result and status.result["resumed_from"].endswith("checkpoint-3")
    assert status.result["checkpoints_skipped"][0]["checkpoint"] == "checkpoint-4"
    meta = json.loads((Path(status.result["path"]) / "metadata.json").read_text())
    assert meta["steps"] == 4 and meta["checkpoints_skipped"][0]["checkpoint"] == "checkpoint-4"
    assert checkpoint_problem(ckpts / "checkpoint-4") is None  # step 4 written again, whole
    assert (ckpts / "torn-checkpoint-4").is_dir()
