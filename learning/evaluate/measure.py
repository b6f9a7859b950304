"""The evaluation's model work: the base with the adapter loaded once and switched off for the
base's numbers, teacher-forced metrics on completion tokens (batched, left padding, no
gradients) and greedy generation in chunks that report progress. torch / transformers / peft
are imported only inside these functions.
"""

from __future__ import annotations

import contextlib
import math
import time
from typing import Any

from learning.data.control_tokens import control_strings, escape_text, escape_value
from learning.data.formats import as_text


def load_model(base: str, adapter_path: str):
    """The base with the adapter on top, in eval mode (learning.generate.load_model)."""
    from learning.models.generate import load_model as load

    return load(base, adapter_path)


@contextlib.contextmanager
def model_variant(model, name: str):
    """`with model_variant(model, 'base')`: the same loaded model with its adapter switched off."""
    from learning.models.generate import without_adapter

    if name == "base":
        with without_adapter(model):
            yield model
    else:
        yield model


def is_chat(tok, prompt: Any) -> bool:
    return isinstance(prompt, list) and bool(getattr(tok, "chat_template", None))


def prompt_text(tok, prompt: Any) -> str:
    """The prompt as the model reads it; the base's control tokens inside run text are escaped
    (learning.data.control_tokens), the chat template's own markers are not."""
    controls = control_strings(tok)
    if is_chat(tok, prompt):
        return tok.apply_chat_template(escape_value(prompt, controls), tokenize=False, add_generation_prompt=True)
    return escape_text(as_text(prompt), controls)


def encode(tok, example: dict[str, Any], max_length: int) -> tuple[list[int], int]:
    """Token ids of prompt + completion + eos, and how many of them are completion tokens."""
    # A chat template already writes the special tokens (bos); plain text gets the tokenizer's own.
    p = tok(prompt_text(tok, example["prompt"]), add_special_tokens=not is_chat(tok, example["prompt"]))["input_ids"]
    completion = escape_text(example["completion"], control_strings(tok))
    c = tok(completion, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    c = c[: max_length - 1]
    p = p[-(max_length - len(c)) :]
    return p + c, len(c)


def teacher_forced(
    model, tok, examples: list[dict[str, Any]], batch_size: int, max_length: int = 2048, on_batch=None
) -> dict[str, Any]:
    """Loss, perplexity and accuracy on completion tokens only, batched and without gradients.
    Left padding puts every completion at the end, so only the last logits are computed."""
    import torch
    import torch.nn.functional as F

    encoded = sorted((encode(tok, e, max_length) for e in examples), key=lambda x: len(x[0]))
    device = next(model.parameters()).device
    loss_sum, correct, count = 0.0, 0, 0
    start = time.perf_counter()
    with torch.inference_mode():
        for i in range(0, len(encoded), batch_size):
            batch = encoded[i : i + batch_size]
            width = max(len(ids) for ids, _ in batch)
            keep = max(n for _, n in batch) + 1
            ids = torch.tensor([[tok.pad_token_id] * (width - len(s)) + s for s, _ in batch], device=device)
            mask = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s, _ in batch], device=device)
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            logits = model(input_ids=ids, attention_mask=mask, position_ids=positions, logits_to_keep=keep).logits
            logits = logits[:, :-1].float()  # position t predicts token t + 1
            targets = ids[:, width - keep + 1 :]
            want = torch.zeros_like(targets, dtype=torch.bool)
            for row, (_, n) in enumerate(batch):
                want[row, keep - 1 - n :] = True
            losses = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="none")
            losses = losses.view_as(targets)[want]
            loss_sum += float(losses.sum())
            correct += int((logits.argmax(-1) == targets)[want].sum())
            count += int(want.sum())
            if on_batch:
                on_batch(min(i + batch_size, len(encoded)))
    seconds = time.perf_counter() - start
    loss = loss_sum / max(count, 1)
    return {
        "eval_loss": loss,
        "perplexity": math.exp(min(loss, 50.0)),
        "token_accuracy": correct / max(count, 1),
        "completion_tokens": count,
        "tokens_per_s": sum(len(s) for s, _ in encoded) / max(seconds, 1e-9),
    }


def generate(
    model,
    tok,
    prompts: list[Any],
    max_new_tokens: int,
    batch_size: int,
    on_batch=None,
    stop: list[str] | None = None,
    stop_at_turn_end: bool = True,
) -> list[str]:
    """Greedy answers (learning.models.generate), each ended at eos or (stop_at_turn_end) the chat
    template's end-of-turn tokens and cut at its first stop string, a few batches at a time so
    progress can be reported."""
    from learning.models.generate import generate as greedy

    texts = [prompt_text(tok, p) for p in prompts]
    out: list[str] = []
    chunk = batch_size * 4
    for i in range(0, len(texts), chunk):
        out += greedy(
            model,
            tok,
            texts[i : i + chunk],
            max_new_tokens=max_new_tokens,
            stop=stop or (),
            batch_size=batch_size,
            add_special_tokens=not any(is_chat(tok, p) for p in prompts),
            stop_at_turn_end=stop_at_turn_end,
        )
        if on_batch:
            on_batch(min(i + chunk, len(texts)))
    return out
