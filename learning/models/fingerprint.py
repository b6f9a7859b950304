"""Which base model an adapter was trained on, as training records it and export checks it."""

from __future__ import annotations

import hashlib
from pathlib import Path


def base_fingerprint(folder: str | Path) -> dict[str, str | None]:
    """A hub snapshot's revision, else a sha256 over config.json and the *.safetensors.

    Training writes this into metadata.json's base_model (and its value into the registry's
    base_hash); export computes it again for the base it is given and compares.
    """
    path = Path(folder)
    if not path.is_dir():
        return {"revision": None}
    if "snapshots" in path.parts:
        return {"revision": path.name}
    digest = hashlib.sha256()
    for name in ["config.json", *sorted(f.name for f in path.glob("*.safetensors"))]:
        if (path / name).exists():
            with open(path / name, "rb") as handle:
                while block := handle.read(1 << 20):
                    digest.update(block)
    return {"sha256": digest.hexdigest()}
