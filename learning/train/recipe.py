"""Train one LoRA/QLoRA adapter: the recipe that runs inside a job's process.

train() reads top to bottom, one named step a line, like TRL's sft.py and torchtune's recipes:
load the base and its tokenizer, build the dataset in TRL's columns, load the model, build the
trainer (SFT, DPO, KTO or GRPO, with LoRA), check what PEFT adapted, train, save the adapter and
its metadata. The job's parameters are read once, as a TrainJob (learning.train.job);
learning.train.launch.train_adapter validated everything before this runs.

With num_processes > 1 the job process runs `accelerate launch` of this module's main(),
one process per device (learning.train.distributed); rank 0 reports progress and writes the
artifacts.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from learning.clock import iso
from learning.data.chat_loss import assistant_only_rows, has_generation_markers
from learning.data.control_tokens import control_strings, escape_rows
from learning.data.formats import training_rows
from learning.errors import InvalidInput, LearnloopError
from learning.jobs.manage import JobCancelled, JobContext
from learning.models.fingerprint import base_fingerprint
from learning.store import Store, dumps
from learning.train.checkpoints import move_aside, newest_intact, skipped_message
from learning.train.config import TrainConfig
from learning.train.distributed import (
    CANCELLED_FILE,
    RESULT_FILE,
    bound_to_launcher,
    cancel_message,
    launch_distributed,
    leave_process_group,
)
from learning.train.grpo import GroupCallback, group_stats, grpo_metrics, grpo_rows, grpo_trainer, no_signal_message
from learning.train.job import BaseRef, TrainJob
from learning.train.progress import ProgressCallback
from learning.train.sharding import enable_on_cpu, sharding_args, sharding_record
from learning.train.speed import liger_enabled, model_kwargs, needs_checkpointing, uses_bf16
from learning.train.targets import adapted_mismatch, adapted_modules


def run_job(ctx: JobContext) -> dict[str, Any]:
    """Job entry point (learning.jobs.manage target 'learning.train.recipe:run_job')."""
    from learning.registry import adapters as registry
    from learning.registry.queries import set_adapter_status, update_adapter_fields

    job = TrainJob.read(ctx.params)
    try:
        if job.cluster is not None:
            from learning.train.on_ray import run_on_ray  # imports Ray: only for a cluster's jobs

            result = run_on_ray(ctx, job, job.cluster, resolve_base(ctx, job.base))
        elif job.num_processes > 1:
            result = launch_distributed(ctx, job)
        else:
            result = train(ctx, job)
            assert result is not None  # a single process is rank 0, which returns the result
    except JobCancelled as exc:
        with ctx.store.write() as conn:
            set_adapter_status(conn, job.adapter_id, "training", "failed", "learnloop", str(exc))
        raise
    except Exception as exc:
        # Failed before its first step (loading the base, wrapping it with LoRA): nothing to resume,
        # so nothing stays in the registry. After that it stays failed, for resume.
        if ctx._progress.get("stage") not in ("train", "done") and registry.forget_unstarted(ctx.store, job.adapter_id):
            traceback.print_exc()
            cause = str(exc) if isinstance(exc, LearnloopError) else f"{type(exc).__name__}: {exc}"
            raise LearnloopError(
                f"{cause.rstrip('.')}. Nothing was trained: adapter {job.adapter_id} was removed from the "
                "registry. Fix the cause and call train_adapter again (the job's log has the traceback)."
            ) from exc
        raise
    registry.move(ctx.store, job.adapter_id, "trained", "learnloop", f"trained by job {ctx.job_id}")
    registry.set_metrics(ctx.store, job.adapter_id, result["metrics"])
    params = {**registry.get_adapter(ctx.store, job.adapter_id).params, "adapted_modules": result["adapted_modules"]}
    with ctx.store.write() as conn:
        update_adapter_fields(conn, job.adapter_id, params=dumps(params))
        if result.get("base_hash"):
            update_adapter_fields(conn, job.adapter_id, base_hash=result["base_hash"])
    return result


def main(argv: list[str]) -> int:
    """One process of a distributed run: `python -m learning.train.recipe HOME JOB_ID`."""
    if "LOCAL_RANK" in os.environ and not bound_to_launcher(argv[1]):
        return 1  # the launcher is gone already: nobody would wait for this process
    ctx = JobContext(Store(argv[0]), argv[1])
    job = TrainJob.read(ctx.params)
    try:
        result = train(ctx, job)
    except JobCancelled:
        return 0  # rank 0 wrote cancelled.json; the job process reports the cancel
    finally:
        leave_process_group()
    if result is not None:
        (Path(job.adapter_dir) / RESULT_FILE).write_text(json.dumps(result))
    return 0


# ---- the recipe ------------------------------------------------------------------------


def train(ctx: JobContext, job: TrainJob) -> dict[str, Any] | None:
    """Train the adapter the job describes; returns the result on rank 0, None elsewhere."""
    import torch

    started = time.time()
    os.environ.setdefault("TENSORBOARD_LOGGING_DIR", str(Path(job.adapter_dir) / "tensorboard"))
    rank0 = int(os.environ.get("RANK", "0")) == 0
    cuda = torch.cuda.is_available()

    base_path = resolve_base(ctx, job.base)
    tokenizer = load_tokenizer(base_path)
    data = build_dataset(job, tokenizer)
    if data.loss_on and rank0:
        ctx.log(f"[learnloop] loss on {data.loss_on}")
    model = load_model(job, base_path, cuda)
    callback = ProgressCallback(ctx, rank0)
    trainer, groups = build_trainer(ctx, job, model, tokenizer, data, callback, cuda, rank0)
    enable_on_cpu(trainer)
    adapted = check_adapted(trainer, job.config)
    output, resumed_from, skipped = fit(ctx, job, trainer, rank0)
    check_stopped(job, trainer, callback, groups, rank0)
    trainer.save_model(job.adapter_dir)  # every rank: FSDP gathers the full state dict; rank 0 writes
    if not trainer.is_world_process_zero():
        return None
    metrics = run_metrics(trainer, output, callback, data, groups, cuda)
    run = {"resumed_from": resumed_from, "checkpoints_skipped": skipped, "adapted_modules": adapted}
    run["sharding"] = sharding_record(job.config, job.num_processes, trainer.args)
    return save(ctx, job, trainer, tokenizer, base_path, started, metrics, run)


def resolve_base(ctx: JobContext, base: BaseRef) -> str:
    """The base's folder or hub id; the embedded base is built on first use."""
    if base.kind != "embedded":
        return base.ref
    from learning.models.tinybase import base_dir, ensure_base, read_info

    if read_info(base_dir(ctx.store.home, base.size)) is None:
        ctx.progress(force=True, stage="building base", message=f"building the embedded {base.size} base model")
    # A file lock inside makes concurrent processes build it once.
    return ensure_base(ctx.store, base.size, log=ctx.log).path


def load_tokenizer(base_path: str) -> Any:
    import transformers

    tokenizer = transformers.AutoTokenizer.from_pretrained(base_path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


@dataclass
class TrainData:
    dataset: Any  # a datasets.Dataset in the columns the method's trainer takes
    rows_escaped: int  # rows whose text held one of the base's control tokens
    loss_on: str | None  # what the loss of chat rows covers (learning.data.chat_loss), for sft


def build_dataset(job: TrainJob, tokenizer: Any) -> TrainData:
    """The training rows in the columns TRL's trainers take. Run text stays text: the base's
    control tokens inside it are escaped (learning.data.control_tokens). Chat rows learn the
    assistant's turns only, also under templates without generation markers: tokenized here with
    labels masked by rendered prefixes (learning.data.chat_loss)."""
    from datasets import Dataset

    method = job.config.method
    lines = (Path(job.dataset.path) / "train.jsonl").read_text().splitlines()
    raw = [json.loads(line) for line in lines if line.strip()]
    rows = training_rows(raw, job.dataset.format, "sft" if method == "grpo" else method)
    if method == "grpo":  # the prompts and their tests; the answers are sampled (learning.train.grpo)
        rows = grpo_rows(raw, rows)
    escaped = escape_rows(rows, control_strings(tokenizer), keep=("tests",))
    tokenized, loss_on = assistant_only_rows(tokenizer, escaped) if method == "sft" else (None, None)
    return TrainData(Dataset.from_list(tokenized or escaped), sum(a != b for a, b in zip(rows, escaped)), loss_on)


def load_model(job: TrainJob, base_path: str, cuda: bool) -> Any:
    """The base, 4-/8-bit when asked (QLoRA), float32 on CPU, bfloat16 on a GPU that has it, with the
    fastest attention kernel installed (learning.train.speed); with start_from, the trained adapter
    it continues (e.g. GRPO after SFT) rather than a fresh LoRA."""
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(base_path, **model_kwargs(job.config, cuda))
    if job.start_from is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, job.start_from.path, is_trainable=True)
    return model


def lora_config(cfg: TrainConfig) -> Any:
    from peft import LoraConfig

    return LoraConfig(
        r=cfg.rank,
        lora_alpha=cfg.alpha,  # pyright: ignore[reportArgumentType]  # PEFT declares int; alpha / r is a float anyway
        lora_dropout=cfg.dropout,
        target_modules=cfg.target_modules,
        bias="none",
        task_type="CAUSAL_LM",
    )


def build_trainer(
    ctx: JobContext,
    job: TrainJob,
    model: Any,
    tokenizer: Any,
    data: TrainData,
    callback: ProgressCallback,
    cuda: bool,
    rank0: bool,
) -> tuple[Any, GroupCallback | None]:
    """The method's TRL trainer, which wraps the model with LoRA (unless it continues an adapter);
    GRPO's reward runs each answer's tests in the jail. Returns it and GRPO's group callback."""
    from trl import DPOConfig, DPOTrainer, KTOConfig, KTOTrainer, SFTConfig, SFTTrainer

    cfg = job.config
    common = trainer_args(cfg, _checkpoints(job), cuda, uses_bf16(cuda), needs_checkpointing(model))
    common.update(sharding_args(cfg, model))
    inputs: dict[str, Any] = dict(
        model=model,
        train_dataset=data.dataset,
        processing_class=tokenizer,
        peft_config=None if job.start_from is not None else lora_config(cfg),
        callbacks=[callback],
    )
    if cfg.method == "grpo":
        return grpo_trainer(ctx, job, inputs, common, rank0)
    if cfg.method == "sft":
        markers = has_generation_markers(tokenizer.chat_template)
        args = SFTConfig(
            **common,
            packing=cfg.packing,
            use_liger_kernel=liger_enabled(cfg, cuda),
            assistant_only_loss="messages" in data.dataset.column_names and markers,
        )
        return SFTTrainer(args=args, **inputs), None
    if cfg.method == "dpo":
        return DPOTrainer(args=DPOConfig(**common, beta=cfg.beta), **inputs), None
    return KTOTrainer(args=KTOConfig(**common, beta=cfg.beta), **inputs), None


def check_adapted(trainer: Any, cfg: TrainConfig) -> dict[str, Any]:
    """The modules PEFT adapted, which must be what the plan says (learning.train.targets), or nothing trains."""
    adapted = adapted_modules(trainer.model)
    mismatch = adapted_mismatch(cfg.target_modules, adapted)
    if mismatch:
        raise InvalidInput(mismatch)
    return adapted


def fit(ctx: JobContext, job: TrainJob, trainer: Any, rank0: bool) -> tuple[Any, str | None, list[dict[str, str]]]:
    """Train, from the newest intact checkpoint when resuming (torn ones are skipped and said).
    Returns the trainer's output, the checkpoint resumed from and the ones skipped."""
    ckpt_dir = _checkpoints(job)
    resume_from, skipped = newest_intact(ckpt_dir)  # read-only: every process finds the same one
    if skipped and rank0:
        move_aside(ckpt_dir, skipped)
        ctx.log(f"[learnloop] {skipped_message(skipped, resume_from)}")
        ctx.progress(force=True, checkpoints_skipped=skipped, message=skipped_message(skipped, resume_from))
    if resume_from and rank0:
        ctx.log(f"[learnloop] resuming from {resume_from}")
    return trainer.train(resume_from_checkpoint=resume_from), resume_from, skipped


def check_stopped(
    job: TrainJob, trainer: Any, callback: ProgressCallback, groups: GroupCallback | None, rank0: bool
) -> None:
    """End the job when the run stopped early: on a cancel (rank 0 leaves the step for the job's
    process; the checkpoint is saved), or GRPO without reward variance for no_signal_steps."""
    if callback.cancelled_at is not None:
        if rank0:
            (Path(job.adapter_dir) / CANCELLED_FILE).write_text(json.dumps({"step": callback.cancelled_at}))
        raise JobCancelled(cancel_message(job, callback.cancelled_at))
    if groups is not None and groups.no_signal:
        stats = group_stats(trainer.state.log_history, groups.groups_per_step)
        raise InvalidInput(no_signal_message(job.config.no_signal_steps, stats))


def save(
    ctx: JobContext,
    job: TrainJob,
    trainer: Any,
    tokenizer: Any,
    base_path: str,
    started: float,
    metrics: dict[str, Any],
    run: dict[str, Any],
) -> dict[str, Any]:
    """Save the adapter, the tokenizer and what produced them (metadata.json); the job's result.
    `run`: the checkpoint resumed from, the ones skipped, the modules adapted."""
    out = Path(job.adapter_dir)  # the adapter's weights are saved already (train)
    tokenizer.save_pretrained(str(out))
    curve = [[log["step"], round(log["loss"], 5)] for log in trainer.state.log_history if "loss" in log]
    metadata = {**_metadata(job, base_path, started), **metrics, **run, "loss_curve": curve}
    (out / "metadata.json").write_text(json.dumps(metadata, indent=2))
    ctx.progress(force=True, stage="done", step=trainer.state.global_step, eta_s=0)
    base = metadata["base_model"]
    base_hash = base.get("sha256") or base.get("revision")
    return {"adapter_id": job.adapter_id, "path": str(out), "metrics": metrics, "base_hash": base_hash, **run}


def trainer_args(
    cfg: TrainConfig, ckpt_dir: Path, cuda: bool, bf16: bool, gradient_checkpointing: bool
) -> dict[str, Any]:
    """The trainer arguments the methods share, from the adapter's configuration."""
    return dict(
        output_dir=str(ckpt_dir),
        learning_rate=cfg.learning_rate,
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps or -1,
        per_device_train_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum,
        warmup_steps=cfg.warmup_ratio,
        weight_decay=cfg.weight_decay,
        lr_scheduler_type="linear",
        seed=cfg.seed,
        data_seed=cfg.seed,
        logging_steps=cfg.logging_steps,
        save_strategy="steps",
        save_steps=cfg.save_steps,
        save_total_limit=2,
        report_to=["tensorboard"],
        disable_tqdm=True,
        use_cpu=not cuda,
        bf16=bf16,
        gradient_checkpointing=gradient_checkpointing,
        dataloader_num_workers=0,
        max_length=cfg.max_length,
        include_num_input_tokens_seen="non_padding",
        ddp_find_unused_parameters=False,
    )


def run_metrics(
    trainer: Any, output: Any, callback: ProgressCallback, data: TrainData, groups: GroupCallback | None, cuda: bool
) -> dict[str, Any]:
    metrics: dict[str, Any] = {
        "train_loss": _final_loss(trainer, output),
        "steps": trainer.state.global_step,
        "tokens_seen": int(trainer.state.num_input_tokens_seen or 0),
        "epochs": round(trainer.state.epoch or 0, 3),
        "train_runtime_s": round(output.metrics.get("train_runtime", 0.0), 2),
        "tokens_per_s": callback.tokens_per_s,
        "train_rows": len(data.dataset),
        **_peak_memory(cuda),
        "rows_escaped": data.rows_escaped,
    }
    if data.loss_on:
        metrics["loss_on"] = data.loss_on
    if groups is not None:
        metrics["grpo"] = grpo_metrics(trainer, groups, metrics["train_runtime_s"])
    return metrics


def _checkpoints(job: TrainJob) -> Path:
    return Path(job.adapter_dir) / "checkpoints"


def _peak_memory(cuda: bool) -> dict[str, float]:
    import resource

    import torch

    peak = {"peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
    if cuda:
        peak["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return peak


def _final_loss(trainer, output) -> float | None:
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return round(losses[-1], 5) if losses else (round(output.training_loss, 5) if output.training_loss else None)


def _metadata(job: TrainJob, base_path: str, started: float) -> dict[str, Any]:
    import accelerate
    import datasets
    import peft
    import torch
    import transformers
    import trl

    return {
        "adapter_id": job.adapter_id,
        "role": job.role,
        "method": job.config.method,
        "base_model": {**job.base.stored(), "path": base_path, **base_fingerprint(base_path)},
        "dataset": {"id": job.dataset.id, "content_hash": job.dataset.content_hash, "format": job.dataset.format},
        "hyperparameters": job.config.model_dump(),
        "num_processes": job.num_processes,
        **({"cluster": job.cluster.model_dump()} if job.cluster is not None else {}),
        "versions": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "peft": peft.__version__,
            "trl": trl.__version__,
            "accelerate": accelerate.__version__,
            "datasets": datasets.__version__,
        },
        "started": iso(started),
        "finished": iso(time.time()),
    }


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
