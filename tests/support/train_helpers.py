"""Helpers for the training tests: datasets written in make_sft's layout, and a shared tiny base."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path


def make_dataset(
    store,
    dataset_id: str = "ds-coder",
    role: str = "coder",
    kind: str = "sft",
    fmt: str = "prompt_completion",
    rows: int = 24,
    tests: list[str] | None = None,
) -> str:
    """Write datasets/<id>/{train,test}.jsonl and metadata.json and insert the datasets row; with
    `tests`, every sft row carries them (GRPO's reward runs them)."""
    folder = store.home / "datasets" / dataset_id
    folder.mkdir(parents=True, exist_ok=True)
    data = []
    for i in range(rows):
        prompt = f"Write a function add_{i} that returns x plus {i}.\n"
        good = f"def add_{i}(x):\n    return x + {i}\n"
        bad = f"def add_{i}(x):\n    return x - {i}\n"
        if kind == "dpo":
            data.append({"prompt": prompt, "chosen": good, "rejected": bad})
        elif kind == "kto":
            data.append({"prompt": prompt, "completion": good if i % 2 else bad, "label": bool(i % 2)})
        elif fmt == "messages":
            data.append({"messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": good}]})
        else:
            data.append({"prompt": prompt, "completion": good})
        if tests is not None and kind == "sft":
            data[-1]["tests"] = tests
    text = "".join(json.dumps(r) + "\n" for r in data)
    (folder / "train.jsonl").write_text(text)
    (folder / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in data[:3]))
    (folder / "metadata.json").write_text(json.dumps({"id": dataset_id, "role": role}))
    with store.write() as conn:
        conn.execute(
            "INSERT INTO datasets (id, role, kind, format, created, path, train_rows, test_rows, content_hash,"
            " metadata) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, '{}')",
            (
                dataset_id,
                role,
                kind,
                fmt,
                time.time(),
                f"datasets/{dataset_id}",
                rows,
                3,
                hashlib.sha256(text.encode()).hexdigest(),
            ),
        )
    return dataset_id


def lora_tensors(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path / "adapter_model.safetensors"))
