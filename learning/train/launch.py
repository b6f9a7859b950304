"""train_adapter: check everything, record the adapter, start the training job; return at once.

Nothing here imports torch or transformers: the base model is checked from its files
(config.json, tokenizer files, weights; learning.train.checks), so the MCP server stays light.
The plan's numbers come from learning.train.estimates. The training itself is
learning.train.recipe, run as a job in its own process.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Annotated, Any, Literal

import psutil
from pydantic import BaseModel, Field

from learning.errors import Conflict, InvalidInput, LearnloopError, check
from learning.home import subdir
from learning.jobs.manage import start_job
from learning.jobs.queries import active_job_rows
from learning.models.architectures import export_formats
from learning.models.gguf_base import find_imported, gguf_origin
from learning.registry import adapters as registry
from learning.registry.queries import adapter_row
from learning.store import Store, loads
from learning.train.checks import (
    EMBEDDED_PREFIX,
    check_arguments,
    check_base,
    check_dataset,
    check_start_from,
    resolve_adapter_id,
)
from learning.train.cluster import ClusterTarget, check_request, cluster_address, plan_cluster
from learning.train.config import Preset, TrainConfig, build_config
from learning.train.estimates import avg_row_tokens, estimate_run, estimate_steps
from learning.train.job import BaseRef, DatasetRef, StartFrom, TrainJob
from learning.train.sharding import sharding_problems
from learning.train.speed import missing_packages
from learning.train.targets import export_notes, read_shapes, resolve_targets

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
    cluster: ClusterTarget | None = Field(default=None, description="The Ray cluster the workers run on; None: here.")
    resume: bool
    target_modules: list[str] | str = Field(
        default="all-linear",
        description="The layers the adapter will adapt, resolved against the base's own linear layers "
        "(also in config); 'all-linear' only when neither the weights nor the architecture are known.",
    )
    export_formats: list[str] = Field(
        default_factory=list, description="The formats export_adapter can write for this base (known before training)."
    )
    notes: list[str] = Field(default_factory=list)


class TrainStarted(BaseModel):
    job_id: str | None = Field(description="Follow it with wait_job / job_status; None for a dry run.")
    adapter_id: str
    dry_run: bool
    plan: TrainPlan


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
            description="Base model: a local folder, a hub id, embedded:tiny / embedded:small, or a base "
            "imported from a GGUF (import_base): its id or the .gguf path. "
            "Default: the embedded small base, built on first use."
        ),
    ] = None,
    method: Annotated[
        Literal["sft", "dpo", "kto", "grpo"],
        Field(
            description="sft on prompt/completion or chat data; dpo or kto on preference data; grpo samples answers "
            "to an SFT dataset's prompts and rewards each by running its row's tests in the sandbox."
        ),
    ] = "sft",
    preset: Annotated[
        Preset,
        Field(
            description="light r=8 (attention projections), default r=16, heavy r=64 (the default layers: target_modules auto)."
        ),
    ] = "default",
    overrides: Annotated[
        dict[str, Any] | None,
        Field(
            description="Any hyper-parameter by name: rank, alpha, dropout, target_modules, learning_rate, "
            "epochs, batch_size, grad_accum, max_length, warmup_ratio, weight_decay, beta, seed, save_steps, packing, liger, attention, sharding."
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
        int,
        Field(
            ge=1,
            le=64,
            description="Training processes: accelerate here, or Ray Train workers on a cluster; one per GPU, "
            "or CPU processes. Each holds the whole model (ddp) unless sharding is fsdp.",
        ),
    ] = 1,
    sharding: Annotated[
        Literal["ddp", "fsdp"] | None,
        Field(
            description="With num_processes > 1: ddp (default; a full model per process) or fsdp (the model "
            "sharded across processes, for a base that does not fit one GPU; not with 4bit/8bit)."
        ),
    ] = None,
    cluster: Annotated[
        str | None,
        Field(
            description="Train on a Ray cluster: ray://HOST:PORT (Ray Client) or HOST:PORT (from a node of it); "
            "default $LEARNLOOP_CLUSTER, 'local' for this machine. Needs learnloop[cluster].",
        ),
    ] = None,
    resources_per_worker: Annotated[
        dict[str, float] | None,
        Field(description='Ray resources per worker, e.g. {"GPU": 1, "CPU": 8}; default one GPU, else one CPU.'),
    ] = None,
    start_from: Annotated[
        str | None,
        Field(
            description="Continue this trained adapter's weights (e.g. GRPO after SFT) instead of a fresh LoRA; "
            "its rank, alpha and layers are kept. It must be on the same base."
        ),
    ] = None,
) -> TrainStarted:
    """Train a LoRA adapter for a role on a curated dataset, in a background job. Returns
    job_id and adapter_id at once: follow the job with wait_job / job_status, stop it with
    cancel_job (it checkpoints; resume=true continues). Every input is checked first and all
    problems are reported together. Use dry_run to see the plan without training."""
    problems, method = check_arguments(role, method, num_processes)
    problems += check_request(address := cluster_address(cluster), resources_per_worker)
    explicit_id = adapter_id is not None
    id_problems, adapter_id = resolve_adapter_id(store, role, adapter_id, resume)
    problems += id_problems
    notes: list[str] = []
    previous = adapter_row(store, adapter_id) if resume and adapter_id else None
    base = base or str(previous["base_model"] if previous is not None else DEFAULT_BASE)
    explicit = {"method": method, "max_steps": max_steps, "quantize": quantize, "sharding": sharding}
    config_problems, cfg = _train_config(previous, base, preset, overrides, explicit, notes)
    problems += config_problems + (missing_packages(cfg) + sharding_problems(cfg, num_processes) if cfg else [])
    base_problems, base_ref, model_config = _check_base(store, base, notes)
    problems += base_problems
    base_ref = None if base_problems else base_ref
    shapes = read_shapes(_base_folder(store, base_ref), notes) if base_ref is not None else None
    if cfg is not None and base_ref is not None:
        target_problems, targets = resolve_targets(cfg.target_modules, model_config.get("model_type"), shapes, notes)
        problems += target_problems
        cfg = cfg.model_copy(update={"target_modules": targets}) if targets is not None else cfg
    ds_problems, ds, train_rows = check_dataset(store, dataset_id, role, cfg.method if cfg else method)
    problems += ds_problems
    start_problems, start = _start_from(store, start_from, previous, base_ref)
    problems += start_problems
    check(problems, "Cannot train:")
    assert cfg is not None and ds is not None and base_ref is not None  # else check() raised
    cfg = _continued(cfg, start, notes)
    _note_unbuilt_base(store, base_ref, notes)
    formats = export_formats(model_config.get("model_type"))
    export_notes(model_config.get("model_type"), formats, notes)

    steps = estimate_steps(train_rows, cfg, num_processes)
    row_tokens = avg_row_tokens(Path(ds.path) / "train.jsonl", cfg.max_length)
    tokens, est_time, est_memory, lora_params = estimate_run(
        model_config, cfg, steps, row_tokens, num_processes, shapes
    )
    cfg = _choose_quantization(cfg, est_memory, notes)
    _check_disk(store, lora_params)
    target = plan_cluster(address, cfg, num_processes, resources_per_worker, est_memory, notes) if address else None
    plan = TrainPlan(
        adapter_id=adapter_id or registry.new_adapter_id(role),
        role=role,
        dataset_id=dataset_id,
        base_model=base,
        method=cfg.method,
        config=cfg.model_dump(),
        train_rows=train_rows,
        steps=steps,
        tokens_estimate=tokens,
        est_time_s=est_time,
        est_memory_mb=est_memory,
        num_processes=num_processes,
        cluster=target,
        resume=resume,
        target_modules=cfg.target_modules,
        export_formats=formats,
        notes=notes,
    )
    if dry_run:
        return TrainStarted(job_id=None, adapter_id=plan.adapter_id, dry_run=True, plan=plan)
    return _start(store, plan, cfg, base_ref, ds, start, previous, explicit_id=explicit_id)


def _train_config(
    previous, base: str, preset: Preset, overrides: dict[str, Any] | None, explicit: dict[str, Any], notes: list[str]
) -> tuple[list[str], TrainConfig | None]:
    """The run's configuration: a resumed adapter's recorded one, else the preset with the
    overrides and the explicit arguments that were given (and the embedded base's learning rate)."""
    try:
        if previous is not None:  # a resumed run keeps the configuration it started with
            cfg = TrainConfig.model_validate((loads(previous["params"]) or {}).get("config", {}))
            notes.append("resuming with the adapter's recorded configuration (overrides are ignored)")
            return [], cfg
        values = {**(overrides or {}), **{k: v for k, v in explicit.items() if v is not None}}
        if base.startswith(EMBEDDED_PREFIX) and "learning_rate" not in (overrides or {}):
            values["learning_rate"] = EMBEDDED_LR
            notes.append(f"learning_rate {EMBEDDED_LR} for the embedded base (set learning_rate to change it)")
        return [], build_config(preset, values)
    except LearnloopError as exc:
        return exc.problems or [str(exc)], None


def _start_from(
    store: Store, start_from: str | None, previous, base_ref: BaseRef | None
) -> tuple[list[str], StartFrom | None]:
    """The adapter the run continues: the argument, or the one a resumed run started from."""
    recorded = (loads(previous["params"]) or {}).get("start_from") if previous is not None else None
    if start_from is None and recorded:
        start_from = StartFrom.model_validate(recorded).id
    loadable = _loadable_base(store, base_ref) if base_ref is not None else None
    return check_start_from(store, start_from, loadable)


def _continued(cfg: TrainConfig, start: StartFrom | None, notes: list[str]) -> TrainConfig:
    """The configuration with the continued adapter's LoRA shape; GRPO's estimates explained."""
    if cfg.method == "grpo":
        notes.append(
            "grpo: the estimates count the training passes only; sampling num_generations answers per prompt "
            "and running their tests take most of the time"
        )
    if start is None:
        return cfg
    notes.append(f"continuing adapter {start.id}: its rank {start.rank}, alpha {start.alpha} and layers")
    return cfg.model_copy(update={"rank": start.rank, "alpha": start.alpha, "target_modules": start.target_modules})


def _check_base(store: Store, base: str, notes: list[str]) -> tuple[list[str], BaseRef | None, dict]:
    """check_base, for a base imported from a GGUF (its id or the GGUF's path) on its folder."""
    folder, problem = find_imported(store.home, base)
    if problem:
        return [problem], None, {}
    if folder is None:
        return check_base(base)
    problems, base_ref, config = check_base(str(folder))
    gguf = gguf_origin(folder)
    notes.append(f"base {folder.name}: imported from {gguf}; Ollama and llama.cpp exports point at that file")
    imported = base_ref.model_copy(update={"imported_as": folder.name, "gguf": gguf}) if base_ref else None
    return problems, imported, config


def _note_unbuilt_base(store: Store, base_ref: BaseRef, notes: list[str]) -> None:
    if base_ref.kind == "embedded":
        from learning.models.tinybase import base_dir, read_info

        if read_info(base_dir(store.home, base_ref.size)) is None:
            notes.append(f"the embedded {base_ref.size} base is built first (about a minute or two on a CPU)")


def _base_folder(store: Store, base_ref: BaseRef) -> Path | None:
    """The folder whose weight files say which layers the base has, where there is one on disk."""
    if base_ref.kind == "embedded":
        from learning.models.tinybase import base_dir, read_info

        folder = base_dir(store.home, base_ref.size)
        return folder if read_info(folder) is not None else None  # unbuilt: llama's defaults stand in
    if base_ref.kind == "path":
        return Path(base_ref.ref)
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(base_ref.ref, "config.json", revision=base_ref.revision)
    return Path(cached).parent if isinstance(cached, str) else None


def _choose_quantization(cfg: TrainConfig, est_memory_mb: float, notes: list[str]) -> TrainConfig:
    if cfg.quantize != "auto" or cfg.sharding == "fsdp":  # fsdp shards instead of quantizing
        return cfg.model_copy(update={"quantize": "none"}) if cfg.quantize == "auto" else cfg
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


def _start(
    store: Store,
    plan: TrainPlan,
    cfg: TrainConfig,
    base_ref: BaseRef,
    ds: DatasetRef,
    start: StartFrom | None,
    previous,
    explicit_id: bool,
) -> TrainStarted:
    job = TrainJob(
        adapter_id=plan.adapter_id,
        role=plan.role,
        adapter_dir="",  # known once the adapter is recorded
        config=cfg,
        base=base_ref,
        dataset=ds,
        num_processes=plan.num_processes,
        start_from=start,
        cluster=plan.cluster,
    )
    if previous is not None:
        adapter_id = previous["id"]
        if any(j["subject"] == adapter_id for j in active_job_rows(store)):
            raise Conflict(f"Adapter {adapter_id} is being trained by a running job already.")
        registry.move(store, adapter_id, "training", "learnloop", "resumed from its latest checkpoint", force=True)
    else:
        adapter_id = _create_unique(store, plan, job, explicit=explicit_id)
    job = job.model_copy(
        update={"adapter_id": adapter_id, "adapter_dir": str(subdir(store.home, "adapters", adapter_id))}
    )
    try:
        job_id = start_job(store, "train", "learning.train.recipe:run_job", job.params(), subject=adapter_id)
    except Exception:
        if previous is not None:
            registry.move(store, adapter_id, "failed", "learnloop", "the training job could not start")
        else:  # nothing was trained: nothing stays in the registry
            registry.forget_unstarted(store, adapter_id)
        raise
    return TrainStarted(
        job_id=job_id, adapter_id=adapter_id, dry_run=False, plan=plan.model_copy(update={"adapter_id": adapter_id})
    )


def _create_unique(store: Store, plan: TrainPlan, job: TrainJob, explicit: bool) -> str:
    """Record the adapter as training; a second adapter of the role in the same second gets -2, -3, ..."""
    for n in range(1, 100):
        candidate = plan.adapter_id if n == 1 else f"{plan.adapter_id}-{n}"
        try:
            registry.create_adapter(
                store,
                candidate,
                plan.role,
                _loadable_base(store, job.base),
                str(subdir(store.home, "adapters", candidate)),
                dataset_id=plan.dataset_id,
                method=plan.method,
                params=job.adapter_params(),
                reason="training started",
            )
            return candidate
        except Conflict:
            if explicit:
                raise
    raise Conflict(f"Could not find a free adapter id starting with {plan.adapter_id}.")


def _loadable_base(store: Store, base_ref: BaseRef) -> str:
    """What from_pretrained takes: the embedded base's folder, a local folder or a hub id."""
    if base_ref.kind == "embedded":
        from learning.models.tinybase import base_dir

        return str(base_dir(store.home, base_ref.size))
    return base_ref.ref
