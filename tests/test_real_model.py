"""A real pretrained model end to end: SmolLM2-135M-Instruct's Q4_1 GGUF (tests/support/realmodel.py)
imported as a base, trained a few steps in chat format, exported; exports point at the GGUF.

The import writes a ~540 MB float32 folder and training takes a few seconds a step on 2 cores,
so the module imports once and trains once.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from learning.jobs import manage as jobs
from learning.models import gguf_base
from learning.models.fingerprint import base_fingerprint
from learning.registry import adapters as registry
from learning.serve import deploy, export
from learning.train import launch as training
from tests.support.train_helpers import make_dataset

pytestmark = [pytest.mark.slow, pytest.mark.realmodel]

CHAT = [{"role": "user", "content": "Write a function that adds one."}, {"role": "assistant", "content": "x + 1"}]


def test_import_records_both_fingerprints_and_keeps_the_logits(imported, real_gguf):
    import torch
    import transformers

    store, record = imported
    folder = Path(record["folder"])
    assert folder == store.home / "bases" / "SmolLM2-135M-Instruct.Q4_1"
    assert json.loads((folder / "gguf_base.json").read_text())["id"] == "SmolLM2-135M-Instruct.Q4_1"
    assert record["gguf_path"] == str(real_gguf.resolve())
    assert record["gguf_sha256"] == gguf_base.file_sha256(real_gguf)
    assert record["sha256"] == base_fingerprint(folder)["sha256"]
    assert record["model_type"] == "llama" and record["architecture"] == "llama"
    assert {"gguf", "ollama"} <= set(record["export_formats"]) and record["max_logit_diff"] == 0
    # The folder loads as a plain model with the same logits as transformers' own GGUF load.
    tok = transformers.AutoTokenizer.from_pretrained(str(folder))
    from_gguf = transformers.AutoTokenizer.from_pretrained(str(real_gguf.parent), gguf_file=real_gguf.name)
    text = tok.apply_chat_template(CHAT, tokenize=False)
    assert isinstance(text, str) and text == from_gguf.apply_chat_template(CHAT, tokenize=False)
    ids = torch.tensor([tok(text)["input_ids"]])
    plain = transformers.AutoModelForCausalLM.from_pretrained(str(folder)).eval()
    gguf = transformers.AutoModelForCausalLM.from_pretrained(str(real_gguf.parent), gguf_file=real_gguf.name).eval()
    with torch.no_grad():
        assert torch.equal(plain(ids).logits, gguf(ids).logits)
    # Importing the same unchanged file again returns the base at once, without a job.
    again = gguf_base.import_base(store, str(real_gguf))
    assert again.job_id is None and again.status == "succeeded" and again.base_id == record["id"]


@pytest.fixture(scope="module")
def trained(imported, real_gguf):
    """One adapter trained a few steps in chat format on the GGUF base, the role's instruction
    template being the bare instruction (so served prompts compare directly with the chat template)."""
    store, record = imported
    (store.home / "templates").mkdir(exist_ok=True)
    (store.home / "templates" / "coder.txt").write_text("{instruction}")
    make_dataset(store, "ds-chat", fmt="messages", rows=12)
    fast = {"batch_size": 2, "max_length": 64, "save_steps": 100, "learning_rate": 1e-3}
    started = training.train_adapter(store, "coder", "ds-chat", base=str(real_gguf), max_steps=3, overrides=fast)
    assert any("imported from" in n for n in started.plan.notes)
    assert started.plan.target_modules == ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    assert {"gguf", "ollama", "merged"} <= set(started.plan.export_formats)
    status = jobs.wait_job(store, started.job_id, timeout=900)  # type: ignore[arg-type]
    assert status.status == "succeeded", (status.error, status.log_tail)
    return store, record, registry.get_adapter(store, started.adapter_id)


def test_train_on_the_gguf_records_the_base_and_what_was_adapted(trained):
    store, record, adapter = trained
    assert adapter.base_model == record["folder"] and adapter.base_hash == record["sha256"]
    meta = json.loads((Path(adapter.path) / "metadata.json").read_text())
    assert meta["base_model"]["gguf"] == record["gguf_path"] and meta["base_model"]["imported_as"] == record["id"]
    assert meta["adapted_modules"]["count"] == 30 * 7  # every projection of the 30 layers


def test_exports_point_at_the_gguf_and_serve_the_trained_prompt(trained):
    import transformers

    from learning.serve.gotemplate import ollama_prompt

    store, record, adapter = trained
    peft = export.export_adapter(store, adapter.id, "peft")
    assert {Path(f.path).name for f in peft.files} >= {"adapter_model.safetensors", "adapter_config.json"}
    ollama = export.export_adapter(store, adapter.id, "ollama")
    out = Path(ollama.out_dir)
    assert f"FROM {record['gguf_path']}\n" in (out / "Modelfile").read_text()  # the exact base the user serves
    assert ollama.max_delta_diff is not None and ollama.max_delta_diff < 1e-4
    served = json.loads((out / "served-prompt.json").read_text())
    assert served["mode"] == "messages" and not served["warnings"]
    # What Ollama renders from the TEMPLATE is what the real tokenizer renders, first <|im_start|> included.
    tok = transformers.AutoTokenizer.from_pretrained(record["folder"])
    template = json.loads((out / "ollama.json").read_text())["template"]
    for messages in (
        [{"role": "user", "content": "Add two numbers."}],
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Sort a list."}],
        [
            {"role": "user", "content": "a"},
            {"role": "assistant", "content": "b"},
            {"role": "user", "content": "c"},
        ],
    ):
        want = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        assert ollama_prompt(template, messages) == want
    assert want.startswith("<|im_start|>")
    deployed = deploy.deploy_adapter(store, adapter.id, "llamacpp")
    assert deployed.command is not None and deployed.command[deployed.command.index("-m") + 1] == record["gguf_path"]
    assert "--chat-template-file" in deployed.command


def test_evaluation_stops_where_serving_stops(trained):
    """An evaluation on the real chat model: answers end at <|im_end|> (well before
    max_new_tokens), and sanity prompts are asked inside the chat template, as served."""
    from learning.evaluate import evaluation

    store, _, adapter = trained
    started = evaluation.evaluate_adapter(store, adapter.id, max_generate=2, max_new_tokens=40, batch_size=2)
    status = jobs.wait_job(store, started.job_id, timeout=900)  # type: ignore[arg-type]
    assert status.status == "succeeded", (status.error, status.log_tail)
    folder = Path(adapter.path) / "eval"
    m = json.loads((folder / "metrics.json").read_text())
    assert "<|im_end|>" in m["stops"]["tokens"] and m["generated"] == 2
    sanity = json.loads((folder / "sanity_responses.json").read_text())
    assert sanity and all(s["served"].startswith("<|im_start|>") for s in sanity)
    assert all(s["served"].endswith("<|im_start|>assistant\n") for s in sanity)
    assert not any("<|im_end|>" in s[side] for s in sanity for side in ("adapter", "base"))


def test_merged_export_passes_at_f32_and_f16(trained):
    store, _, adapter = trained
    for dtype in ("f32", "f16"):
        merged = export.export_adapter(store, adapter.id, "merged", dtype=dtype)
        assert merged.max_logit_diff is not None


def test_llamacpp_on_the_q4_base_does_what_peft_does(trained, real_gguf):
    """The adapter's effect on logits in llama.cpp, over the ORIGINAL Q4_1 GGUF, against PEFT."""
    pytest.importorskip("llama_cpp", reason="llama-cpp-python not installed (pip install 'learnloop[llamacpp]')")
    import tests.support.llamacpp_check as lc

    store, record, adapter = trained
    gguf = Path(export.export_adapter(store, adapter.id, "gguf").out_dir) / "adapter.gguf"
    import transformers

    tok = transformers.AutoTokenizer.from_pretrained(record["folder"])
    ids = tok(tok.apply_chat_template(CHAT, tokenize=False))["input_ids"]
    found = lc.compare_logits(Path(record["folder"]), Path(adapter.path), real_gguf, gguf, ids)
    assert found["effect_correlation"] >= 0.99, found


def test_a_gguf_not_imported_is_refused_with_the_command_to_run(imported, tmp_path):
    from learning.errors import InvalidInput

    store, _ = imported
    other = tmp_path / "other.gguf"
    other.write_bytes(b"GGUF")
    make_dataset(store, "ds-other", fmt="messages", rows=12)
    with pytest.raises(InvalidInput, match="learnloop base import"):
        training.train_adapter(store, "coder", "ds-other", base=str(other), dry_run=True)
