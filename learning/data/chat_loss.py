"""Loss on the assistant's turns only, for chat templates that do not mark them.

TRL's `assistant_only_loss` needs `{% generation %}` markers in the chat template; the
templates real models ship (ChatML, Llama 3, Qwen) mostly have none, and without them every
token is learned: the default system prompt and the user's turns too. Here each conversation
is tokenized from its full render, and the assistant's text is found by rendering prefixes of
it: the characters between `render(messages[:i], add_generation_prompt=True)` and
`render(messages[:i + 1])` are assistant turn i (its content and the turn's end token, such as
`<|im_end|>` or `<|eot_id|>`; the whitespace the template writes after that is not learned).
Tokens that start inside such a span keep their labels, every other label is -100.

A conversation with tool calls is rendered with its row's `tools` (a list, or its JSON text as
training hands it to TRL), as TRL renders it: an assistant turn that calls tools is learned like
any other (its calls as the template writes them), tool results are not.

This holds only when each prefix render is a true prefix of the full render. A template that
renders earlier turns differently once a later one exists (Qwen3 drops past reasoning, for
example) breaks it: then nothing is masked here and the note says why (the trainer learns every
token, as before). The tokenizer is any transformers tokenizer with offsets (a fast one); no
torch is imported here.
"""

from __future__ import annotations

import json
from typing import Any

IGNORE = -100
MARKERS = ("{% generation %}", "{%- generation %}", "{% generation -%}", "{%- generation -%}")


class NotPrefix(ValueError):
    """A conversation whose prefix renders are not prefixes of its full render."""


def has_generation_markers(template: str | None) -> bool:
    """Whether the chat template marks assistant text for TRL's assistant_only_loss."""
    return any(m in (template or "") for m in MARKERS)


def _render(tokenizer: Any, messages: list[dict[str, Any]], generation_prompt: bool, tools: list | None) -> str:
    text = tokenizer.apply_chat_template(messages, tools=tools, tokenize=False, add_generation_prompt=generation_prompt)
    if not isinstance(text, str):  # some versions hand back a list for a single conversation
        text = text[0]
    return text


def assistant_spans(
    tokenizer: Any, messages: list[dict[str, Any]], tools: list | str | None = None
) -> tuple[str, list[tuple[int, int]]]:
    """The full render of a conversation (with the tools offered, a list or its JSON text) and
    the character spans of its assistant turns. NotPrefix when the template renders a prefix of
    the conversation differently."""
    offered = (json.loads(tools) if isinstance(tools, str) else tools) or None
    full = _render(tokenizer, messages, False, offered)
    spans = []
    for i, message in enumerate(messages):
        if message.get("role") != "assistant":
            continue
        try:
            before = _render(tokenizer, messages[:i], True, offered)
        except Exception as exc:  # noqa: BLE001 - a template that refuses this prefix (e.g. no user turn yet)
            raise NotPrefix(f"the chat template cannot render the turns before assistant turn {i} ({exc})") from None
        through = _render(tokenizer, messages[: i + 1], False, offered)
        for name, prefix in (("the turns before", before), ("the turns through", through)):
            if not full.startswith(prefix):
                raise NotPrefix(
                    f"the chat template renders {name} assistant turn {i} differently from the whole conversation"
                )
        end = max(len(through.rstrip()), len(before))
        if end > len(before):
            spans.append((len(before), end))
    return full, spans


def tokenize_assistant_only(
    tokenizer: Any, messages: list[dict[str, Any]], tools: list | str | None = None
) -> dict[str, list[int]]:
    """input_ids of the rendered conversation and labels that are -100 outside the assistant turns."""
    full, spans = assistant_spans(tokenizer, messages, tools)
    # The chat template writes the special tokens itself (bos), as TRL and serving do.
    encoded = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = encoded["input_ids"], encoded["offset_mapping"]
    labels = [IGNORE] * len(ids)
    for start, end in spans:
        inside = [k for k, (s, _) in enumerate(offsets) if start <= s < end]
        if not inside:
            raise NotPrefix("an assistant turn holds no token of its own")
        for k in inside:
            labels[k] = ids[k]
    return {"input_ids": list(ids), "labels": labels}


def marked_rows(tokenizer: Any, row: dict[str, Any]) -> dict[str, list[int]]:
    """input_ids and labels of a conversation under a template with generation markers, the
    labels -100 outside them (as TRL's assistant_only_loss masks)."""
    tools = row.get("tools")
    out = tokenizer.apply_chat_template(
        row["messages"],
        tools=(json.loads(tools) if isinstance(tools, str) else tools) or None,
        tokenize=True,
        return_dict=True,
        return_assistant_tokens_mask=True,
    )
    ids = list(out["input_ids"])
    return {"input_ids": ids, "labels": [i if m else IGNORE for i, m in zip(ids, out["assistant_masks"])]}


def assistant_only_rows(tokenizer: Any, rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]] | None, str]:
    """(rows of input_ids/labels, what the loss covers) for messages rows, or (None, why) when the
    rows stay as they are: not chat rows, a template with generation markers (TRL masks those
    itself, unless the rows call tools), a tokenizer without offsets, or a template whose
    prefixes do not render as prefixes."""
    if not rows or "messages" not in rows[0]:
        return None, "completion tokens (prompt/completion rows)"
    template = getattr(tokenizer, "chat_template", None)
    if not template:
        return None, "every token (the tokenizer has no chat template)"
    if has_generation_markers(template):
        if not any(m.get("tool_calls") for row in rows for m in row["messages"]):
            return None, "assistant turns (the chat template's generation markers)"
        # TRL would read these rows through a datasets table, which merges the keys of every tool
        # call's arguments into each (a call gains the others' keys as nulls): masked here instead.
        return [marked_rows(tokenizer, row) for row in rows], "assistant turns (the chat template's generation markers)"
    if not getattr(tokenizer, "is_fast", False):
        return None, "every token (the tokenizer gives no character offsets to find the assistant turns by)"
    out = []
    for number, row in enumerate(rows, 1):
        try:
            out.append(tokenize_assistant_only(tokenizer, row["messages"], row.get("tools")))
        except NotPrefix as exc:
            return None, f"every token (row {number}: {exc}; the assistant turns cannot be told apart)"
    return out, "assistant turns (found by rendering the conversation's prefixes)"
