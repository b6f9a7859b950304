"""Export an adapter for the runtimes people serve with, checked before and after writing.

Formats:
- peft: a clean PEFT folder (config, weights, tokenizer, README with the base and metrics).
- merged: base + adapter merged (merge_and_unload) into a full transformers model folder; the
  reloaded folder's logits are compared with the PEFT model's on a probe input.
- gguf: a LoRA GGUF for llama.cpp (learning.serve.gguf), read back and its delta compared with
  PEFT's for every module.
- ollama: the GGUF plus a Modelfile (learning.serve.modelfile) beside it.

Compatibility is checked first and every problem reported together. Only `merged` imports
torch; the other formats need numpy, safetensors and gguf, so the server can run them.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Annotated, Any, Literal, cast, get_args

from pydantic import BaseModel, Field

from learning.data.templates import render, resolve_template
from learning.errors import Conflict, check
from learning.home import subdir
from learning.jobs.manage import start_job
from learning.models.fingerprint import base_fingerprint
from learning.models.gguf_base import gguf_origin
from learning.params import CLI_ONLY
from learning.registry.adapters import Adapter, get_adapter
from learning.serve import gguf as gx
from learning.serve.merge import export_merged
from learning.serve.modelfile import USR, own_engine_warning, plain_value, read_tokenizer, write_ollama_files
from learning.serve.outdir import MARKER, claim_folders, ours
from learning.serve.served import LLAMACPP_TEMPLATE, llamacpp_template
from learning.serve.tokenizer_files import copy_tokenizer
from learning.store import Store

Format = Literal["peft", "merged", "gguf", "ollama"]
Dtype = Literal["f32", "f16"]
FORMATS: tuple[str, ...] = get_args(Format)
DTYPES: tuple[str, ...] = get_args(Dtype)


class ExportedFile(BaseModel):
    path: str
    bytes: int


class ExportResult(BaseModel):
    adapter_id: str
    format: Format
    dtype: str
    out_dir: str
    files: list[ExportedFile]
    total_bytes: int
    checks: list[str] = Field(description="What was verified, with the figures measured.")
    max_delta_diff: float | None = Field(
        default=None, description="gguf/ollama: max |delta from GGUF - delta from PEFT| over all modules."
    )
    max_logit_diff: float | None = Field(
        default=None, description="merged: max |logits of the merged model - logits of base+adapter|."
    )
    warnings: list[str] = Field(default_factory=list)
    seconds: float


# ---- the base model -------------------------------------------------------------------------


def resolve_base(adapter: Adapter, base: str | None = None) -> Path | None:
    """The base model's folder: the one given, else the adapter's recorded base (registry,
    metadata.json, adapter_config.json) when it is a folder or a model in the local Hugging Face
    cache; None when it cannot be found."""
    adapter_cfg = _adapter_config(Path(adapter.path))
    recorded = _metadata(Path(adapter.path)).get("base_model") or {}
    recorded_path = recorded.get("path") if isinstance(recorded, dict) else None
    # A base that is given is the only candidate: never fall back to another one silently.
    candidates = [base] if base else [adapter.base_model, recorded_path, adapter_cfg.get("base_model_name_or_path")]
    for candidate in candidates:
        if candidate and Path(candidate).expanduser().is_dir():
            return Path(candidate).expanduser().resolve()
    for candidate in candidates[:1]:  # a hub id: the given base or the recorded base_model
        if candidate and "/" in candidate and not Path(candidate).is_absolute():
            try:
                from huggingface_hub import snapshot_download

                return Path(snapshot_download(candidate, local_files_only=True))
            except Exception:  # noqa: BLE001 - not cached: reported by the caller
                pass
    return None


def _adapter_config(folder: Path) -> dict[str, Any]:
    path = folder / "adapter_config.json"
    return json.loads(path.read_text()) if path.exists() else {}


def _metadata(folder: Path) -> dict[str, Any]:
    path = folder / "metadata.json"
    return json.loads(path.read_text()) if path.exists() else {}


# ---- checks -------------------------------------------------------------------------------


def compatibility(adapter: Adapter, fmt: str, base: str | None = None) -> tuple[list[str], Path | None]:
    """Every reason this export would be wrong, and the base folder it will use."""
    folder = Path(adapter.path)
    problems: list[str] = []
    if not (folder / "adapter_config.json").exists() or not (folder / "adapter_model.safetensors").exists():
        return [f"the adapter folder {folder} lacks adapter_config.json or adapter_model.safetensors"], None
    base_dir = resolve_base(adapter, base)  # peft uses it only for the tokenizer
    if base_dir is None and (fmt != "peft" or base):
        problems.append(
            f"base model {base or adapter.base_model!r} not found as a folder or in the local "
            "Hugging Face cache; pass the base folder (--base / base)"
        )
    if base and base_dir is not None:
        meta = _metadata(folder).get("base_model")
        meta = meta if isinstance(meta, dict) else {}
        recorded = meta.get("sha256") or meta.get("revision") or adapter.base_hash
        given_fingerprint = base_fingerprint(base_dir) if recorded else {}
        given = given_fingerprint.get("sha256") or given_fingerprint.get("revision")
        if recorded and recorded != given:
            assert given is not None  # base_dir is a folder: its fingerprint has a value
            problems.append(
                f"the base {base} differs from the one this adapter was trained on (recorded "
                f"{recorded[:12]}..., given {given[:12]}...); an adapter only "
                "works on its own base"
            )
    if fmt in ("gguf", "ollama"):
        from safetensors import safe_open

        with safe_open(str(folder / "adapter_model.safetensors"), framework="numpy") as handle:
            names = list(handle.keys())
        shape = None
        if base_dir is not None and (base_dir / "config.json").exists():
            shape = gx.BaseShape.from_config(json.loads((base_dir / "config.json").read_text()))
        problems += gx.lora_problems(_adapter_config(folder), names, shape, target=fmt)
    return problems, base_dir


# ---- the formats ----------------------------------------------------------------------------


def _export_peft(adapter: Adapter, base_dir: Path | None, out: Path, dtype: str) -> dict[str, Any]:
    import numpy as np
    from safetensors.numpy import load_file, save_file

    folder = Path(adapter.path)
    cfg = _adapter_config(folder)
    tensors = load_file(str(folder / "adapter_model.safetensors"))
    want = np.float16 if dtype == "f16" else np.float32
    save_file({k: v.astype(want) for k, v in tensors.items()}, str(out / "adapter_model.safetensors"))
    (out / "adapter_config.json").write_text(json.dumps(cfg, indent=2))
    tok = copy_tokenizer([folder, base_dir], out)
    (out / "README.md").write_text(_readme(adapter, cfg))
    reread = load_file(str(out / "adapter_model.safetensors"))
    checks = [
        f"adapter_model.safetensors re-read: {len(reread)} tensors, same names and shapes"
        if {k: v.shape for k, v in reread.items()} == {k: v.shape for k, v in tensors.items()}
        else "tensor names or shapes changed"
    ]
    warnings = [] if tok else ["no tokenizer files found in the adapter or base folder"]
    return {"checks": checks, "warnings": warnings}


def _readme(adapter: Adapter, cfg: dict[str, Any]) -> str:
    route = " / ".join(x for x in (adapter.role, adapter.task_type, adapter.complexity) if x)
    metrics = "\n".join(f"- {k}: {v}" for k, v in sorted(adapter.metrics.items())) or "- (none recorded)"
    return (
        f"# learnloop adapter {adapter.id}\n\n"
        f"- base model: `{adapter.base_model}`" + (f" (hash {adapter.base_hash})" if adapter.base_hash else "") + "\n"
        f"- route: {route}\n- status: {adapter.status}\n- dataset: {adapter.dataset_id or '-'}\n"
        f"- LoRA: r={cfg.get('r')}, alpha={cfg.get('lora_alpha')}, rsLoRA={bool(cfg.get('use_rslora'))}, "
        f"targets={cfg.get('target_modules')}\n\n## Metrics\n\n{metrics}\n\n## Load\n\n"
        "```python\nfrom peft import PeftModel\nfrom transformers import AutoModelForCausalLM\n"
        f"model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained({adapter.base_model!r}), 'THIS_FOLDER')\n```\n"
    )


def _export_gguf(adapter: Adapter, base_dir: Path, out: Path, dtype: str, serving: dict[str, Any]) -> dict[str, Any]:
    shape = gx.BaseShape.from_config(json.loads((base_dir / "config.json").read_text()))
    path = out / "adapter.gguf"
    shapes = gx.write_lora_gguf(Path(adapter.path), shape, path, dtype=dtype, name=adapter.id)
    report = gx.verify_lora_gguf(path, Path(adapter.path), shape)
    if report["problems"]:
        raise Conflict(f"The GGUF written for {adapter.id} failed its read-back check", report["problems"])
    checks = [
        f"GGUF read back: general.type=adapter, adapter.type=lora, architecture "
        f"{shape.arch.gguf_arch}, {len(shapes)} tensors with expected names and shapes",
        f"delta B·A·scale from the GGUF (row layout '{shape.arch.layout}' undone) vs PEFT over "
        f"{report['modules']} modules: "
        f"max diff {report['max_delta_diff']:.3g} (max |delta| {report['max_delta']:.3g})",
    ]
    # llama-server renders the chat template itself: hand it the one training used (--jinja).
    chat = llamacpp_template(serving["tok"], serving["prompt"], serving["raw"])
    if chat["template"] is not None:
        (out / LLAMACPP_TEMPLATE).write_text(chat["template"])
    return {"checks": checks + chat["checks"], "max_delta_diff": report["max_delta_diff"], "warnings": []}


def _serving(store: Store, adapter: Adapter, base_dir: Path) -> dict[str, Any]:
    """How training saw its prompts: the tokenizer, the role's instruction template around
    `{{ .Prompt }}` (None when the role has none here), raw (prompt/completion rows) or chat
    turns, and the system prompt recorded."""
    folder = Path(adapter.path)
    meta = _metadata(folder)
    fields = {
        "instruction": USR,
        "role": adapter.role,
        "task_type": adapter.task_type,
        "complexity": adapter.complexity,
    }
    try:
        prompt = render(resolve_template(store, adapter.role, None)[0], fields).replace(USR, "{{ .Prompt }}")
    except Exception:  # noqa: BLE001 - no template for this role
        prompt = None
    fmt = (meta.get("dataset") or {}).get("format") if isinstance(meta.get("dataset"), dict) else None
    return {
        "tok": read_tokenizer(folder if (folder / "tokenizer_config.json").exists() else base_dir),
        "prompt": prompt,
        "raw": fmt in ("prompt_completion", "alpaca"),
        "system": meta.get("system") or adapter.params.get("system"),
    }


def _export_ollama(
    adapter: Adapter, base_dir: Path, out: Path, dtype: str, from_model: str, serving: dict[str, Any]
) -> dict[str, Any]:
    done = _export_gguf(adapter, base_dir, out, dtype, serving)
    tok, prompt, raw = serving["tok"], serving["prompt"], serving["raw"]
    params = {"temperature": adapter.params.get("temperature", 0.2)}
    served = write_ollama_files(out, from_model, tok, serving["system"], params, prompt, raw)
    how = "raw prompt (trained on prompt/completion text)" if raw else f"chat template ({served['mode']})"
    done["checks"].append(
        f"Modelfile: TEMPLATE from the {how}"
        + (" around the role's instruction template" if prompt else "")
        + f", stops {served['stops']}"
    )
    done["checks"] += served["checks"]
    done["warnings"] += served["warnings"]
    if Path(from_model).expanduser().is_dir():
        done["warnings"].append(
            f"FROM is the folder {from_model}: `ollama create -f Modelfile` imports it (safetensors "
            "bases: Llama, Mistral, Gemma only); to deploy through the Ollama API pass the base's "
            "Ollama model name (--from)"
        )
    engine = own_engine_warning(json.loads((base_dir / "config.json").read_text()).get("model_type"))
    done["warnings"] += [engine] if engine else []
    if not tok["chat_template"]:
        done["warnings"].append("the tokenizer has no chat template: the Modelfile uses a plain prompt template")
    if not served["stops"]:
        done["warnings"].append("no eos/end-of-turn token found: generations may run on")
    return done


# ---- the entry point --------------------------------------------------------------------------


def _check_request(format: str, dtype: str) -> None:
    """A format and a dtype export_adapter knows, both problems at once."""
    check(
        [
            p
            for p in (
                f"unknown format {format!r}; use one of {', '.join(FORMATS)}" if format not in FORMATS else None,
                f"unknown dtype {dtype!r}; use f32 or f16" if dtype not in DTYPES else None,
            )
            if p
        ]
    )


def export_adapter(
    store: Store,
    adapter_id: str,
    format: str,
    out: str | None = None,
    dtype: str = "f32",
    base: str | None = None,
    from_model: str | None = None,
) -> ExportResult:
    """Export one adapter; refuses with every reason when the target cannot represent it. The
    arguments are export_as_job's (the verb, which runs this as a job), checked here for Python
    callers.

    base: the base model folder to check against the one trained on (and to read config and
    tokenizer from); from_model: the Modelfile's FROM, the base as Ollama names it (default:
    the adapter's base_model)."""
    started = time.perf_counter()
    _check_request(format, dtype)
    adapter = get_adapter(store, adapter_id)
    problems, base_dir = compatibility(adapter, format, base)
    check(problems, f"Cannot export adapter {adapter_id} as {format}:")
    target = Path(out).expanduser().resolve() if out else subdir(store.home, "exports", adapter.id) / format
    work = claim_folders(target)
    try:
        if format == "peft":
            done = _export_peft(adapter, base_dir, work, dtype)
        else:
            assert base_dir is not None  # compatibility() reports a missing base for these formats
            if format == "merged":
                done = export_merged(Path(adapter.path), base_dir, work, dtype)
            elif format == "gguf":
                done = _export_gguf(adapter, base_dir, work, dtype, _serving(store, adapter, base_dir))
            else:
                served_from = from_model or gguf_origin(base_dir) or adapter.base_model  # the base users serve
                done = _export_ollama(adapter, base_dir, work, dtype, served_from, _serving(store, adapter, base_dir))
        (work / MARKER).write_text(json.dumps({"adapter_id": adapter_id, "format": format, "dtype": dtype}))
        if ours(target):
            shutil.rmtree(target)
        work.rename(target)  # onto nothing, or onto an empty folder
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    files = [
        ExportedFile(path=str(p), bytes=p.stat().st_size)
        for p in sorted(target.rglob("*"))
        if p.is_file() and p.name != MARKER
    ]
    return ExportResult(
        adapter_id=adapter_id,
        format=cast(Format, format),  # checked against FORMATS above
        dtype=dtype,
        out_dir=str(target),
        files=files,
        total_bytes=sum(f.bytes for f in files),
        checks=done["checks"],
        max_delta_diff=done.get("max_delta_diff"),
        max_logit_diff=done.get("max_logit_diff"),
        warnings=done.get("warnings", []),
        seconds=round(time.perf_counter() - started, 3),
    )


def export_job(ctx) -> dict[str, Any]:
    """Job entry point (learning.jobs.manage): runs export_adapter with the job's params, the
    arguments of export_as_job."""
    p = dict(ctx.params)
    if "fmt" in p:  # a job queued by an earlier version
        p["format"] = p.pop("fmt")
    ctx.progress(force=True, stage="export", message=f"exporting {p['adapter_id']} as {p['format']}")
    return export_adapter(ctx.store, **p).model_dump(mode="json")


class ExportJob(BaseModel):
    job_id: str = Field(description="Follow it with wait_job / job_status; its result is the export result.")
    status: str = Field(description="queued, running, succeeded, failed or cancelled.")
    result: dict[str, Any] | None = Field(
        description="When finished within wait_s: out_dir, files, checks, max_delta_diff / max_logit_diff, seconds."
    )
    error: str | None


def export_as_job(
    store: Store,
    adapter_id: Annotated[str, Field(description="The adapter to export (list_adapters shows ids).")],
    format: Annotated[
        Format,
        Field(
            description="peft: clean PEFT folder; merged: full transformers model (base+adapter); gguf: LoRA GGUF for "
            "llama.cpp; ollama: GGUF + Modelfile."
        ),
    ],
    out: Annotated[
        str | None,
        Field(
            description="Output folder, anywhere (CLI only); default and over MCP: <home>/exports/<id>/<format>.",
            json_schema_extra=CLI_ONLY,
        ),
    ] = None,
    dtype: Annotated[Dtype, Field(description="Tensor precision of the written files.")] = "f32",
    base: Annotated[str | None, Field(description="Base model folder to check against the one trained on.")] = None,
    from_model: Annotated[
        str | None, Field(description="ollama: the base as Ollama names it (Modelfile FROM).")
    ] = None,
    wait_s: Annotated[float, Field(ge=0, le=45, description="Wait this long for the job (45 max).")] = 30,
) -> ExportJob:
    """Export an adapter for a runtime, verified after writing (GGUF delta vs PEFT, merged logits
    vs adapter). Incompatible adapters (DoRA, rank patterns, LoRA on embeddings/lm_head, an
    unsupported architecture, a different base) are refused with every reason. Runs as a job:
    returns its result when done within wait_s, else the job id to follow with wait_job."""
    from learning.jobs.manage import wait_job

    _check_request(format, dtype)
    if format == "ollama" and from_model is not None:
        plain_value(from_model, "from_model (FROM)")
    adapter = get_adapter(store, adapter_id)
    if not base:  # refuse at once what the job would refuse (hashing a given base is left to the job)
        check(compatibility(adapter, format)[0], f"Cannot export adapter {adapter_id} as {format}:")
    params = dict(adapter_id=adapter_id, format=format, out=out, dtype=dtype, base=base, from_model=from_model)
    job_id = start_job(store, "export", "learning.serve.export:export_job", params, subject=adapter_id)
    status = wait_job(store, job_id, timeout=wait_s)
    return ExportJob(job_id=job_id, status=status.status, result=status.result, error=status.error)
