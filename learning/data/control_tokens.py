"""Logged text stays text: the base's control tokens are escaped inside run text.

A tokenizer turns the text of its special tokens (`</s>`, `<|im_start|>`) and of its added
marker tokens (the tiny base's `<|user|>`, `<|assistant|>`) into those tokens wherever they
appear, so a run whose output contains `</s><|user|>...` would inject turns into training.
`split_special_tokens` is no cure: it leaves non-special added tokens alone, and it would split
the chat template's own markers too, since TRL tokenises the rendered conversation as one string.

So training and evaluation escape the text of rows before any template or tokenizer sees it:
a WORD JOINER (U+2060, invisible) goes after the first character of every control string found
in run text, which the tokenizer then reads as ordinary characters. The markers the chat template
writes, and the bos/eos the tokenizer and TRL add, stay control tokens.
"""

from __future__ import annotations

import re
from typing import Any

ESCAPE = "\u2060"  # WORD JOINER: zero width, no meaning of its own

# Non-special added tokens count as control strings when they look like markers: <...> or [...]
# without whitespace (some tokenizers add runs of spaces as tokens; code keeps those).
_MARKER = re.compile(r"<[^<>\s]+>|\[[^\[\]\s]+\]")


def control_strings(tokenizer: Any) -> list[str]:
    """The strings that a tokenizer reads as one control token: its special tokens and its
    added tokens shaped like markers. Longest first, so a longer marker escapes whole."""
    found = {t for t in getattr(tokenizer, "all_special_tokens", []) if isinstance(t, str)}
    for added in getattr(tokenizer, "added_tokens_decoder", {}).values():
        if getattr(added, "special", False) or _MARKER.fullmatch(str(added)):
            found.add(str(added))
    return sorted((t for t in found if len(t) >= 2), key=lambda t: (-len(t), t))


def escape_text(text: str, controls: list[str]) -> str:
    """The text with every control string broken by ESCAPE (repeated until none is left)."""
    if not controls:
        return text
    pattern = re.compile("|".join(re.escape(c) for c in controls))
    while pattern.search(text):
        text = pattern.sub(lambda m: m.group(0)[0] + ESCAPE + m.group(0)[1:], text)
    return text


def escape_value(value: Any, controls: list[str]) -> Any:
    """A row field escaped: strings, chat messages (their content, and their tool calls'
    arguments, text or object) and lists of them; other values (labels, roles, names) as they are."""
    if isinstance(value, str):
        return escape_text(value, controls)
    if isinstance(value, list):
        return [escape_value(v, controls) for v in value]
    if isinstance(value, dict):
        return {k: _escape_key(k, v, controls) for k, v in value.items()}
    return value


def _escape_key(key: str, value: Any, controls: list[str]) -> Any:
    if key in ("content", "tool_calls", "function"):
        return escape_value(value, controls)
    if key == "arguments":  # JSON text, or the object parsed from it: every string in it
        return _escape_all(value, controls)
    return value


def _escape_all(value: Any, controls: list[str]) -> Any:
    if isinstance(value, str):
        return escape_text(value, controls)
    if isinstance(value, list):
        return [_escape_all(v, controls) for v in value]
    if isinstance(value, dict):
        return {escape_text(k, controls): _escape_all(v, controls) for k, v in value.items()}
    return value


def escape_rows(rows: list[dict[str, Any]], controls: list[str], keep: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """Training rows (TRL's columns) with the text of every field escaped, but those in `keep`
    (a row's tests are code to run, not text the model reads)."""
    return [{k: v if k in keep else escape_value(v, controls) for k, v in row.items()} for row in rows]
