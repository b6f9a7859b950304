"""How an adapter is served, so that evaluation asks it the same way: the role template its
prompts were rendered with, the stop strings an answer ends at, and the sanity prompts rendered
as a served prompt is (the role template around the instruction, in a chat turn for a chat
adapter). The end-of-turn tokens are the generator's (learning.models.generate.end_of_turn_tokens).
No torch here.
"""

from __future__ import annotations

import json
from typing import Any

from learning.data.datasets import dataset_folder
from learning.data.templates import render, resolve_template, template_stops
from learning.errors import InvalidInput, LearnloopError
from learning.store import Store


def adapter_template(store: Store, adapter: Any, dataset_id: str | None = None) -> str | None:
    """The role template the adapter's prompts were made with: the one its training dataset
    recorded, else the evaluation dataset's, else the role's current one; None when the role has
    none."""
    for ds in dict.fromkeys(d for d in (adapter.dataset_id, dataset_id) if d):
        try:
            meta = json.loads((dataset_folder(store, ds) / "metadata.json").read_text(encoding="utf-8"))
        except (LearnloopError, OSError, ValueError):
            continue
        text = (meta.get("template") or {}).get("text") if isinstance(meta, dict) else None
        if isinstance(text, str) and text:
            return text
    try:
        return resolve_template(store, adapter.role, None)[0]
    except InvalidInput:
        return None


def stop_strings(template: str | None, extra: list[str]) -> list[str]:
    """The caller's stop strings, then where the role template starts a section again."""
    return list(dict.fromkeys([*extra, *(template_stops(template) if template else [])]))


def served_prompts(adapter: Any, template: str | None, chat: bool, instructions: list[str]) -> list[Any]:
    """Instructions as the served adapter reads them: rendered with the role template, and put
    in a user turn (rendered by the chat template later) for an adapter trained on chat rows."""
    fields = {"role": adapter.role, "task_type": adapter.task_type, "complexity": adapter.complexity}
    texts = [render(template, {**fields, "instruction": i}) if template else i for i in instructions]
    return [[{"role": "user", "content": t.rstrip()}] if chat else t for t in texts]
