"""Export for every architecture in learning.models.architectures: GGUF and Ollama files laid out
as llama.cpp's converter lays out the base (names from gguf's tensor map, lora_a (r, in), lora_b
(out, r), q/k rows permuted for Llama-family bases, GPT-NeoX's query_key_value rows regrouped), and
merged exports checked relative to the logits' scale at f32 and f16.

Each base is a tiny random-weight model built from transformers' config classes (2 layers,
hidden 64, 4 heads and 2 key-value heads where the architecture has them); each adapter is made
with peft on the table's linear layers with random, non-zero lora_B.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from learning.errors import InvalidInput
from learning.models.architectures import ARCHITECTURES
from learning.registry.adapters import create_adapter
from learning.serve import gguf as gx
from learning.serve.export import export_adapter

COMMON = dict(
    vocab_size=128,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    max_position_embeddings=128,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
)
# model_type -> (transformers config class, what it needs beyond COMMON)
CONFIGS = {
    "llama": ("LlamaConfig", dict(num_key_value_heads=2)),
    "mistral": ("MistralConfig", dict(num_key_value_heads=2, sliding_window=None)),
    "qwen2": ("Qwen2Config", dict(num_key_value_heads=2)),
    "qwen3": ("Qwen3Config", dict(num_key_value_heads=2, head_dim=16)),
    "gemma2": ("Gemma2Config", dict(num_key_value_heads=2, head_dim=16)),
    "gemma3_text": ("Gemma3TextConfig", dict(num_key_value_heads=2, head_dim=16)),
    "phi3": ("Phi3Config", dict(num_key_value_heads=2)),
    "olmo2": ("Olmo2Config", dict(num_key_value_heads=2)),
    "stablelm": ("StableLmConfig", dict(num_key_value_heads=2)),
    "gpt_neox": ("GPTNeoXConfig", dict()),
}
# Every table entry with a text-only causal LM is built here (gemma3's multimodal config is not).
assert set(ARCHITECTURES) - set(CONFIGS) == {"gemma3"}


def _base(model_type: str, folder: Path, logit_scale: float = 1.0) -> Path:
    import torch
    import transformers
    from transformers import AutoModelForCausalLM

    name, extra = CONFIGS[model_type]
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(getattr(transformers, name)(**COMMON, **extra))
    if logit_scale != 1.0:  # logits as large as a real model's (they reach 30-40 there)
        with torch.no_grad():
            model.get_output_embeddings().weight.mul_(logit_scale)
    model.save_pretrained(folder)
    return folder


def _adapter(base: Path, folder: Path, model_type: str, seed: int = 1) -> Path:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    targets = list(ARCHITECTURES[model_type].linear)
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32),
        LoraConfig(r=4, lora_alpha=8, target_modules=targets, init_lora_weights=False),
    )
    model.save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("archs")
    made = {}
    for model_type in CONFIGS:
        base = _base(model_type, root / model_type)
        made[model_type] = (base, _adapter(base, root / f"{model_type}_lora", model_type))
    return made


def _register(store, built, model_type: str) -> str:
    base, adapter = built[model_type]
    return create_adapter(store, f"{model_type}-1", "coder", str(base), str(adapter), status="trained").id


# ---- expected layouts, written from llama.cpp's converter independently of learning.serve.gguf ----


def _rope_order(rows: int, n_head: int) -> list[int]:
    """LlamaModel.permute: within each head, row (t, i) of the (2, head_dim/2) halves moves to (i, t)."""
    half = rows // n_head // 2
    return [h * 2 * half + t * half + i for h in range(n_head) for i in range(half) for t in range(2)]


def _neox_order(rows: int, n_head: int) -> list[int]:
    """GPTNeoXModel.modify_tensors: HF rows are (head, q|k|v, d); GGUF rows are (q|k|v, head, d)."""
    hd = rows // n_head // 3
    return [h * 3 * hd + j * hd + d for j in range(3) for h in range(n_head) for d in range(hd)]


def _expected_rows(model_type: str, module: str, rows: int) -> list[int]:
    if model_type in ("llama", "mistral") and module.endswith("q_proj"):
        return _rope_order(rows, 4)
    if model_type in ("llama", "mistral") and module.endswith("k_proj"):
        return _rope_order(rows, 2)
    if model_type == "gpt_neox" and module.endswith("query_key_value"):
        return _neox_order(rows, 4)
    return list(range(rows))


@pytest.mark.parametrize("model_type", list(CONFIGS))
def test_gguf_and_ollama_export_in_llamacpp_layout(store, built, model_type):
    import gguf
    from safetensors.numpy import load_file

    aid = _register(store, built, model_type)
    result = export_adapter(store, aid, "gguf")  # raises unless its read-back verification passed
    assert result.max_delta_diff is not None and result.max_delta_diff < 1e-6
    keys, tensors = gx.read_lora_gguf(Path(result.out_dir) / "adapter.gguf")
    arch = ARCHITECTURES[model_type]
    assert keys["general.architecture"] == arch.gguf_arch and keys["adapter.type"] == "lora"
    tmap = gguf.get_tensor_name_map(next(a for a, n in gguf.MODEL_ARCH_NAMES.items() if n == arch.gguf_arch), 2)
    base_shapes = {k: v.shape for k, v in load_file(str(built[model_type][0] / "model.safetensors")).items()}
    _, peft = gx.load_peft(built[model_type][1])
    expected = set()
    for key, lora_a in peft.items():
        if ".lora_A." not in key:
            continue
        module = key[len("base_model.model.") :].split(".lora_A.")[0]
        stem = tmap.get_name(module + ".weight", try_suffixes=(".weight",))
        assert stem is not None and stem.startswith("blk."), module
        out_features, in_features = base_shapes[module + ".weight"]
        a, b = tensors[stem + ".lora_a"], tensors[stem + ".lora_b"]
        assert a.shape == (4, in_features) and b.shape == (out_features, 4), stem
        assert np.array_equal(a, lora_a)
        lora_b = peft[key.replace(".lora_A.", ".lora_B.")]
        assert np.array_equal(b, lora_b[_expected_rows(model_type, module, out_features)]), stem
        expected |= {stem + ".lora_a", stem + ".lora_b"}
    assert set(tensors) == expected and len(expected) == 2 * 2 * len(arch.linear)
    ollama = export_adapter(store, aid, "ollama")
    assert "ADAPTER ./adapter.gguf" in (Path(ollama.out_dir) / "Modelfile").read_text()
    own_engine = any("loras are not yet implemented" in w for w in ollama.warnings)
    assert own_engine == (model_type in ("qwen3", "gemma3_text"))


@pytest.mark.parametrize("model_type", ["llama", "gpt_neox"])
def test_a_missing_reorder_fails_verification(built, tmp_path, model_type):
    base_dir, adapter = built[model_type]
    base = gx.BaseShape.from_config(json.loads((base_dir / "config.json").read_text()))
    gx.write_lora_gguf(adapter, base, tmp_path / "good.gguf")
    assert gx.verify_lora_gguf(tmp_path / "good.gguf", adapter, base)["problems"] == []
    gx.write_lora_gguf(adapter, base, tmp_path / "bad.gguf", reorder=False)
    report = gx.verify_lora_gguf(tmp_path / "bad.gguf", adapter, base)
    assert any("row layout" in p for p in report["problems"]), report


def test_unknown_architecture_refuses_gguf_and_ollama(store, built, tmp_path):
    shutil.copytree(built["llama"][0], tmp_path / "falcon")
    cfg_path = tmp_path / "falcon" / "config.json"
    cfg_path.write_text(json.dumps({**json.loads(cfg_path.read_text()), "model_type": "falcon"}))
    create_adapter(store, "falcon-1", "coder", str(tmp_path / "falcon"), str(built["llama"][1]), status="trained")
    for fmt in ("gguf", "ollama"):
        with pytest.raises(InvalidInput, match=r"'falcon' is not supported.*export 'peft' or 'merged'"):
            export_adapter(store, "falcon-1", fmt)
    assert export_adapter(store, "falcon-1", "peft").files


# ---- merged exports: tolerances relative to the logits' scale ----------------------------------


@pytest.mark.parametrize("model_type", list(CONFIGS))
def test_merged_export_passes_at_f32_and_f16(store, built, model_type):
    aid = _register(store, built, model_type)
    for dtype in ("f32", "f16"):
        result = export_adapter(store, aid, "merged", dtype=dtype)
        assert result.max_logit_diff is not None
        assert any("of their scale" in c for c in result.checks)


@pytest.fixture(scope="module")
def loud(tmp_path_factory):
    """A tiny Llama whose logits reach the hundreds, its adapter, and the logits of base+adapter."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    root = tmp_path_factory.mktemp("loud")
    base = _base("llama", root / "base", logit_scale=300.0)
    adapter = _adapter(base, root / "lora", "llama")
    ids = torch.tensor([[(7 * i + 3) % 128 for i in range(24)]])
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32), str(adapter))
    with torch.no_grad():
        reference = model.eval()(ids).logits
    return {"base": base, "adapter": adapter, "ids": ids, "reference": reference}


def _logits(loud, folder: Path, merge: bool):
    """base+adapter (PEFT) or the merged model's logits on the probe."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(loud["base"], dtype=torch.float32)
    model = PeftModel.from_pretrained(base, str(folder))
    with torch.no_grad():
        return (model.merge_and_unload() if merge else model).eval()(loud["ids"]).logits


def _variant(src: Path, folder: Path, b_scale: float = 1.0, alpha_scale: float = 1.0, drop_layer: str = "") -> Path:
    """A copy of an adapter with lora_B scaled (a gentler adapter), alpha scaled, or one layer's LoRA zeroed."""
    from safetensors.numpy import load_file, save_file

    shutil.copytree(src, folder)
    cfg = json.loads((folder / "adapter_config.json").read_text())
    (folder / "adapter_config.json").write_text(json.dumps({**cfg, "lora_alpha": alpha_scale * cfg["lora_alpha"]}))
    tensors = load_file(str(folder / "adapter_model.safetensors"))
    for key in [k for k in tensors if "lora_B" in k]:
        tensors[key] = tensors[key] * (0.0 if drop_layer and drop_layer in key else b_scale)
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    return folder


def test_large_logits_pass_where_an_absolute_tolerance_failed(store, loud):
    from learning.serve.merge import logit_agreement

    assert logit_agreement(loud["reference"], loud["reference"])["scale"] > 30
    create_adapter(store, "loud-1", "coder", str(loud["base"]), str(loud["adapter"]), status="trained")
    f32 = export_adapter(store, "loud-1", "merged", dtype="f32").max_logit_diff
    assert f32 is not None and f32 > 1e-5  # float32 rounding on logits this large: 5.6e-4 here
    assert export_adapter(store, "loud-1", "merged", dtype="f16").max_logit_diff is not None


def test_a_wrong_merge_fails(loud, tmp_path):
    """Merges that are not base+adapter, made for real: the adapter's scaling doubled, and one
    layer's LoRA left out. The merge itself is checked at f32 whatever dtype is written: that
    catches them even for a gentle adapter that moves the logits by ~1% of their scale; the
    written f16 file's looser check still catches them for the full-strength adapter."""
    from learning.serve.merge import logit_agreement, merge_problems

    for strength in (1.0, 0.001):
        right = _variant(loud["adapter"], tmp_path / f"right{strength}", b_scale=strength)
        reference = _logits(loud, right, merge=False)
        faithful = logit_agreement(reference, _logits(loud, right, merge=True))
        assert merge_problems(faithful, "f32") == [] and faithful["top1"] == 1.0
        doubled = _variant(right, tmp_path / f"doubled{strength}", alpha_scale=2.0)
        unmerged = _variant(right, tmp_path / f"unmerged{strength}", drop_layer=".layers.1.")
        for wrong in (doubled, unmerged):
            agreement = logit_agreement(reference, _logits(loud, wrong, merge=True))
            for dtype in ("f32", "f16") if strength == 1.0 else ("f32",):
                problems = merge_problems(agreement, dtype)
                assert problems and "of their scale" in problems[0], (wrong.name, dtype, agreement)
            assert agreement["relative"] < 0.02 or strength == 1.0  # gentle: a small, real error
