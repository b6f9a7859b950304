"""train_adapter: check everything, record the adapter, start the training job; return at once.

Nothing here imports torch or transformers: the base model is checked from its files
(config.json, tokenizer files, weights), so the MCP server stays light. The training
itself is learning.train.recipe, run as a job in its own process.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path
from typing import Annotated, Any, Literal

import psutil
from pydantic import BaseModel, Field

from learning.data.datasets import dataset_row
from learning.data.formats import PREF_FORMATS, SFT_FORMATS
from learning.errors import Conflict, InvalidInput, LearnloopError, check
from learning.home import safe_id, subdir
from learning.jobs.manage import start_job
from learning.jobs.queries import active_job_rows
from learning.registry import adapters as registry
from learning.registry.queries import adapter_row, adapter_rows
from learning.store import Store, loads
from learning.train.config import Preset, TrainConfig, build_config

METHOD_KINDS = {"sft": ("sft",), "dpo": ("dpo",), "kto": ("kto",)}
MIN_ROWS = 10
EMBEDDED_PREFIX = "embedded:"
DEFAULT_BASE = "embedded:small"
# The embedded bases are tiny and were measured to need a high learning rate (demo-feasibility).
EMBEDDED_LR = 2e-3


class TrainPlan(BaseModel):
    adapter_id: str
    role: str
    dataset_id: str
    base_model: str = Field(description="The base as given: a folder, a hub id, or embedded:<size>.")
    method: str
    config: dict[str, Any] = Field(description="Every hyper-parameter the run will use.")
    train_rows: int
    steps: int = Field(description="Optimizer steps.")
    tokens_estimate: int = Field(description="Tokens the run will see (estimated from the data's size).")
    est_time_s: float = Field(description="Rough estimate of the training time.")
    est_memory_mb: float = Field(description="Rough estimate of peak memory per process.")
    num_processes: int
    resume: bool
    notes: list[str] = Field(default_factory=list)


class TrainStarted(BaseModel):
    job_id: str | None = Field(description="Follow it with wait_job / job_status; None for a dry run.")
    adapter_id: str
    dry_run: bool
    plan: TrainPlan


# ---- checks of each input; each returns problems instead of raising -------------------


def _check_dataset(store: Store, dataset_id: str, role: str, method: str) -> tuple[list[str], dict | None]:
    row = dataset_row(store, dataset_id)
    if row is None:
        return [f"No dataset {dataset_id!r}. Make one with make_sft (CLI: learnloop make-sft) and pass its id."], None
    ds = dict(row)
    problems = []
    if ds["role"] != role:
        problems.append(f"Dataset {dataset_id} is for role {ds['role']!r}, not {role!r}; use a dataset of this role.")
    if ds["kind"] not in METHOD_KINDS[method]:
        need = (
            "a preference dataset (prompt/chosen/rejected)"
            if method == "dpo"
            else "a KTO dataset (prompt/completion/label)"
            if method == "kto"
            else "an SFT dataset"
        )
        problems.append(f"Method {method} needs {need}; dataset {dataset_id} is kind {ds['kind']!r}.")
    formats = SFT_FORMATS if method == "sft" else PREF_FORMATS
    if ds["format"] not in formats:
        problems.append(f"Dataset {dataset_id} has format {ds['format']!r}; {method} takes {', '.join(formats)}.")
    path = (store.home / ds["path"]).resolve()
    if store.home not in path.parents or not (path / "train.jsonl").is_file():
        problems.append(f"Dataset {dataset_id}'s train.jsonl is missing under {path}; make the dataset again.")
    elif ds["train_rows"] < MIN_ROWS:
        problems.append(
            f"Dataset {dataset_id} has {ds['train_rows']} training rows; at least {MIN_ROWS} are needed. "
            "Log more runs or lower make_sft's reward threshold."
        )
    ds["abs_path"] = str(path)
    return problems, ds


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _token_name(value: Any) -> str | None:
    return value.get("content") if isinstance(value, dict) else value


def check_base(base: str) -> tuple[list[str], dict, dict]:
    """Check a base model from its files without loading weights.
    Returns (problems, resolved {"kind", "ref"|"size"}, model config)."""
    if base.startswith(EMBEDDED_PREFIX):
        from learning.models.tinybase import SIZES

        size = base[len(EMBEDDED_PREFIX) :]
        if size not in SIZES:
            return [f"Unknown embedded base {base!r}; use {', '.join(EMBEDDED_PREFIX + s for s in SIZES)}."], {}, {}
        spec = SIZES[size]
        return (
            [],
            {"kind": "embedded", "size": size},
            dict(
                hidden_size=spec.hidden_size,
                num_hidden_layers=spec.num_layers,
                intermediate_size=spec.intermediate_size,
                vocab_size=spec.vocab_size,
                num_attention_heads=spec.num_heads,
                tie_word_embeddings=True,
            ),
        )
    path = Path(base).expanduser()
    if not path.exists():
        if base.count("/") == 1 and not base.startswith((".", "/", "~")):
            return _check_hub(base)
        return (
            [
                f"Base model {base!r} does not exist. Pass a folder with config.json and weights, a hub id, or "
                "leave --base out to use the embedded base."
            ],
            {},
            {},
        )
    config = _read_json(path / "config.json")
    problems = []
    if not config:
        problems.append(f"{path} has no readable config.json: not a transformers model folder.")
        return problems, {}, {}
    archs = config.get("architectures") or []
    if not any(a.endswith("ForCausalLM") for a in archs):
        problems.append(
            f"{path} is not a causal language model (architectures {archs or 'missing'}); "
            "train_adapter needs a *ForCausalLM model."
        )
    if not (list(path.glob("*.safetensors")) or list(path.glob("*.bin"))):
        problems.append(f"{path} has no weights (*.safetensors or *.bin).")
    problems += _check_tokenizer_files(path, config)
    return problems, {"kind": "path", "ref": str(path.resolve())}, config


def _check_tokenizer_files(path: Path, config: dict) -> list[str]:
    tok_cfg = _read_json(path / "tokenizer_config.json")
    special = _read_json(path / "special_tokens_map.json")
    if not tok_cfg and not (path / "tokenizer.json").exists() and not (path / "tokenizer.model").exists():
        return [f"{path} has no tokenizer files (tokenizer.json / tokenizer.model / tokenizer_config.json)."]
    eos = _token_name(tok_cfg.get("eos_token") or special.get("eos_token")) or config.get("eos_token_id")
    if eos is None:
        return [f"{path}'s tokenizer has no eos token: set eos_token in tokenizer_config.json."]
    return []


def _check_hub(repo: str) -> tuple[list[str], dict, dict]:
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(repo, "config.json")
    if isinstance(cached, str):
        return _check_hub_snapshot(repo, Path(cached).parent)
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        return (
            [
                f"Base model {repo!r} is not in the local hub cache and HF_HUB_OFFLINE=1; download it first "
                "or pass a local folder."
            ],
            {},
            {},
        )
    return [], {"kind": "hub", "ref": repo}, {}


def _check_hub_snapshot(repo: str, folder: Path) -> tuple[list[str], dict, dict]:
    problems, _, config = check_base(str(folder))
    return problems, {"kind": "hub", "ref": repo, "revision": folder.name}, config


def _resolve_adapter_id(store: Store, role: str, adapter_id: str | None, resume: bool) -> tuple[list[str], str | None]:
    if adapter_id is None:
        if not resume:
            return [], None
        rows = [
            r for r in adapter_rows(store, role=role, status="failed") if (Path(r["path"]) / "checkpoints").is_dir()
        ]
        if not rows:
            return [f"Nothing to resume for role {role!r}: no failed or cancelled adapter with a checkpoint."], None
        return [], rows[0]["id"]
    try:
        safe_id(adapter_id, "adapter id")
    except InvalidInput as exc:
        return [str(exc)], None
    row = adapter_row(store, adapter_id)
    if resume and row is None:
        return [f"No adapter {adapter_id!r} to resume."], None
    if not resume and row is not None:
        return [f"Adapter {adapter_id} already exists; pass resume to continue it, or another id."], None
    if resume and row is not None and row["status"] != "failed":  # (resume without a row returned above)
        return [f"Adapter {adapter_id} is {row['status']}; only a failed or cancelled adapter can be resumed."], None
    return [], adapter_id


# ---- estimates --------------------------------------------------------------------------


def estimate_steps(rows: int, cfg: TrainConfig, num_processes: int = 1) -> int:
    if cfg.max_steps:
        return cfg.max_steps
    batches = math.ceil(rows / (cfg.batch_size * num_processes))
    return max(1, math.ceil(cfg.epochs * math.ceil(batches / cfg.grad_accum)))


def _param_counts(config: dict, cfg: TrainConfig) -> tuple[int, int]:
    """(base parameters, LoRA parameters) from a model config, for the estimates."""
    h = config.get("hidden_size") or 0
    n = config.get("num_hidden_layers") or 0
    inter = config.get("intermediate_size") or 4 * h
    heads = config.get("num_attention_heads") or 1
    kv = (config.get("num_key_value_heads") or heads) * (config.get("head_dim") or h // max(1, heads))
    shapes = {
        "q_proj": (h, h),
        "k_proj": (h, kv),
        "v_proj": (h, kv),
        "o_proj": (h, h),
        "gate_proj": (h, inter),
        "up_proj": (h, inter),
        "down_proj": (inter, h),
    }
    embed = (config.get("vocab_size") or 0) * h * (1 if config.get("tie_word_embeddings") else 2)
    base = embed + n * sum(a * b for a, b in shapes.values())
    targets = (
        shapes if cfg.target_modules == "all-linear" else {k: v for k, v in shapes.items() if k in cfg.target_modules}
    )
    lora = n * sum(cfg.rank * (a + b) for a, b in targets.values())
    return base, lora


def _avg_row_tokens(path: Path, max_length: int) -> int:
    """Characters per row / 3.5, from the first 200 rows."""
    lengths = []
    with open(path, encoding="utf-8") as handle:
        for i, line in enumerate(handle):
            if i >= 200:
                break
            lengths.append(len(line))
    return min(max_length, int(sum(lengths) / max(1, len(lengths)) / 3.5) + 1)


def _estimates(
    config: dict, cfg: TrainConfig, steps: int, row_tokens: int, num_processes: int
) -> tuple[int, float, float, int]:
    """(tokens, seconds, MiB per process, LoRA parameters): rough, for the plan."""
    base, lora = _param_counts(config, cfg)
    factor = 2 if cfg.method in ("dpo", "kto") else 1  # chosen and rejected, or policy and reference
    tokens = steps * cfg.batch_size * cfg.grad_accum * num_processes * row_tokens * factor
    flops = 6 * base * tokens  # forward + backward through the frozen base dominates
    est_time = steps * 0.05 + flops / (20e9 * num_processes)  # ~20 GFLOP/s per CPU process, plus overhead
    bytes_per = 0.55 if cfg.quantize == "4bit" else 1.1 if cfg.quantize == "8bit" else 4
    activations = (
        cfg.batch_size * row_tokens * (config.get("hidden_size") or 0) * (config.get("num_hidden_layers") or 0) * 40
    )
    memory = (base * bytes_per + lora * 16 + activations) / 2**20 + 600  # + the Python, torch and TRL runtime
    return tokens, round(est_time, 1), round(memory, 1), lora


# ---- the tool ---------------------------------------------------------------------------


def train_adapter(
    store: Store,
    role: Annotated[
        str,
        Field(description="The role the adapter serves (coder, fixer, judge, ...); the dataset must be of this role."),
    ],
    dataset_id: Annotated[str, Field(description="A dataset id from make_sft (sft) or make_preferences (dpo/kto).")],
    base: Annotated[
        str | None,
        Field(
            description="Base model: a local folder, a hub id, or embedded:tiny / embedded:small. "
            "Default: the embedded small base, built on first use."
        ),
    ] = None,
    method: Annotated[
        Literal["sft", "dpo", "kto"],
        Field(description="sft on prompt/completion or chat data; dpo or kto on preference data."),
    ] = "sft",
    preset: Annotated[
        Preset,
        Field(description="light r=8 (attention only), default r=16, heavy r=64 (all projections)."),
    ] = "default",
    overrides: Annotated[
        dict[str, Any] | None,
        Field(
            description="Any hyper-parameter by name: rank, alpha, dropout, target_modules, learning_rate, "
            "epochs, batch_size, grad_accum, max_length, warmup_ratio, weight_decay, beta, seed, save_steps, packing."
        ),
    ] = None,
    quantize: Annotated[
        Literal["none", "4bit", "8bit", "auto"] | None,
        Field(description="4bit = QLoRA; auto picks 4bit when the model would not fit in memory."),
    ] = None,
    resume: Annotated[
        bool,
        Field(
            description="Continue a cancelled or failed adapter from its latest checkpoint (the role's latest, or adapter_id)."
        ),
    ] = False,
    adapter_id: Annotated[
        str | None, Field(description="The adapter to resume, or an id for a new one (default role-YYYYMMDD-HHMMSS).")
    ] = None,
    dry_run: Annotated[
        bool,
        Field(description="Check everything and return the plan (rows, steps, tokens, time, memory) without training."),
    ] = False,
    max_steps: Annotated[int | None, Field(ge=1, description="Stop after this many optimizer steps.")] = None,
    num_processes: Annotated[
        int, Field(ge=1, le=64, description="Training processes (accelerate DDP): one per GPU, or CPU processes.")
    ] = 1,
) -> TrainStarted:
    """Train a LoRA adapter for a role on a curated dataset, in a background job. Returns
    job_id and adapter_id at once: follow the job with wait_job / job_status, stop it with
    cancel_job (it checkpoints; resume=true continues). Every input is checked first and all
    problems are reported together. Use dry_run to see the plan without training."""
    problems: list[str] = []
    try:
        safe_id(role, "role")
    except InvalidInput as exc:
        problems.append(str(exc))
    if method not in METHOD_KINDS:
        problems.append(f"Unknown method {method!r}; use sft, dpo or kto.")
        method = "sft"
    if not 1 <= num_processes <= 64:
        problems.append(f"num_processes must be between 1 and 64, not {num_processes}.")
    explicit_id = adapter_id is not None
    id_problems, adapter_id = _resolve_adapter_id(store, role, adapter_id, resume)
    problems += id_problems
    notes: list[str] = []
    previous = adapter_row(store, adapter_id) if resume and adapter_id else None
    previous_base: str = previous["base_model"] if previous is not None else DEFAULT_BASE
    base = base or previous_base
    cfg = None
    try:
        if previous is not None:  # a resumed run keeps the configuration it started with
            cfg = TrainConfig(**(loads(previous["params"]) or {}).get("config", {}))
            notes.append("resuming with the adapter's recorded configuration (overrides are ignored)")
        else:
            explicit = {"method": method, "max_steps": max_steps, "quantize": quantize}
            values = {**(overrides or {}), **{k: v for k, v in explicit.items() if v is not None}}
            if base.startswith(EMBEDDED_PREFIX) and "learning_rate" not in (overrides or {}):
                values["learning_rate"] = EMBEDDED_LR
                notes.append(f"learning_rate {EMBEDDED_LR} for the embedded base (set learning_rate to change it)")
            cfg = build_config(preset, values)
    except LearnloopError as exc:
        problems += exc.problems or [str(exc)]
    base_problems, base_ref, model_config = check_base(base)
    problems += base_problems
    ds_problems, ds = _check_dataset(store, dataset_id, role, cfg.method if cfg else method)
    problems += ds_problems
    check(problems, "Cannot train:")
    assert cfg is not None and ds is not None  # else there were problems and check() raised
    if base_ref["kind"] == "embedded":
        from learning.models.tinybase import base_dir, read_info

        if read_info(base_dir(store.home, base_ref["size"])) is None:
            notes.append(f"the embedded {base_ref['size']} base is built first (about a minute or two on a CPU)")

    steps = estimate_steps(ds["train_rows"], cfg, num_processes)
    tokens, est_time, est_memory, lora_params = _estimates(
        model_config, cfg, steps, _avg_row_tokens(Path(ds["abs_path"]) / "train.jsonl", cfg.max_length), num_processes
    )
    cfg = _choose_quantization(cfg, est_memory, notes)
    _check_disk(store, lora_params)
    plan = TrainPlan(
        adapter_id=adapter_id or registry.new_adapter_id(role),
        role=role,
        dataset_id=dataset_id,
        base_model=base,
        method=cfg.method,
        config=cfg.model_dump(),
        train_rows=ds["train_rows"],
        steps=steps,
        tokens_estimate=tokens,
        est_time_s=est_time,
        est_memory_mb=est_memory,
        num_processes=num_processes,
        resume=resume,
        notes=notes,
    )
    if dry_run:
        return TrainStarted(job_id=None, adapter_id=plan.adapter_id, dry_run=True, plan=plan)
    return _start(store, plan, base_ref, ds, previous, explicit_id=explicit_id)


def _choose_quantization(cfg: TrainConfig, est_memory_mb: float, notes: list[str]) -> TrainConfig:
    if cfg.quantize != "auto":
        return cfg
    # Compared with free RAM: the front never imports torch, so it cannot ask a GPU.
    available = psutil.virtual_memory().available / 2**20
    choice = "4bit" if est_memory_mb > 0.8 * available else "none"
    if choice != "none":
        notes.append(f"quantize auto -> {choice} (estimated {est_memory_mb:.0f} MiB, {available:.0f} MiB free)")
    return cfg.model_copy(update={"quantize": choice})


def _check_disk(store: Store, lora_params: int) -> None:
    # Two checkpoints (weights + two Adam moments, float32) and the adapter, plus a 200 MiB margin.
    need = 200 * 2**20 + 3 * 12 * lora_params
    free = shutil.disk_usage(store.home).free
    if free < need:
        raise InvalidInput(
            f"Not enough disk space under {store.home}: {free // 2**20} MiB free, about "
            f"{need // 2**20} MiB needed for checkpoints. Free some space or use another home."
        )


def _start(store: Store, plan: TrainPlan, base_ref: dict, ds: dict, previous, explicit_id: bool) -> TrainStarted:
    params = {
        "config": plan.config,
        "dataset_id": plan.dataset_id,
        "base": base_ref,
        "num_processes": plan.num_processes,
    }
    if previous is not None:
        adapter_id = previous["id"]
        if any(j["subject"] == adapter_id for j in active_job_rows(store)):
            raise Conflict(f"Adapter {adapter_id} is being trained by a running job already.")
        registry.move(store, adapter_id, "training", "learnloop", "resumed from its latest checkpoint", force=True)
    else:
        adapter_id = _create_unique(store, plan, params, explicit=explicit_id)
    adapter_dir = subdir(store.home, "adapters", adapter_id)
    job_params = {
        **params,
        "adapter_id": adapter_id,
        "role": plan.role,
        "adapter_dir": str(adapter_dir),
        "dataset_path": ds["abs_path"],
        "dataset_format": ds["format"],
        "dataset_hash": ds["content_hash"],
    }
    try:
        job_id = start_job(store, "train", "learning.train.recipe:run_job", job_params, subject=adapter_id)
    except Exception:
        registry.move(store, adapter_id, "failed", "learnloop", "the training job could not start")
        raise
    return TrainStarted(
        job_id=job_id, adapter_id=adapter_id, dry_run=False, plan=plan.model_copy(update={"adapter_id": adapter_id})
    )


def _create_unique(store: Store, plan: TrainPlan, params: dict, explicit: bool) -> str:
    """Record the adapter as training; a second adapter of the role in the same second gets -2, -3, ..."""
    for n in range(1, 100):
        candidate = plan.adapter_id if n == 1 else f"{plan.adapter_id}-{n}"
        try:
            registry.create_adapter(
                store,
                candidate,
                plan.role,
                _loadable_base(store, params["base"]),
                str(subdir(store.home, "adapters", candidate)),
                dataset_id=plan.dataset_id,
                method=plan.method,
                params=params,
                reason="training started",
            )
            return candidate
        except Conflict:
            if explicit:
                raise
    raise Conflict(f"Could not find a free adapter id starting with {plan.adapter_id}.")


def _loadable_base(store: Store, base_ref: dict) -> str:
    """What from_pretrained takes: the embedded base's folder, a local folder or a hub id."""
    if base_ref["kind"] == "embedded":
        from learning.models.tinybase import base_dir

        return str(base_dir(store.home, base_ref["size"]))
    return base_ref["ref"]
