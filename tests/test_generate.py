"""Generation: load a base (and an adapter) from folders, batched greedy decoding, stop strings."""

from __future__ import annotations

from pathlib import Path

import pytest

from learning.models.generate import cut_at_stop
from tests.support.tiny_models import token_id

pytestmark = pytest.mark.slow

TEXT = [
    "def add_one(x):\n    return x + 1\n",
    "def reverse(items):\n    return items[::-1]\n",
    "### Task:\nWrite a function that returns its input upper-cased.\n### Solution:\n",
    "def total(values):\n    return sum(values)\n",
] * 20


def build_tiny(folder: Path) -> Path:
    """A randomly initialised 2-layer Llama and a byte-level BPE tokenizer, saved to `folder`."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    raw.train_from_iterator(
        TEXT,
        trainers.BpeTrainer(
            vocab_size=300,
            special_tokens=["<pad>", "<s>", "</s>"],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        ),
    )
    tok = PreTrainedTokenizerFast(tokenizer_object=raw, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=256,
        bos_token_id=token_id(tok.bos_token_id),
        eos_token_id=token_id(tok.eos_token_id),
        pad_token_id=token_id(tok.pad_token_id),
    )
    model = LlamaForCausalLM(config)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory) -> Path:
    return build_tiny(tmp_path_factory.mktemp("gen") / "base")


def test_cut_at_stop_takes_the_earliest():
    assert cut_at_stop("abc###def\n\nx", ["\n\n", "###"]) == "abc"
    assert cut_at_stop("abc", ["zz"]) == "abc"
    assert cut_at_stop("abc", []) == "abc"


def test_batched_equals_one_by_one_and_is_deterministic(base_dir):
    from learning.models.generate import generate, load_model

    model, tok = load_model(base_dir, device="cpu")
    prompts = ["def f(x):", "### Task:\nreverse a list\n### Solution:\n", "a", "def total(values):\n    return"]
    batched = generate(model, tok, prompts, max_new_tokens=12, batch_size=4)
    single = [generate(model, tok, [p], max_new_tokens=12, batch_size=1)[0] for p in prompts]
    assert batched == single
    assert generate(model, tok, prompts, max_new_tokens=12, batch_size=3) == batched
    assert all(isinstance(c, str) for c in batched) and any(batched)


def test_stop_string_cuts_and_ends_generation_early(base_dir):
    from learning.models.generate import generate, load_model

    model, tok = load_model(base_dir, device="cpu")
    prompt = "def f(x):"
    full = generate(model, tok, [prompt], max_new_tokens=30)[0]
    assert len(full) >= 6
    stop = full[3:6]
    cut = generate(model, tok, [prompt, "abc"], max_new_tokens=30, stop=[stop])[0]
    assert cut == full[: full.find(stop)]
    assert stop not in cut


def test_adapter_on_and_off_from_one_loaded_model(base_dir, tmp_path):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from learning.models.generate import generate, has_adapter, load_model, without_adapter

    # An adapter with random (non-zero) LoRA weights, so it really changes the answers.
    torch.manual_seed(1)
    peft_model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(base_dir),
        LoraConfig(r=8, lora_alpha=64, target_modules=["q_proj", "v_proj", "o_proj"], init_lora_weights=False),
    )
    peft_model.save_pretrained(tmp_path / "adapter")

    prompts = ["def f(x):", "### Task:\nsum a list\n### Solution:\n"]
    base_model, tok = load_model(base_dir, device="cpu")
    assert not has_adapter(base_model)
    base_answers = generate(base_model, tok, prompts, max_new_tokens=16)

    model, tok = load_model(base_dir, adapter_path=tmp_path / "adapter", device="cpu")
    assert has_adapter(model)
    with without_adapter(model):
        assert generate(model, tok, prompts, max_new_tokens=16) == base_answers
    ids = tok(prompts[0], return_tensors="pt")
    with torch.inference_mode():
        with_adapter_logits = model(**ids).logits
        with without_adapter(model):
            base_logits = model(**ids).logits
    assert not torch.allclose(with_adapter_logits, base_logits)


def test_missing_folders_are_reported(tmp_path, base_dir):
    from learning.errors import NotFound
    from learning.models.generate import load_model

    with pytest.raises(NotFound, match="No base model folder"):
        load_model(tmp_path / "nope")
    with pytest.raises(NotFound, match="adapter_config.json"):
        load_model(base_dir, adapter_path=tmp_path / "nope")
