"""The embedded base model: builds offline, loads like any model, deterministic."""

from __future__ import annotations

import json

import pytest

from tests.conftest import run_cli


@pytest.mark.slow
def test_init_base_builds_a_model_that_loads_like_any_other(store, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from learning.models.tinybase import build_base, ensure_base

    result = run_cli("init-base", "--size", "tiny", "--json", home=store.home, timeout=300)
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["built"] and info["size"] == "tiny" and info["parameters"] > 0
    again = ensure_base(store, "tiny")  # reused, not rebuilt
    assert not again.built and again.path == info["path"]

    model = AutoModelForCausalLM.from_pretrained(info["path"])
    tok = AutoTokenizer.from_pretrained(info["path"])
    assert model.config.model_type == "llama"
    assert None not in (tok.pad_token_id, tok.eos_token_id, tok.bos_token_id) and tok.pad_token_id != tok.eos_token_id
    # Code round-trips exactly, whitespace included (SentencePiece with byte fallback).
    code = "def add_k(xs):\n    return [x + 7 for x in xs]\n\n\tü ✓"
    assert tok.decode(tok(code)["input_ids"], skip_special_tokens=True) == code
    chat = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert chat.endswith("<|assistant|>\n")
    # transformers types from_pretrained's model as a class that fails generate's own self-type protocol
    inputs = tok("def f(x):", return_tensors="pt")
    out = model.generate(**inputs, max_new_tokens=5, do_sample=False)  # pyright: ignore[reportAttributeAccessIssue]
    assert out.shape[1] > 1

    # Same seed, same bytes, built in another process.
    other = build_base(tmp_path / "again", "tiny")
    assert (other / "model.safetensors").read_bytes() == (store.home / "base/tiny/model.safetensors").read_bytes()
    assert (other / "tokenizer.model").exists()


def test_unknown_size_is_rejected(store):
    from learning.errors import InvalidInput
    from learning.models.tinybase import ensure_base

    with pytest.raises(InvalidInput, match="tiny"):
        ensure_base(store, "huge")


@pytest.mark.slow
def test_a_seedless_request_keeps_the_homes_base_and_a_seeded_one_rebuilds_it(store):
    """Training and evaluation jobs ask for the embedded base without a seed: they must use the base
    the home has (the demo's `--seed 1` built it), never rebuild it from seed 0 under the adapters."""
    from learning.models.tinybase import ensure_base

    first = ensure_base(store, "tiny", seed=1)
    weights = (store.home / "base/tiny/model.safetensors").read_bytes()
    kept = ensure_base(store, "tiny")
    assert first.built and not kept.built and kept.seed == 1
    assert (store.home / "base/tiny/model.safetensors").read_bytes() == weights
    rebuilt = ensure_base(store, "tiny", seed=2)
    assert rebuilt.built and rebuilt.seed == 2
    assert (store.home / "base/tiny/model.safetensors").read_bytes() != weights
