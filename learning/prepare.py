"""Per-run preparation for curation: redact a run's texts, render its prompt, digest it for
duplicate detection, encode the JSON line."""

from __future__ import annotations

import hashlib
import json
from collections import Counter

from learning.redact import Redactor
from learning.templates import Compiled

encode = json.JSONEncoder(ensure_ascii=False).encode  # one encoder: json.dumps(**kw) builds one per call
_NOTHING: dict[str, int] = {}


def norm_digest(*texts: str) -> int:
    """A 64-bit digest of texts after lower-casing and collapsing white space (near-exact
    duplicates); the same in every process."""
    text = " ".join("\x00".join(texts).split()).lower()
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


class RunRedactor:
    """Redacts a run's three texts in one pass; counts only what the caller keeps."""

    def __init__(self, enabled: bool):
        self.enabled, self.r, self.kept = enabled, Redactor(), Counter()

    def __call__(self, instruction: str, input_: str, output: str) -> tuple[list[str], dict[str, int]]:
        if not self.enabled:
            return [instruction, input_, output], _NOTHING
        counts = self.r.counts
        counts.clear()
        parts = self.r(f"{instruction}\x00{input_}\x00{output}").split("\x00")
        if len(parts) != 3:  # a text held a NUL itself: redact the three apart
            parts = [self.r(t) for t in (instruction, input_, output)]
        return parts, (dict(counts) if counts else _NOTHING)

    def keep(self, found: dict[str, int]) -> None:
        if found:
            self.kept.update(found)


def render_prompt(template: Compiled, role: str, run: tuple, instruction: str, input_: str,
                  without_input: bool = False) -> tuple[str, str]:
    """The rendered prompt, and (for alpaca) the prompt without the input block."""
    fields = {"instruction": instruction, "input": input_, "task_type": run[6] or "", "complexity": run[7] or "",
              "role": role}
    prompt = template.render(fields)
    return prompt, (template.render({**fields, "input": ""}) if without_input else "")
