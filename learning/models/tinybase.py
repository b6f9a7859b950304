"""The embedded base model: a small Llama built and briefly pretrained here, from nothing.

`build_base` writes a folder that `AutoModelForCausalLM.from_pretrained` and
`AutoTokenizer.from_pretrained` load like any real model (offline): config.json,
model.safetensors, generation_config.json, a SentencePiece tokenizer (tokenizer.model, the
form llama.cpp's converter accepts, plus the tokenizer.json transformers derives from it)
with pad/bos/eos and a chat template, and learnloop_base.json describing how it was made.
The build is deterministic given the seed (same machine, same library versions).

Sizes: `tiny` (seconds; for tests) and `small` (43-62 s on 2 cores, pretrained on two threads; for
the demo). The pretraining budget is a number of steps, set by how soon the model learns to copy
a name from the prompt into its code; how it was chosen, and what was measured and not kept:
docs/training.md#how-the-pretraining-budget-was-chosen.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from pydantic import BaseModel

from learning.errors import InvalidInput
from learning.models.tinycorpus import CHAT_ASSISTANT, CHAT_USER, corpus

MARKER = "learnloop_base.json"
PRETRAIN_THREADS = 2

# Chat turns end with eos; assistant content is wrapped in generation markers so TRL's
# assistant_only_loss can find it.
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}{{ '<|assistant|>\n' }}"
    "{% generation %}{{ message['content'] + eos_token }}{% endgeneration %}{{ '\n' }}"
    "{% else %}{{ '<|' + message['role'] + '|>\n' + message['content'] + eos_token + '\n' }}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)


class BaseSpec(BaseModel):
    size: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    max_positions: int
    corpus_docs: int
    steps: int
    batch_size: int
    seq_len: int
    lr: float


SIZES: dict[str, BaseSpec] = {
    "tiny": BaseSpec(
        size="tiny",
        vocab_size=512,
        hidden_size=64,
        intermediate_size=128,
        num_layers=2,
        num_heads=2,
        max_positions=512,
        corpus_docs=1500,
        steps=30,
        batch_size=8,
        seq_len=64,
        lr=3e-3,
    ),
    "small": BaseSpec(
        size="small",
        vocab_size=1024,
        hidden_size=128,
        intermediate_size=256,
        num_layers=2,
        num_heads=4,
        max_positions=1024,
        corpus_docs=20000,
        steps=1200,
        batch_size=16,
        seq_len=64,
        lr=3e-3,
    ),
}


class BaseInfo(BaseModel):
    path: str
    size: str
    seed: int
    built: bool
    parameters: int
    final_loss: float | None
    build_s: float | None


def _train_tokenizer(docs: list[str], spec: BaseSpec, seed: int, out: Path) -> None:
    """A SentencePiece BPE model with byte fallback that keeps whitespace exactly (code)."""
    import sentencepiece as spm

    lines = [line for doc in docs for line in doc.replace("</s>", "").split("\n") if line]
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines),
        model_prefix=str(out / "tokenizer"),
        vocab_size=spec.vocab_size,
        model_type="bpe",
        byte_fallback=True,
        split_digits=True,
        remove_extra_whitespaces=False,
        normalization_rule_name="identity",
        add_dummy_prefix=False,
        allow_whitespace_only_pieces=True,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=3,
        character_coverage=1.0,
        hard_vocab_limit=False,
        user_defined_symbols=[CHAT_USER, CHAT_ASSISTANT, "<|system|>"],
        num_threads=1,
        shuffle_input_sentence=False,
        minloglevel=2,
    )
    (out / "tokenizer.vocab").unlink(missing_ok=True)
    (out / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "LlamaTokenizer",
                "bos_token": "<s>",
                "eos_token": "</s>",
                "unk_token": "<unk>",
                "pad_token": "<pad>",
                "add_bos_token": True,
                "add_eos_token": False,
                "legacy": False,
                "add_prefix_space": False,
                "model_max_length": spec.max_positions,
                "chat_template": CHAT_TEMPLATE,
            },
            indent=2,
        )
    )


def _token_stream(tokenizer, docs: list[str]):
    import torch

    ids: list[int] = []
    for enc in tokenizer(docs, add_special_tokens=False)["input_ids"]:
        ids += [tokenizer.bos_token_id, *enc, tokenizer.eos_token_id]
    return torch.tensor(ids, dtype=torch.long)


def _pretrain(model, stream, spec: BaseSpec, seed: int, log) -> float | None:
    """Plain next-token training on random windows of the corpus; returns the last loss."""
    import torch

    if spec.steps <= 0:
        return None
    gen = torch.Generator().manual_seed(seed)
    # Every window starts at a document's start (its bos), so a window holds the name's first
    # mention as well as the def line that copies it.
    doc_starts = (stream[: len(stream) - spec.seq_len - 1] == stream[0]).nonzero().flatten()
    opt = torch.optim.AdamW(model.parameters(), lr=spec.lr, weight_decay=0.01, betas=(0.9, 0.95))
    warmup = max(1, spec.steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warmup) * max(0.1, 1 - s / spec.steps))
    model.train()
    smooth = None
    for step in range(spec.steps):
        starts = doc_starts[torch.randint(0, len(doc_starts), (spec.batch_size,), generator=gen)]
        batch = torch.stack([stream[s : s + spec.seq_len] for s in starts.tolist()])
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        smooth = loss.item() if smooth is None else 0.95 * smooth + 0.05 * loss.item()
        if log and (step % 200 == 0 or step == spec.steps - 1):
            log(f"pretrain step {step + 1}/{spec.steps} loss {smooth:.3f}")
    model.eval()
    assert smooth is not None  # spec.steps > 0: the loop ran
    return round(smooth, 4)


def _new_model(tokenizer, spec: BaseSpec, seed: int):
    """A randomly initialised Llama of the spec's size, for the tokenizer's vocabulary."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_heads,
        max_position_embeddings=spec.max_positions,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        rms_norm_eps=1e-5,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
    )
    return LlamaForCausalLM(config)


def build_base(
    out_dir: str | os.PathLike, size: str = "tiny", seed: int = 0, steps: int | None = None, log=None
) -> Path:
    """Build the embedded base model into out_dir (replaced if it exists); returns the folder."""
    if size not in SIZES:
        raise InvalidInput(f"Unknown base size {size!r}; use one of {', '.join(SIZES)}.")
    spec = SIZES[size] if steps is None else SIZES[size].model_copy(update={"steps": steps})
    import torch
    from transformers import AutoTokenizer, GenerationConfig

    started = time.time()
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        docs = list(corpus(seed, spec.corpus_docs))
        _train_tokenizer(docs, spec, seed, work)
        tokenizer = AutoTokenizer.from_pretrained(work)
        model = _new_model(tokenizer, spec, seed)
        # A fixed thread count: float sums differ with the thread count, and a base pretrained on 2
        # threads differs from one pretrained on 8 (and teaches its adapters differently). Two
        # threads run a step 1.4x faster than one here; more gain little for a model this small.
        threads = torch.get_num_threads()
        torch.set_num_threads(PRETRAIN_THREADS)
        try:
            final_loss = _pretrain(model, _token_stream(tokenizer, docs), spec, seed, log)
        finally:
            torch.set_num_threads(threads)
        model.generation_config = GenerationConfig(
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            do_sample=False,
            max_new_tokens=128,
        )
        model.save_pretrained(work)
        tokenizer.save_pretrained(work)  # tokenizer.json next to the SentencePiece model
        info = dict(
            size=size,
            seed=seed,
            spec=spec.model_dump(),
            final_loss=final_loss,
            parameters=sum(p.numel() for p in model.parameters()),
            build_s=round(time.time() - started, 1),
            torch=torch.__version__,
        )
        (work / MARKER).write_text(json.dumps(info, indent=2))
        if out.exists():
            shutil.rmtree(out)
        os.replace(work, out)
    finally:
        if work.exists():
            shutil.rmtree(work, ignore_errors=True)
    return out


def base_dir(home: Path, size: str) -> Path:
    return home / "base" / size


def read_info(path: Path) -> dict | None:
    try:
        return json.loads((path / MARKER).read_text())
    except (OSError, ValueError):
        return None


@contextlib.contextmanager
def _lock(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # two first uses at once build it once
        yield


def ensure_base(store_or_home, size: str = "small", seed: int | None = None, force: bool = False, log=None) -> BaseInfo:
    """The embedded base of this size under <home>/base/<size>/, built on first use.

    Without a seed, the base already in the home is used whatever seed built it (seed 0 when none
    is there yet): training and evaluation jobs ask for "embedded:small" and must get the base the
    home has. With a seed, a base built from another seed is rebuilt.
    """
    # A Store carries its home; a path is the home itself (Path has a `home` classmethod, so no getattr).
    home = Path(store_or_home if isinstance(store_or_home, (str, os.PathLike)) else store_or_home.home)
    if size not in SIZES:
        raise InvalidInput(f"Unknown base size {size!r}; use one of {', '.join(SIZES)}.")
    path = base_dir(home, size)
    with _lock(home / "base" / f".{size}.lock"):
        info = read_info(path)
        built = force or info is None or (seed is not None and info.get("seed") != seed)
        if built:
            build_base(path, size, seed=0 if seed is None else seed, log=log)
            info = read_info(path)
    assert info is not None  # read back after the build
    return BaseInfo(
        path=str(path),
        size=size,
        seed=info["seed"],
        built=built,
        parameters=info["parameters"],
        final_loss=info["final_loss"],
        build_s=info["build_s"],
    )
