"""Start from the base a user already serves: a GGUF file (Ollama, llama.cpp) imported as a
Hugging Face folder under the home, so that training has safetensors to load.

transformers reads a GGUF (`from_pretrained(folder, gguf_file=name)` dequantises it) but
refuses to save such a model; the import rebuilds a plain model from the same config, with the
same tensors, checks that its logits equal the GGUF load's, and saves it with the tokenizer in
<home>/bases/<id>/. `gguf_base.json` there records both fingerprints (the GGUF file's sha256 and
the folder's, as training records it) and the GGUF's absolute path: exports of adapters trained
on the folder point Ollama's FROM and llama.cpp's -m at that file, the exact base the user serves.

Checking a file and finding an imported base read headers and json only (no torch); the
conversion runs as a job (learning.jobs), in its own process.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import struct
import time
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, Field

from learning.errors import Conflict, InvalidInput, shown
from learning.home import safe_id, subdir
from learning.jobs.manage import start_job
from learning.jobs.queries import active_job_rows
from learning.models.architectures import export_formats
from learning.models.fingerprint import base_fingerprint
from learning.store import Store

RECORD = "gguf_base.json"
BASES = "bases"
_STRING, _TYPES = (
    8,
    {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"},
)


# ---- reading a GGUF's header (no torch, no full parse of the vocabulary) -------------------------


def gguf_header(path: Path) -> dict[str, Any]:
    """The scalar and string `general.*` fields at the start of a GGUF file. Raises InvalidInput
    when the file is not a GGUF."""
    with path.open("rb") as f:
        if f.read(4) != b"GGUF":
            raise InvalidInput(f"{path} is not a GGUF file (it does not start with 'GGUF').")
        version, _tensors, count = struct.unpack("<IQQ", f.read(20))
        fields: dict[str, Any] = {"version": version}
        for _ in range(min(count, 64)):
            key = _gguf_string(f)
            (kind,) = struct.unpack("<I", f.read(4))
            if kind == _STRING:
                value: Any = _gguf_string(f)
            elif kind in _TYPES:
                fmt = _TYPES[kind]
                (value,) = struct.unpack(fmt, f.read(struct.calcsize(fmt)))
            else:  # an array (the vocabulary, ...): the general fields come before them
                break
            if key.startswith("general."):
                fields[key] = value
    return fields


def _gguf_string(f) -> str:
    (length,) = struct.unpack("<Q", f.read(8))
    if length > 1 << 20:
        raise InvalidInput("the GGUF header holds an implausible string; the file may be damaged.")
    return f.read(length).decode("utf-8", errors="replace")


def check_gguf(path: str) -> tuple[Path, dict[str, Any]]:
    """The GGUF file as an absolute path, and its header; InvalidInput with what to do otherwise."""
    gguf = Path(path).expanduser()
    if gguf.suffix.lower() != ".gguf" or not gguf.is_file():
        raise InvalidInput(f"No GGUF file at {shown(path)}: give the path of a model's .gguf file on this machine.")
    try:
        header = gguf_header(gguf)
    except (OSError, struct.error) as exc:
        raise InvalidInput(f"Cannot read {gguf} as GGUF ({exc}); the file may be truncated.") from exc
    kind = header.get("general.type", "model")
    if kind != "model":
        raise InvalidInput(
            f"{gguf} is a GGUF {kind}, not a model: import the base model's GGUF (an adapter is trained, not imported)."
        )
    if not header.get("general.architecture"):
        raise InvalidInput(f"{gguf} names no general.architecture: not a model GGUF that transformers can read.")
    return gguf.resolve(), header


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


# ---- imported bases -----------------------------------------------------------------------------


def default_base_id(gguf: Path) -> str:
    """An id from the file's name: SmolLM2-135M-Instruct.Q4_1.gguf -> SmolLM2-135M-Instruct.Q4_1."""
    text = re.sub(r"[^A-Za-z0-9._-]+", "-", gguf.stem).replace("..", ".").lstrip("._-")[:128]
    return text or "gguf-base"


def read_record(folder: Path) -> dict[str, Any] | None:
    """An imported base's record (gguf_base.json), or None when the folder was not imported."""
    try:
        record = json.loads((folder / RECORD).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def imported_folder(home: Path, base_id: str) -> Path | None:
    """The folder of the base imported under this id (looked up, never a path the caller joins)."""
    bases = home / BASES
    if not bases.is_dir():
        return None
    found = next((p for p in bases.iterdir() if p.name == base_id and p.is_dir()), None)
    return found if found is not None and read_record(found) is not None else None


def find_imported(home: Path, base: str) -> tuple[Path | None, str | None]:
    """(folder, problem) for train_adapter's base when it names an imported base: its id, or the
    path of the GGUF it was imported from. (None, None) when base is something else."""
    if Path(base).expanduser().is_dir():
        return None, None
    if base.lower().endswith(".gguf"):
        gguf = Path(base).expanduser()
        if not gguf.is_file():
            return None, f"No GGUF file at {shown(base)}."
        for record in _records(home):
            if _same_file(record.get("gguf_path", ""), gguf):
                return home / BASES / record["id"], None
        return None, (
            f"{gguf} has not been imported yet: run `learnloop base import {gguf}` (MCP: import_base), "
            "then train with base set to that file or the base id it prints."
        )
    folder = imported_folder(home, base)
    return folder, None


def _records(home: Path) -> list[dict[str, Any]]:
    bases = home / BASES
    if not bases.is_dir():
        return []
    records = (read_record(p) for p in sorted(bases.iterdir()) if p.is_dir() and not p.name.startswith("."))
    return [r for r in records if r and isinstance(r.get("id"), str)]


def _same_file(a: str, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def gguf_origin(folder: str | Path | None) -> str | None:
    """The GGUF a base folder was imported from (what Ollama's FROM and llama.cpp's -m take), or
    None when the folder was not imported from a GGUF."""
    record = read_record(Path(folder)) if folder else None
    path = record.get("gguf_path") if record else None
    return path if isinstance(path, str) else None


# ---- the verb -----------------------------------------------------------------------------------


class BaseImport(BaseModel):
    base_id: str = Field(description="Train with base=<this id> (or the GGUF's path).")
    folder: str = Field(description="The Hugging Face folder under the home.")
    gguf_path: str
    job_id: str | None = Field(description="The import job; None when the file was imported already.")
    status: str = Field(description="queued, running, succeeded, failed or cancelled.")
    result: dict[str, Any] | None = Field(description="When done: fingerprints, architecture, export formats.")
    error: str | None


def import_base(
    store: Store,
    path: Annotated[str, Field(description="The base model's .gguf file on this machine (Ollama's or llama.cpp's).")],
    name: Annotated[
        str | None, Field(description="The id to import it as (default: the file's name without .gguf).")
    ] = None,
    wait_s: Annotated[float, Field(ge=0, le=45, description="Wait this long for the job (45 max).")] = 30,
) -> BaseImport:
    """Import a GGUF base model (the one Ollama or llama.cpp serves) as a Hugging Face folder
    under the home, dequantised, to train adapters on (train_adapter base=<id or the .gguf path>).
    Both fingerprints and the GGUF's path are recorded: exports point Ollama's FROM and
    llama-server's -m at the original file. Runs as a job: returns its result when done within
    wait_s, else the job id to follow with wait_job."""
    from learning.jobs.manage import wait_job

    gguf, header = check_gguf(path)
    base_id = safe_id(name, "base name") if name is not None else default_base_id(gguf)
    folder = store.home / BASES / base_id
    existing = read_record(folder) if folder.exists() else None
    if existing is not None and _unchanged(existing, gguf):
        return BaseImport(
            base_id=base_id, folder=str(folder), gguf_path=str(gguf), job_id=None, status="succeeded",
            result=existing, error=None,
        )  # fmt: skip
    if folder.exists():
        raise Conflict(
            f"A base is imported as {base_id} already (from {(existing or {}).get('gguf_path', 'elsewhere')}); "
            "pass another name."
        )
    if any(j["kind"] == "import_base" and j["subject"] == base_id for j in active_job_rows(store)):
        raise Conflict(f"{base_id} is being imported by a running job; follow it with list_jobs / wait_job.")
    params = {"gguf_path": str(gguf), "base_id": base_id, "architecture": header["general.architecture"]}
    job_id = start_job(store, "import_base", "learning.models.gguf_base:import_job", params, subject=base_id)
    status = wait_job(store, job_id, timeout=wait_s)
    return BaseImport(
        base_id=base_id, folder=str(folder), gguf_path=str(gguf), job_id=job_id, status=status.status,
        result=status.result, error=status.error,
    )  # fmt: skip


def _unchanged(record: dict[str, Any], gguf: Path) -> bool:
    stat = gguf.stat()
    return (
        _same_file(record.get("gguf_path", ""), gguf)
        and record.get("gguf_bytes") == stat.st_size
        and record.get("gguf_mtime") == stat.st_mtime
    )


# ---- the job ------------------------------------------------------------------------------------


def import_job(ctx) -> dict[str, Any]:
    """Job entry point: dequantise the GGUF into <home>/bases/<id>/ (written beside, then renamed)."""
    p = ctx.params
    gguf, base_id = Path(p["gguf_path"]), p["base_id"]
    bases = subdir(ctx.store.home, BASES)
    work = bases / f".{base_id}.{ctx.job_id}.partial"
    try:
        ctx.progress(force=True, stage="fingerprint", message=f"hashing {gguf.name}")
        stat = gguf.stat()
        gguf_sha = file_sha256(gguf)
        ctx.progress(force=True, stage="convert", message=f"dequantising {gguf.name} with transformers")
        converted = convert_gguf(gguf, work, p["architecture"])
        record = {
            "id": base_id,
            "gguf_path": str(gguf),
            "gguf_sha256": gguf_sha,
            "gguf_bytes": stat.st_size,
            "gguf_mtime": stat.st_mtime,
            **converted,
            **base_fingerprint(work),  # the folder's sha256, as training records it
            "export_formats": export_formats(converted["model_type"]),
            "imported": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        (work / RECORD).write_text(json.dumps(record, indent=2))
        if (bases / base_id).exists():
            raise Conflict(f"A base {base_id} was imported meanwhile; import this file under another name.")
        work.rename(bases / base_id)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return {**record, "folder": str(bases / base_id)}


def convert_gguf(gguf: Path, out: Path, architecture: str) -> dict[str, Any]:
    """Load the GGUF with transformers, rebuild a plain model around the same tensors, check its
    logits equal the GGUF load's, and save it (safetensors) with the tokenizer into out."""
    import torch
    import transformers
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    if architecture not in GGUF_SUPPORTED_ARCHITECTURES:
        raise InvalidInput(
            f"transformers {transformers.__version__} cannot read GGUF files of architecture {architecture!r} "
            f"(it reads {', '.join(a for a in GGUF_SUPPORTED_ARCHITECTURES if a not in ('general', 'tokenizer'))}). "
            "Train on the model's Hugging Face folder instead (base=<folder or hub id>)."
        )
    loaded = transformers.AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    values = loaded.config.to_dict()
    values.pop("quantization_config", None)
    config = type(loaded.config).from_dict(values)
    with torch.device("meta"):  # no random init: the tensors are the loaded model's own
        plain = transformers.AutoModelForCausalLM.from_config(config, dtype=loaded.dtype)
    plain.load_state_dict(loaded.state_dict(), strict=True, assign=True)
    for name, buffer in loaded.named_buffers():  # non-persistent buffers (rotary frequencies)
        module, _, leaf = name.rpartition(".")
        plain.get_submodule(module)._buffers[leaf] = buffer
    plain.tie_weights()
    plain.eval()
    probe = torch.arange(1, 17).unsqueeze(0) % config.vocab_size
    with torch.no_grad():
        diff = (plain(probe).logits - loaded(probe).logits).abs().max().item()
    if diff != 0:
        raise Conflict(f"The rebuilt model's logits differ from the GGUF load's by {diff:.3g}; nothing was imported.")
    out.mkdir(parents=True)
    plain.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    return {
        "architecture": architecture,
        "model_type": config.model_type,
        "dtype": str(loaded.dtype).removeprefix("torch."),
        "parameters": sum(t.numel() for t in plain.parameters()),
        "max_logit_diff": diff,
        "transformers": transformers.__version__,
    }
