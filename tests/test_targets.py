"""target_modules resolved in train_adapter's plan against the base's own linear layers, the
export formats it lists, what PEFT really adapted, and nothing left behind by a job that failed
before training. Tiny random Phi-3, GPT-NeoX and Llama folders built from transformers' config
classes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from learning.errors import InvalidInput
from learning.jobs import manage as jobs
from learning.registry import adapters as registry
from learning.registry.queries import adapter_rows
from learning.store import Store
from learning.train import launch as training
from learning.train.config import Preset, build_config
from learning.train.estimates import estimate_run
from learning.train.targets import adapted_mismatch, adapted_modules, read_shapes, resolve_targets
from tests.support.train_helpers import make_dataset

PHI3 = ["down_proj", "gate_up_proj", "o_proj", "qkv_proj"]
NEOX = ["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"]
LLAMA = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    corpus = [f"def add_{i}(x):\n    return x + {i}\n" for i in range(50)]
    tok.train_from_iterator(
        corpus,
        trainers.BpeTrainer(
            vocab_size=300,
            special_tokens=["<pad>", "<s>", "</s>"],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        ),
    )
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>")


def _build(folder: Path, kind: str) -> Path:
    """A 2-layer, hidden-64 random model of one architecture, with a byte-level BPE tokenizer."""
    import torch
    from transformers import (
        GPTNeoXConfig,
        GPTNeoXForCausalLM,
        LlamaConfig,
        LlamaForCausalLM,
        Phi3Config,
        Phi3ForCausalLM,
    )

    tok = _tokenizer()
    tok.save_pretrained(folder)
    shared: dict[str, Any] = dict(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=256,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    torch.manual_seed(0)
    if kind == "phi3":
        model = Phi3ForCausalLM(Phi3Config(**shared, num_key_value_heads=4))
    elif kind == "gpt_neox":
        model = GPTNeoXForCausalLM(GPTNeoXConfig(**shared))
    else:
        model = LlamaForCausalLM(LlamaConfig(**shared, num_key_value_heads=4))
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def bases(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bases")
    made = {kind: _build(root / kind, kind) for kind in ("phi3", "gpt_neox", "llama")}
    # An architecture learnloop has no table entry for: Llama weights under another model_type.
    mystery = _build(root / "mystery", "llama")
    config = json.loads((mystery / "config.json").read_text())
    (mystery / "config.json").write_text(json.dumps({**config, "model_type": "mystery"}))
    made["mystery"] = mystery
    return made


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    s = Store(tmp_path_factory.mktemp("targets") / "home")
    make_dataset(s, "ds-sft")
    yield s
    s.close()


def plan(store, base: Path, preset: Preset = "default", **overrides):
    return training.train_adapter(
        store, "coder", "ds-sft", base=str(base), preset=preset, overrides=overrides or None, dry_run=True
    ).plan


# ---- the plan ----------------------------------------------------------------------------


def test_auto_resolves_each_architecture_to_its_own_layers(store, bases):
    phi3, neox, llama = plan(store, bases["phi3"]), plan(store, bases["gpt_neox"]), plan(store, bases["llama"])
    assert phi3.target_modules == phi3.config["target_modules"] == ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"]
    assert neox.target_modules == NEOX and llama.target_modules == LLAMA
    for p in (phi3, neox, llama):
        assert p.export_formats == ["peft", "merged", "gguf", "ollama", "llamacpp"]
    assert training.train_adapter(store, "coder", "ds-sft", dry_run=True).plan.target_modules == LLAMA  # embedded
    assert not adapter_rows(store)


def test_attention_and_all_linear_follow_the_architecture(store, bases):
    assert plan(store, bases["phi3"], preset="light").target_modules == ["qkv_proj", "o_proj"]
    assert plan(store, bases["gpt_neox"], preset="light").target_modules == ["query_key_value", "dense"]
    assert sorted(plan(store, bases["phi3"], target_modules="all-linear").target_modules) == PHI3


def test_a_name_that_matches_nothing_is_refused_with_the_layers_that_exist(store, bases):
    with pytest.raises(InvalidInput) as exc:
        plan(store, bases["phi3"], target_modules=["q_proj", "v_proj"])
    message = str(exc.value)
    assert "q_proj, v_proj match no layer" in message and "auto" in message and "all-linear" in message
    assert all(name in message for name in PHI3)
    assert not adapter_rows(store)


def test_a_partial_match_is_noted_and_the_unmatched_names_dropped(store, bases):
    p = plan(store, bases["phi3"], target_modules=["qkv_proj", "q_proj", "self_attn.o_proj"])
    assert p.target_modules == ["qkv_proj", "self_attn.o_proj"]
    assert any("q_proj match no layer" in n and "dropped" in n for n in p.notes)


def test_an_unknown_architecture_gets_every_linear_layer_and_no_gguf(store, bases):
    p = plan(store, bases["mystery"])
    assert sorted(p.target_modules) == sorted(LLAMA) and p.export_formats == ["peft", "merged"]
    assert any("not in learnloop's table" in n for n in p.notes)
    assert any("not gguf, ollama or llamacpp" in n for n in p.notes)
    with pytest.raises(InvalidInput, match="'attention' needs a known architecture"):
        plan(store, bases["mystery"], preset="light")


def test_a_base_without_linear_layers_is_refused(store, tmp_path):
    import torch
    from safetensors.torch import save_file

    _tokenizer().save_pretrained(tmp_path)
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 4, "vocab_size": 10}
    (tmp_path / "config.json").write_text(json.dumps(config))
    save_file(
        {"model.embed_tokens.weight": torch.zeros(10, 4), "model.norm.weight": torch.ones(4)},
        tmp_path / "m.safetensors",
    )
    with pytest.raises(InvalidInput, match="no linear layers to adapt"):
        plan(store, tmp_path)


def test_unreadable_weights_fall_back_to_the_architecture():
    notes: list[str] = []
    assert resolve_targets("auto", "phi3", None, notes) == ([], ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"])
    assert resolve_targets("auto", "mystery", None, notes) == ([], "all-linear")
    problems, _ = resolve_targets(["q_proj"], "gpt_neox", None, notes)
    assert problems and "query_key_value" in problems[0]


def test_lora_parameter_estimate_uses_the_real_shapes(bases):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    for kind in ("phi3", "gpt_neox"):
        notes: list[str] = []
        shapes = read_shapes(bases[kind], notes)
        _, targets = resolve_targets("auto", kind, shapes, notes)
        cfg = build_config("default", {"target_modules": targets, "rank": 8})
        lora = estimate_run({}, cfg, 1, 16, 1, shapes)[3]
        model = get_peft_model(
            AutoModelForCausalLM.from_pretrained(bases[kind]), LoraConfig(r=8, target_modules=targets)
        )
        assert lora == sum(p.numel() for p in model.parameters() if p.requires_grad), kind


# ---- the job -----------------------------------------------------------------------------


@pytest.mark.slow
def test_training_on_phi3_adapts_what_the_plan_says(store, bases):
    started = training.train_adapter(
        store, "coder", "ds-sft", base=str(bases["phi3"]), max_steps=2, overrides={"batch_size": 4, "save_steps": 100}
    )
    status = jobs.wait_job(store, str(started.job_id), timeout=300)
    assert status.status == "succeeded", (status.error, status.log_tail)
    adapter = registry.get_adapter(store, started.adapter_id)
    folder = Path(adapter.path)
    planned = started.plan.target_modules
    assert set(json.loads((folder / "adapter_config.json").read_text())["target_modules"]) == set(planned)
    adapted = {"modules": sorted(planned), "count": 2 * len(planned)}  # 2 layers
    assert json.loads((folder / "metadata.json").read_text())["adapted_modules"] == adapted
    assert adapter.params["adapted_modules"] == adapted
    assert adapter.params["config"]["target_modules"] == planned


@pytest.mark.slow
def test_a_job_that_fails_before_training_leaves_nothing_in_the_registry(store, bases, tmp_path):
    # The plan reads the base from its files; a .bin that is not a checkpoint fails only when the job loads it.
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        (broken / name).write_bytes((bases["llama"] / name).read_bytes())
    (broken / "pytorch_model.bin").write_bytes(b"not a checkpoint")
    started = training.train_adapter(store, "coder", "ds-sft", base=str(broken), max_steps=2, adapter_id="coder-broken")
    assert started.plan.target_modules == LLAMA  # from the architecture: no safetensors to read
    status = jobs.wait_job(store, str(started.job_id), timeout=300)
    assert status.status == "failed" and "Nothing was trained" in (status.error or "")
    assert "coder-broken" not in {r["id"] for r in adapter_rows(store)}
    assert all(e.adapter_id != "coder-broken" for e in registry.adapter_history(store, role="coder"))
    assert not (store.home / "adapters" / "coder-broken").exists()


def test_a_difference_between_peft_and_the_plan_is_caught(bases):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(bases["phi3"]), LoraConfig(target_modules=["qkv_proj"]))
    adapted = adapted_modules(model)
    assert adapted == {"modules": ["qkv_proj"], "count": 2}
    assert adapted_mismatch(["qkv_proj"], adapted) is None
    assert "missing: o_proj" in (adapted_mismatch(["qkv_proj", "o_proj"], adapted) or "")
