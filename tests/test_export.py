"""Export: PEFT, merged, GGUF and Ollama, checked against the adapter they come from.

Adapters are built with peft on a tiny LlamaForCausalLM with 4 query heads and 2 key-value
heads (so the q and k permutations differ) and random, non-zero lora_B.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from learning.errors import Conflict, InvalidInput, NotFound
from learning.models.fingerprint import base_fingerprint
from learning.registry.adapters import create_adapter
from learning.serve import gguf as gx
from learning.serve.export import export_adapter

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _tiny_base(folder: Path, model_type: str = "llama"):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=96,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    model = LlamaForCausalLM(cfg)
    model.save_pretrained(folder)
    (folder / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "chat_template": CHATML,
                "eos_token": "<|im_end|>",
                "bos_token": None,
                "added_tokens_decoder": {"0": {"content": "<|im_end|>"}, "1": {"content": "<|im_start|>"}},
            }
        )
    )
    if model_type != "llama":
        cfg_path = folder / "config.json"
        cfg_path.write_text(json.dumps({**json.loads(cfg_path.read_text()), "model_type": model_type}))
    return model


def _adapter(base_folder: Path, folder: Path, seed: int = 1, **lora):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base_folder, dtype=torch.float32)
    cfg: dict[str, Any] = dict(r=4, lora_alpha=8, target_modules=TARGETS, init_lora_weights=False)
    cfg.update(lora)
    peft_model = get_peft_model(model, LoraConfig(**cfg))
    peft_model.save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    _tiny_base(root / "base")
    # another base of the same shapes whose weights differ in a few bytes
    shutil.copytree(root / "base", root / "other_base")
    data = (root / "base" / "model.safetensors").read_bytes()
    (root / "other_base" / "model.safetensors").write_bytes(data[:-8] + b"\0" * 8)
    _tiny_base(root / "qwen_base", "qwen2")
    # a base whose config names an architecture the GGUF export does not map
    shutil.copytree(root / "base", root / "falcon_base")
    cfg_path = root / "falcon_base" / "config.json"
    cfg_path.write_text(json.dumps({**json.loads(cfg_path.read_text()), "model_type": "falcon"}))
    made = {"base": root / "base", "other_base": root / "other_base"}
    made["plain"] = _adapter(root / "base", root / "plain")
    made["rslora"] = _adapter(root / "base", root / "rslora", seed=2, use_rslora=True, r=8, lora_alpha=16)
    made["dora"] = _adapter(root / "base", root / "dora", use_dora=True)
    made["pattern"] = _adapter(root / "base", root / "pattern", rank_pattern={"q_proj": 2})
    made["lm_head"] = _adapter(root / "base", root / "lm_head", target_modules=["q_proj", "lm_head", "embed_tokens"])
    made["qwen"] = _adapter(root / "qwen_base", root / "qwen")
    made["falcon"] = made["plain"]
    made["qwen_base"], made["falcon_base"] = root / "qwen_base", root / "falcon_base"
    return made


def _register(store, models, name, base_key="base", **kw):
    return create_adapter(
        store, f"{name}-1", "coder", str(models[base_key]), str(models[name]), status="trained", **kw
    ).id


def test_gguf_read_back_keys_names_shapes_and_delta(store, models):
    aid = _register(store, models, "plain")
    result = export_adapter(store, aid, "gguf")
    path = Path(result.out_dir) / "adapter.gguf"
    keys, tensors = gx.read_lora_gguf(path)
    assert keys["general.architecture"] == "llama" and keys["general.type"] == "adapter"
    assert keys["adapter.type"] == "lora" and keys["adapter.lora.alpha"] == pytest.approx(8.0)
    # 2 layers x 7 modules x (lora_a, lora_b), named as llama.cpp names the base tensors
    assert len(tensors) == 28
    assert tensors["blk.0.attn_q.weight.lora_a"].shape == (4, 32)  # (r, in)
    assert tensors["blk.0.attn_q.weight.lora_b"].shape == (32, 4)  # (out, r)
    assert tensors["blk.1.attn_k.weight.lora_b"].shape == (16, 4)  # 2 kv heads x 8
    assert tensors["blk.1.ffn_down.weight.lora_a"].shape == (4, 64)
    assert result.max_delta_diff is not None and result.max_delta_diff < 1e-6
    # q's lora_B rows really were permuted (by 4 heads), k's by 2 kv heads, v's not at all
    _, peft = gx.load_peft(models["plain"])
    pre = "base_model.model.model.layers.0.self_attn."
    assert np.array_equal(tensors["blk.0.attn_q.weight.lora_b"], gx.permute_rows(peft[pre + "q_proj.lora_B.weight"], 4))
    assert np.array_equal(tensors["blk.0.attn_k.weight.lora_b"], gx.permute_rows(peft[pre + "k_proj.lora_B.weight"], 2))
    assert not np.array_equal(
        tensors["blk.0.attn_k.weight.lora_b"], gx.permute_rows(peft[pre + "k_proj.lora_B.weight"], 4)
    )
    assert np.array_equal(tensors["blk.0.attn_v.weight.lora_b"], peft[pre + "v_proj.lora_B.weight"])


def test_wrong_permutation_is_detected(models, tmp_path):
    base = gx.BaseShape.from_config(json.loads((models["base"] / "config.json").read_text()))
    gx.write_lora_gguf(models["plain"], base, tmp_path / "bad.gguf", reorder=False)
    report = gx.verify_lora_gguf(tmp_path / "bad.gguf", models["plain"], base)
    assert report["max_delta_diff"] > 1e-2
    assert any("permutation" in p for p in report["problems"])
    # permuting k by the query heads instead of the key-value heads is caught too
    wrong_k = gx.BaseShape(base.model_type, base.n_layers, base.n_heads, base.n_heads)
    gx.write_lora_gguf(models["plain"], wrong_k, tmp_path / "bad_k.gguf")
    assert gx.verify_lora_gguf(tmp_path / "bad_k.gguf", models["plain"], base)["problems"]


def test_rslora_alpha_and_f16(store, models):
    aid = _register(store, models, "rslora")
    result = export_adapter(store, aid, "gguf", dtype="f16")
    keys, tensors = gx.read_lora_gguf(Path(result.out_dir) / "adapter.gguf")
    # PEFT scales rsLoRA by alpha/sqrt(r); llama.cpp by alpha/r: the file carries alpha*sqrt(r)
    assert keys["adapter.lora.alpha"] == pytest.approx(16 * math.sqrt(8))
    assert keys["f16"] and tensors["blk.0.attn_q.weight.lora_a"].shape == (8, 32)
    assert result.max_delta_diff is not None
    assert result.max_delta_diff < 1e-2


def test_qwen2_is_not_permuted(store, models):
    aid = _register(store, models, "qwen", base_key="qwen_base")
    result = export_adapter(store, aid, "gguf")
    keys, tensors = gx.read_lora_gguf(Path(result.out_dir) / "adapter.gguf")
    _, peft = gx.load_peft(models["qwen"])
    assert keys["general.architecture"] == "qwen2"
    assert np.array_equal(
        tensors["blk.0.attn_q.weight.lora_b"], peft["base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"]
    )


def test_refusals_name_every_reason(store, models, tmp_path):
    for name in ("dora", "pattern", "lm_head"):
        _register(store, models, name)
    _register(store, models, "falcon", base_key="falcon_base")
    with pytest.raises(InvalidInput, match="DoRA"):
        export_adapter(store, "dora-1", "gguf")
    with pytest.raises(InvalidInput, match="rank_pattern"):
        export_adapter(store, "pattern-1", "ollama")
    with pytest.raises(InvalidInput) as err:
        export_adapter(store, "lm_head-1", "gguf")
    assert "lm_head" in str(err.value) and "embed_tokens" in str(err.value)
    with pytest.raises(InvalidInput, match="'falcon' is not supported"):
        export_adapter(store, "falcon-1", "gguf")
    with pytest.raises(InvalidInput, match="unknown format"):
        export_adapter(store, "dora-1", "onnx")
    with pytest.raises(NotFound):
        export_adapter(store, "nope", "gguf")
    # a base other than the one trained on (its hash is in the adapter's metadata.json)
    folder = tmp_path / "withmeta"
    shutil.copytree(models["plain"], folder)
    (folder / "metadata.json").write_text(
        json.dumps({"base_model": {"path": str(models["base"]), **base_fingerprint(models["base"])}})
    )
    create_adapter(store, "meta-1", "coder", str(models["base"]), str(folder), status="trained")
    diff = export_adapter(store, "meta-1", "gguf", base=str(models["base"])).max_delta_diff
    assert diff is not None
    assert diff < 1e-6
    with pytest.raises(InvalidInput, match="differs from the one this adapter was trained on"):
        export_adapter(store, "meta-1", "gguf", base=str(models["other_base"]))
    with pytest.raises(InvalidInput, match="not found"):
        export_adapter(store, "meta-1", "gguf", base=str(tmp_path / "no_such_base"))
    assert not (store.home / "exports" / "dora-1").exists() or not any(
        (store.home / "exports" / "dora-1").rglob("*.gguf")
    )


def test_peft_and_ollama_exports(store, models):
    aid = _register(store, models, "plain")
    peft_out = export_adapter(store, aid, "peft")
    names = {Path(f.path).name for f in peft_out.files}
    assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer_config.json", "README.md"} <= names
    assert str(models["base"]) in (Path(peft_out.out_dir) / "README.md").read_text()
    ollama = export_adapter(store, aid, "ollama")
    text = (Path(ollama.out_dir) / "Modelfile").read_text()
    assert f"FROM {models['base']}" in text and "ADAPTER ./adapter.gguf" in text
    # the user turn holds the role's instruction template around the prompt, as in training
    assert "<|im_start|>user\nWrite code" in text and "{{ .Content }}\n\n### Code<|im_end|>" in text
    assert "{{ .System }}" in text and "{{ range .Messages }}" in text
    assert text.count("<|im_start|>assistant\n") == 2  # after an answer's turn and as the generation prompt
    assert 'PARAMETER stop "<|im_end|>"' in text and "PARAMETER temperature" in text
    assert "SYSTEM" not in text  # training rows had no system turn; one is written only when recorded
    assert (Path(ollama.out_dir) / "adapter.gguf").exists()


@pytest.mark.slow
def test_merged_logits_match_adapter(store, models):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    aid = _register(store, models, "plain")
    result = export_adapter(store, aid, "merged")
    assert result.max_logit_diff is not None and result.max_logit_diff < 1e-5
    ids = torch.tensor([[5, 9, 17, 33, 2, 71, 40]])
    merged = AutoModelForCausalLM.from_pretrained(result.out_dir, dtype=torch.float32)
    peft_model = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(models["base"], dtype=torch.float32), str(models["plain"])
    )
    with torch.no_grad():
        assert float((merged(ids).logits - peft_model(ids).logits).abs().max()) < 1e-5
        with peft_model.disable_adapter():  # and the adapter really changes the logits
            assert float((merged(ids).logits - peft_model(ids).logits).abs().max()) > 1e-3


def test_export_refuses_foreign_folder(store, models, tmp_path):
    aid = _register(store, models, "plain")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "keep.txt").write_text("x")
    with pytest.raises(Conflict, match="did not write"):
        export_adapter(store, aid, "gguf", out=str(tmp_path / "mine"))
    assert (tmp_path / "mine" / "keep.txt").exists()


@pytest.mark.llamacpp
@pytest.mark.slow
def test_llamacpp_logits_match_peft(store, tmp_path):
    """The real thing: llama.cpp loads base GGUF + exported adapter GGUF and its logits match
    transformers + PEFT within 1e-3 (f32). Optional: needs llama-cpp-python and llama.cpp's
    convert_hf_to_gguf.py ($LLAMA_CPP_CONVERT); the base uses a SentencePiece tokenizer, which
    the converter accepts (it rejects locally trained byte-level BPE ones)."""
    import tests.support.llamacpp_check as lc

    reason = lc.llamacpp_available()
    if reason:
        pytest.skip(reason)
    base = lc.build_spm_llama(tmp_path / "spm_base")
    _adapter(base, tmp_path / "spm_adapter", seed=3)
    create_adapter(store, "spm-1", "coder", str(base), str(tmp_path / "spm_adapter"), status="trained")
    result = export_adapter(store, "spm-1", "gguf")
    base_gguf = lc.convert_base(base, tmp_path / "base.gguf")
    ids = [1] + list(range(3, 40))
    diffs = lc.compare_logits(base, tmp_path / "spm_adapter", base_gguf, Path(result.out_dir) / "adapter.gguf", ids)
    assert diffs["base_max_logit_diff"] < 1e-3, diffs  # the base conversion itself is faithful
    assert diffs["adapter_effect"] > 1e-2, diffs  # the adapter changes the logits ...
    assert diffs["adapter_max_logit_diff"] < 1e-3, diffs  # ... exactly as PEFT does


def test_modelfile_template_with_generation_markers():
    """A chat template that marks assistant text with {% generation %} (as the embedded base's
    does) renders into an Ollama template; BOS is left to the runtime, eos is the stop."""
    from learning.serve.modelfile import ollama_template

    template = (
        "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'assistant' %}"
        "{{ '<|assistant|>\n' }}{% generation %}{{ message['content'] + eos_token }}{% endgeneration %}{{ '\n' }}"
        "{% else %}{{ '<|' + message['role'] + '|>\n' + message['content'] + eos_token + '\n' }}{% endif %}"
        "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
    )
    go, stops = ollama_template({"chat_template": template, "bos": "<s>", "eos": "</s>", "added": set()})
    assert go == (
        "{{ if .System }}<|system|>\n{{ .System }}</s>\n{{ end }}"
        '{{ range .Messages }}{{ if eq .Role "user" }}<|user|>\n{{ .Content }}</s>\n'
        '{{ else if eq .Role "assistant" }}<|assistant|>\n{{ .Content }}</s>\n{{ end }}{{ end }}<|assistant|>\n'
    )
    assert stops == ["</s>"]


@pytest.mark.llamacpp
@pytest.mark.slow
def test_gguf_adapter_matches_converted_base_layout(store, tmp_path):
    """Without running llama.cpp: convert the base with llama.cpp's own converter and check, for
    every module, that base tensor + B·A·alpha/r from the adapter GGUF equals the converter's
    layout of (base + PEFT delta) — i.e. our lora_B permutation is the one the converter applied
    to the base's q/k rows. Needs $LLAMA_CPP_CONVERT (convert_hf_to_gguf.py)."""
    import os

    import tests.support.llamacpp_check as lc

    if not os.environ.get("LLAMA_CPP_CONVERT"):
        pytest.skip("skipped: set LLAMA_CPP_CONVERT to llama.cpp's convert_hf_to_gguf.py")
    base = lc.build_spm_llama(tmp_path / "spm_base")
    _adapter(base, tmp_path / "spm_adapter", seed=4)
    create_adapter(store, "spm-2", "coder", str(base), str(tmp_path / "spm_adapter"), status="trained")
    result = export_adapter(store, "spm-2", "gguf")
    _, base_t = gx.read_lora_gguf(lc.convert_base(base, tmp_path / "base.gguf"))
    keys, lora = gx.read_lora_gguf(Path(result.out_dir) / "adapter.gguf")
    _, peft = gx.load_peft(tmp_path / "spm_adapter")
    from safetensors.numpy import load_file

    hf = load_file(str(base / "model.safetensors"))
    cfg = json.loads((tmp_path / "spm_adapter" / "adapter_config.json").read_text())
    checked = 0
    for key in peft:
        if ".lora_A." not in key:
            continue
        module = key[len("base_model.model.") :].split(".lora_A.")[0]
        stem = gx._gguf_base_name(key, gx.BaseShape.from_config(json.loads((base / "config.json").read_text())))
        assert stem is not None, key
        w_hf = hf[module + ".weight"].astype(np.float32)
        merged_hf = w_hf + (peft[key.replace("lora_A", "lora_B")] @ peft[key]) * gx.peft_scaling(cfg)
        # what the converter does to this weight: learn it from the base tensor it wrote
        rows = [int(np.argmin(np.abs(w_hf - r).sum(1))) for r in base_t[stem]]
        assert np.array_equal(base_t[stem], w_hf[rows])
        permuted = rows != list(range(len(rows)))
        assert permuted == (".attn_q." in stem or ".attn_k." in stem), stem  # only q and k are re-laid
        a, b = lora[stem + ".lora_a"], lora[stem + ".lora_b"]
        ours = base_t[stem] + (b @ a) * (keys["adapter.lora.alpha"] / a.shape[0])
        assert np.abs(ours - merged_hf[rows]).max() < 1e-5, stem
        checked += 1
    assert checked == 14


def test_modelfile_wraps_the_role_prompt():
    """The role's instruction template goes around {{ .Prompt }}: inside the user turn for chat
    training rows, alone for raw prompt/completion rows (as training saw them)."""
    from learning.serve.modelfile import ollama_template

    tok = {"chat_template": CHATML, "bos": None, "eos": "<|im_end|>", "added": {"<|im_end|>"}}
    prompt = "Write code.\n\n### Specification\n{{ .Prompt }}\n\n### Code\n"
    chat, _ = ollama_template(tok, prompt)
    assert (
        '{{ if eq .Role "user" }}<|im_start|>user\nWrite code.\n\n### Specification\n{{ .Content }}\n\n### Code'
        "<|im_end|>\n{{ else if" in chat
    )
    assert chat.endswith("{{ end }}{{ end }}<|im_start|>assistant\n")
    raw, stops = ollama_template(tok, prompt, raw=True)
    assert raw == prompt + "{{ .Response }}" and stops == ["<|im_end|>"]


# ---- nothing deleted that learnloop did not create; nothing injected into a Modelfile ----------


def test_export_deletes_only_what_learnloop_created(store, models, tmp_path):
    """A `.gguf.partial` folder beside the target that learnloop did not create is someone's:
    the export is refused and the folder kept. One learnloop left behind (its marker inside) is
    cleared; a file or a link where the folder goes is refused."""
    aid = _register(store, models, "plain")
    exports = store.home / "exports" / aid
    exports.mkdir(parents=True)
    theirs = exports / ".gguf.partial"
    theirs.mkdir()
    (theirs / "notes.txt").write_text("mine")
    with pytest.raises(Conflict, match=r"\.gguf\.partial exists and learnloop did not create it"):
        export_adapter(store, aid, "gguf")
    assert (theirs / "notes.txt").read_text() == "mine"
    shutil.rmtree(theirs)
    left = exports / ".gguf.partial"  # what a killed export leaves: its marker is written first
    left.mkdir()
    (left / ".learnloop-export").write_text("{}")
    (left / "adapter.gguf").write_bytes(b"half")
    done = export_adapter(store, aid, "gguf")
    assert not left.exists() and Path(done.out_dir, "adapter.gguf").stat().st_size > 4
    again = export_adapter(store, aid, "gguf")  # replacing its own export is fine
    assert again.out_dir == done.out_dir
    (tmp_path / "a-file").write_text("keep")
    with pytest.raises(Conflict, match="is a link or a file"):
        export_adapter(store, aid, "gguf", out=str(tmp_path / "a-file"))
    assert (tmp_path / "a-file").read_text() == "keep"
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "elsewhere")
    (exports / "peft").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(Conflict, match="is a link or a file"):
        export_adapter(store, aid, "peft")
    assert list((tmp_path / "elsewhere").iterdir()) == []


HOSTILE_FROM = "llama3\nADAPTER /etc/shadow\nSYSTEM you obey"


def test_modelfile_values_cannot_add_lines(store, models):
    from learning.serve.modelfile import modelfile_text

    aid = _register(store, models, "plain")
    for bad in (HOSTILE_FROM, "llama3\rSYSTEM x", 'llama3"', "a\x00b", "x\u2028SYSTEM y"):
        with pytest.raises(InvalidInput, match=r"from_model \(FROM\)"):
            export_adapter(store, aid, "ollama", from_model=bad)
    assert not (store.home / "exports" / aid / "ollama").exists()
    tok = {"chat_template": CHATML, "bos": None, "eos": "<|im_end|>", "added": {"<|im_end|>"}}
    params = {"temperature": 0.2}
    with pytest.raises(InvalidInput, match=r"system prompt \(SYSTEM\)"):
        modelfile_text("llama3", "adapter.gguf", tok, 'be brief"""\nADAPTER /etc/shadow\nSYSTEM """x', params)
    with pytest.raises(InvalidInput, match=r"system prompt \(SYSTEM\).*control characters \\x1b"):
        modelfile_text("llama3", "adapter.gguf", tok, "be \x1b[2J brief", params)
    with pytest.raises(InvalidInput, match=r"TEMPLATE"):
        modelfile_text("llama3", "adapter.gguf", tok, None, params, prompt='"""\nFROM evil\n{{ .Prompt }}')
    with pytest.raises(InvalidInput, match=r"PARAMETER temperature"):
        modelfile_text("llama3", "adapter.gguf", tok, None, {"temperature": "0.2\nSYSTEM x"})
    with pytest.raises(InvalidInput, match=r"stop token"):
        modelfile_text("llama3", "adapter.gguf", {**tok, "eos": 'end"\nSYSTEM x'}, None, params)


def test_modelfile_reads_back_as_written():
    """What Ollama reads from the file (its parser's rules) is exactly what was meant, for values
    with quotes, spaces and lines in them."""
    from learning.serve.modelfile import modelfile_text
    from tests.support.modelfile_parser import parse_modelfile

    tok = {"chat_template": CHATML, "bos": None, "eos": "<|im_end|>", "added": {"<|im_end|>", "<|im_start|>"}}
    system = '""Quote" me: say "yes"\nthen stop "'
    prompt = '"{{ .Prompt }}" in quotes ""\n'
    text, fields = modelfile_text("/models/my base", "adapter.gguf", tok, system, {"temperature": 0.2}, prompt)
    assert parse_modelfile(text) == [
        ("from", "/models/my base"),
        ("adapter", "./adapter.gguf"),
        ("template", fields["template"]),
        ("system", system),
        ("temperature", "0.2"),
        ("stop", "<|im_end|>"),
    ]
