"""The tokenizer files an exported folder carries, copied from the adapter or its base."""

from __future__ import annotations

import shutil
from pathlib import Path

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
    "chat_template.jinja",
)


def copy_tokenizer(sources: list[Path | None], out: Path) -> list[str]:
    """Copy the tokenizer files of the first source that has any into `out`; returns their names."""
    for src in sources:
        if src is not None and any((src / f).exists() for f in TOKENIZER_FILES):
            copied = [f for f in TOKENIZER_FILES if (src / f).exists()]
            for name in copied:
                shutil.copy2(src / name, out / name)
            return copied
    return []
