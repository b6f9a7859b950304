"""A tiny base model and a LoRA adapter trained on a toy coder task, built in seconds on CPU.

Used by the evaluation and lifecycle tests: the adapter really learns the task (lower eval
loss, code that compiles) while the random base does not.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from learning.data.datasets import content_hash, insert_dataset
from learning.store import Store

PROMPT = "### Task: write a function that returns {n}\n### Code:\n"
COMPLETION = "def f():\n    return {n}\n"


def token_id(value: object) -> int:
    """A special token's id, which the tokenizers built here all set. Transformers resolves
    `tokenizer.pad_token_id` and the like in __getattr__, so type checkers see a wide union."""
    assert isinstance(value, int), value
    return value


def toy_rows(start: int, count: int) -> list[dict]:
    return [
        {
            "prompt": PROMPT.format(n=n),
            "completion": COMPLETION.format(n=n),
            "tests": ["assert isinstance(f(), int)"],
        }
        for n in range(start, start + count)
    ]


def build_base(folder: Path, seed: int = 0, hidden: int = 64) -> Path:
    """A 2-layer Llama with a byte-level BPE tokenizer trained on the toy corpus."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    corpus = [r["prompt"] + r["completion"] for r in toy_rows(0, 200)] + ["def g(x):\n    return x + 1\n"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(
        corpus,
        trainers.BpeTrainer(
            vocab_size=300,
            special_tokens=["<pad>", "<s>", "</s>"],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        ),
    )
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>")
    fast.save_pretrained(folder)
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(fast),
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=256,
        pad_token_id=token_id(fast.pad_token_id),
        bos_token_id=token_id(fast.bos_token_id),
        eos_token_id=token_id(fast.eos_token_id),
    )
    LlamaForCausalLM(config).save_pretrained(folder)
    return folder


def train_toy_adapter(
    base: Path, out: Path, rows: list[dict], steps: int = 60, seed: int = 0, lr: float = 1e-2
) -> Path:
    """LoRA on every linear layer, a few full-batch steps on prompt+completion (loss on the completion)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(seed)
    tok = AutoTokenizer.from_pretrained(base)
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(base),
        LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM"),
    )
    seqs, labels = [], []
    for r in rows:
        p = tok(r["prompt"])["input_ids"]
        c = tok(r["completion"], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        seqs.append(p + c)
        labels.append([-100] * len(p) + c)
    width = max(map(len, seqs))
    ids = torch.tensor([s + [tok.pad_token_id] * (width - len(s)) for s in seqs])
    lab = torch.tensor([lab + [-100] * (width - len(lab)) for lab in labels])
    mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs])
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    for _ in range(steps):
        loss = model(input_ids=ids, attention_mask=mask, labels=lab).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    model.save_pretrained(str(out))
    tok.save_pretrained(out)
    (out / "metadata.json").write_text(json.dumps({"final_loss": loss.item()}))
    return out


def write_dataset(home: Path, dataset_id: str, train: list[dict], test: list[dict], role: str = "coder") -> Path:
    folder = home / "datasets" / dataset_id
    folder.mkdir(parents=True, exist_ok=True)
    for name, rows in (("train", train), ("test", test)):
        (folder / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "metadata.json").write_text(json.dumps({"id": dataset_id, "role": role, "format": "prompt_completion"}))
    record = dict(id=dataset_id, role=role, kind="sft", format="prompt_completion", created=time.time())
    insert_dataset(
        Store(home),
        {
            **record,
            "path": str(folder),
            "train_rows": len(train),
            "test_rows": len(test),
            "content_hash": content_hash(folder),
        },
    )
    return folder
