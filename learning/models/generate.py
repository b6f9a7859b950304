"""Load a base model (with an optional LoRA adapter on top) and generate answers from it.

The same code serves the embedded tiny base (a local folder) and a real model (a local folder
or a hub id) on a GPU. Generation is greedy (deterministic), batched with left padding, and
each completion is cut at the first stop string. `without_adapter(model)` switches the adapter
off for a block, so base and adapter answers come from one loaded model.

torch / transformers / peft are imported inside the functions: importing this module is cheap.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from learning.errors import InvalidInput, NotFound


def pick_device(device: str | None = None) -> str:
    """The device to use: the one asked for, else CUDA when there is one, else CPU."""
    if device:
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def load_model(
    base: str | os.PathLike,
    adapter_path: str | os.PathLike | None = None,
    device: str | None = None,
    dtype: str | None = None,
) -> tuple[Any, Any]:
    """(model, tokenizer) for `base` (a folder or a hub id), with the adapter at `adapter_path` on top.

    The model is in eval mode on `device`; the tokenizer pads on the left (for batched generation)
    and has a pad token. dtype: 'float32', 'bfloat16', 'float16' or None (float32 on CPU, the
    checkpoint's own dtype on a GPU).
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = pick_device(device)
    base = str(base)
    if Path(base).expanduser().exists():
        base = str(Path(base).expanduser())
    elif base.startswith((".", "/", "~")):
        raise NotFound(
            f"No base model folder {base}. Build the embedded one with `learnloop base build`, "
            "or give a hub id / an existing folder."
        )
    if adapter_path is not None and not (Path(adapter_path) / "adapter_config.json").exists():
        raise NotFound(
            f"No adapter at {adapter_path} (adapter_config.json missing). "
            "List adapters with `learnloop adapters` and use one whose training finished."
        )
    if dtype is None:
        torch_dtype = torch.float32 if device == "cpu" else "auto"
    else:
        try:
            torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
        except KeyError:
            raise InvalidInput(f"Unknown dtype {dtype!r}: use float32, bfloat16 or float16.") from None

    tokenizer = AutoTokenizer.from_pretrained(base)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch_dtype)
    if adapter_path is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter_path))
    model.to(device)  # pyright: ignore[reportArgumentType]  # .to is wrapped with functools.wraps in transformers
    model.eval()
    return model, tokenizer


def has_adapter(model: Any) -> bool:
    from peft import PeftModel

    return isinstance(model, PeftModel)


@contextlib.contextmanager
def without_adapter(model: Any) -> Iterator[Any]:
    """Within the block the model answers as its base (the adapter is switched off)."""
    if has_adapter(model):
        with model.disable_adapter():
            yield model
    else:
        yield model


def cut_at_stop(text: str, stop: Sequence[str]) -> str:
    """`text` up to (not including) the earliest stop string."""
    cut = len(text)
    for s in stop:
        if s:
            at = text.find(s)
            if at != -1:
                cut = min(cut, at)
    return text[:cut]


# End-of-turn tokens of common chat families (ChatML, Llama 3, Gemma, Phi-3, GPT-2/Qwen base,
# Llama 2/Mistral, Llama 3 base): an answer ends at any of them the tokenizer has.
END_OF_TURN = ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|end|>", "<|endoftext|>", "</s>", "<|end_of_text|>")
_ANSWER = "\x01LLANSWER\x01"


def end_of_turn_tokens(tokenizer: Any) -> list[str]:
    """The tokens an answer ends at, where serving ends it: eos, the end-of-turn tokens of common
    families that the tokenizer holds as special or added tokens, and the token the chat template
    writes right after an assistant's answer."""
    special = set(getattr(tokenizer, "all_special_tokens", None) or []) | set(tokenizer.get_added_vocab())
    found = [tokenizer.eos_token] if tokenizer.eos_token else []
    found += [t for t in END_OF_TURN if t in special]
    if getattr(tokenizer, "chat_template", None):
        try:
            turn = [{"role": "user", "content": "x"}, {"role": "assistant", "content": _ANSWER}]
            after = str(tokenizer.apply_chat_template(turn, tokenize=False)).split(_ANSWER, 1)[1].lstrip()
        except Exception:  # noqa: BLE001 - a template that refuses this conversation: the tokens above do
            after = ""
        written = [t for t in special if after.startswith(t)]
        if written:
            found.append(max(written, key=len))
    return list(dict.fromkeys(found))


def stop_token_ids(tokenizer: Any) -> list[int]:
    """The ids of end_of_turn_tokens (for generate's eos_token_id)."""
    unk = getattr(tokenizer, "unk_token_id", None)
    ids = [tokenizer.convert_tokens_to_ids(t) for t in end_of_turn_tokens(tokenizer)]
    return list(dict.fromkeys(i for i in ids if isinstance(i, int) and i != unk))


def stop_criteria(tokenizer: Any, stop: Sequence[str], prompt_len: int):
    """A StoppingCriteria that marks each row done once its new text contains a stop string.
    Only the last tokens are decoded each step: a stop string of n characters that has just
    appeared lies within the last n tokens (an earlier one would have ended the row already)."""
    import torch
    from transformers import StoppingCriteria

    window = max(len(s) for s in stop) + 1

    class StopOnStrings(StoppingCriteria):
        def __init__(self):
            self.done: torch.Tensor | None = None

        def __call__(self, input_ids, scores, **kwargs):
            if self.done is None:
                self.done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
            for row in range(input_ids.shape[0]):
                if not self.done[row]:
                    tail = input_ids[row, max(prompt_len, input_ids.shape[1] - window) :]
                    text = tokenizer.decode(tail, skip_special_tokens=True)
                    self.done[row] = any(s in text for s in stop if s)
            return self.done.clone()

    return StopOnStrings()


def generate(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    max_new_tokens: int = 128,
    stop: Sequence[str] = (),
    batch_size: int = 16,
    add_special_tokens: bool = True,
    stop_at_turn_end: bool = True,
) -> list[str]:
    """Greedy completions of `prompts`, each cut at its first stop string; in the prompts' order.

    Generation ends at eos and, with stop_at_turn_end, at the chat template's end-of-turn tokens
    (end_of_turn_tokens), and a row ends as soon as its text holds a stop string. Prompts are
    grouped by length into batches of `batch_size` (less padding), left-padded, and decoded
    without special tokens. Deterministic: no sampling, no dropout.
    """
    import torch
    from transformers import StoppingCriteriaList

    if max_new_tokens < 1 or batch_size < 1:
        raise InvalidInput("max_new_tokens and batch_size must be at least 1.")
    prompts = list(prompts)
    stop = [s for s in stop if s]
    lengths = [len(tokenizer(p, add_special_tokens=add_special_tokens)["input_ids"]) for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: lengths[i])
    out: list[str] = [""] * len(prompts)
    device = next(model.parameters()).device
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    eos_ids = (stop_token_ids(tokenizer) or tokenizer.eos_token_id) if stop_at_turn_end else tokenizer.eos_token_id
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            batch = tokenizer(
                [prompts[i] for i in idx], return_tensors="pt", padding=True, add_special_tokens=add_special_tokens
            ).to(device)
            prompt_len = batch["input_ids"].shape[1]
            criteria = StoppingCriteriaList([stop_criteria(tokenizer, stop, prompt_len)]) if stop else None
            generated = model.generate(
                **batch,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                temperature=None,
                top_p=None,
                top_k=None,
                pad_token_id=pad_id,
                eos_token_id=eos_ids,
                stopping_criteria=criteria,
            )
            for row, i in enumerate(idx):
                text = tokenizer.decode(generated[row, prompt_len:], skip_special_tokens=True)
                out[i] = cut_at_stop(text, stop)
    return out
