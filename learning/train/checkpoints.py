"""Checkpoints a resume can trust: the newest intact one, and why newer ones were skipped.

transformers writes a Trainer checkpoint in place (`checkpoints/checkpoint-N/`), and its
`get_last_checkpoint` takes the newest folder without looking inside: a job killed while saving
leaves a torn checkpoint that fails every later resume. Before resuming, each checkpoint is
checked newest first (`newest_intact`): trainer_state.json present and parseable; at least one weights file;
every safetensors file's header readable and the file exactly as long as the header says; every
torch pickle (optimizer, scheduler, rng state) a complete zip archive. A torn checkpoint is moved
aside to `torn-checkpoint-N` (the trainer neither resumes from nor rotates it) and reported.
"""

from __future__ import annotations

import json
import re
import struct
import zipfile
from pathlib import Path

_NAME = re.compile(r"^checkpoint-(\d+)$")
_WEIGHTS = ("adapter_model.safetensors", "model.safetensors")


def checkpoint_problem(folder: Path) -> str | None:
    """Why the checkpoint in `folder` cannot be resumed from, or None when it is intact."""
    state = folder / "trainer_state.json"
    if not state.is_file():
        return "trainer_state.json is missing"
    try:
        json.loads(state.read_text())
    except (OSError, ValueError) as exc:
        return f"trainer_state.json does not parse ({exc.__class__.__name__})"
    if not any((folder / name).is_file() for name in _WEIGHTS):
        return "no adapter_model.safetensors"
    for path in sorted(folder.glob("*.safetensors")):
        problem = _safetensors_problem(path)
        if problem:
            return f"{path.name} {problem}"
    for path in sorted([*folder.glob("*.pt"), *folder.glob("*.pth"), *folder.glob("*.bin")]):
        if not zipfile.is_zipfile(path):
            return f"{path.name} is not a complete torch archive"
    return None


def _safetensors_problem(path: Path) -> str | None:
    """A safetensors file is 8 bytes of header length, the JSON header, then the tensors' bytes;
    its size must be exactly what the header's largest data offset says."""
    size = path.stat().st_size
    try:
        with path.open("rb") as f:
            (length,) = struct.unpack("<Q", f.read(8))
            if length > size - 8:
                return f"is truncated ({size} bytes, header alone needs {8 + length})"
            header = json.loads(f.read(length))
    except (OSError, ValueError, struct.error):
        return "has no readable header"
    if not isinstance(header, dict):
        return "has no readable header"
    ends = [t["data_offsets"][1] for k, t in header.items() if k != "__metadata__" and isinstance(t, dict)]
    expected = 8 + length + max(ends, default=0)
    if size != expected:
        return f"is {size} bytes, its header says {expected}"
    return None


def newest_intact(ckpt_dir: Path) -> tuple[str | None, list[dict[str, str]]]:
    """(the newest intact checkpoint or None, the newer ones skipped as [{checkpoint, reason}]).
    Only reads: the processes of a distributed run all check, and all find the same one (a
    folder another process moved aside meanwhile reads as torn, which it was)."""
    if not ckpt_dir.is_dir():
        return None, []
    found = sorted(
        ((int(m.group(1)), p) for p in ckpt_dir.iterdir() if p.is_dir() and (m := _NAME.match(p.name))),
        reverse=True,
    )
    skipped: list[dict[str, str]] = []
    for _, folder in found:
        problem = checkpoint_problem(folder)
        if problem is None:
            return str(folder), skipped
        skipped.append({"checkpoint": folder.name, "reason": problem})
    return None, skipped


def move_aside(ckpt_dir: Path, skipped: list[dict[str, str]]) -> None:
    """Move skipped checkpoints to torn-checkpoint-N, so the trainer writes that step afresh and
    never rotates the intact one away in favour of a torn one (one process does this)."""
    import shutil

    for s in skipped:
        folder, target = ckpt_dir / s["checkpoint"], ckpt_dir / f"torn-{s['checkpoint']}"
        if target.exists():
            shutil.rmtree(target)  # an earlier torn copy of the same step, moved aside by learnloop
        if folder.exists():
            folder.rename(target)


def skipped_message(skipped: list[dict[str, str]], resume_from: str | None) -> str:
    """One line for the job's log and progress."""
    parts = "; ".join(f"{s['checkpoint']} ({s['reason']})" for s in skipped)
    then = f"resuming from {Path(resume_from).name}" if resume_from else "no intact checkpoint: starting over"
    return f"skipped torn checkpoint(s): {parts}; moved aside as torn-*; {then}"
