"""Train one LoRA/QLoRA adapter: the recipe that runs inside a job's process.

Reads top to bottom: load the dataset rows, the tokenizer and the base model, build the
LoRA and trainer configs, run TRL's trainer (SFT, DPO or KTO) as it is, save the adapter
and its metadata. learning.train.launch.train_adapter validated everything before this runs.

With num_processes > 1 the job process runs `accelerate launch` of this module's main(),
one process per device (gloo on CPU); rank 0 reports progress and writes the artifacts.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from learning.clock import iso
from learning.data.chat_loss import assistant_only_rows, has_generation_markers
from learning.data.control_tokens import control_strings, escape_rows
from learning.data.formats import training_rows
from learning.errors import InvalidInput, LearnloopError
from learning.jobs.manage import JobCancelled, JobContext, die_with_parent
from learning.jobs.queries import job_row
from learning.models.fingerprint import base_fingerprint
from learning.store import Store, dumps, loads
from learning.train.checkpoints import move_aside, newest_intact, skipped_message
from learning.train.grpo import group_stats, grpo_metrics, grpo_rows, grpo_trainer, no_signal_message
from learning.train.progress import ProgressCallback
from learning.train.speed import liger_enabled, model_kwargs, needs_checkpointing
from learning.train.targets import adapted_mismatch, adapted_modules


def run_job(ctx: JobContext) -> dict[str, Any]:
    """Job entry point (learning.jobs.manage target 'learning.train.recipe:run_job')."""
    from learning.registry import adapters as registry
    from learning.registry.queries import set_adapter_status, update_adapter_fields

    p = ctx.params
    try:
        if p.get("num_processes", 1) > 1:
            result = _launch_distributed(ctx)
        else:
            result = train(ctx)
            assert result is not None  # a single process is rank 0, which returns the result
    except JobCancelled as exc:
        with ctx.store.write() as conn:
            set_adapter_status(conn, p["adapter_id"], "training", "failed", "learnloop", str(exc))
        raise
    except Exception as exc:
        # Failed before its first step (loading the base, wrapping it with LoRA): nothing to resume,
        # so nothing stays in the registry. After that it stays failed, for resume.
        if ctx._progress.get("stage") not in ("train", "done") and registry.forget_unstarted(
            ctx.store, p["adapter_id"]
        ):
            traceback.print_exc()
            cause = str(exc) if isinstance(exc, LearnloopError) else f"{type(exc).__name__}: {exc}"
            raise LearnloopError(
                f"{cause.rstrip('.')}. Nothing was trained: adapter {p['adapter_id']} was removed from the "
                "registry. Fix the cause and call train_adapter again (the job's log has the traceback)."
            ) from exc
        raise
    registry.move(ctx.store, p["adapter_id"], "trained", "learnloop", f"trained by job {ctx.job_id}")
    registry.set_metrics(ctx.store, p["adapter_id"], result["metrics"])
    params = {**registry.get_adapter(ctx.store, p["adapter_id"]).params, "adapted_modules": result["adapted_modules"]}
    with ctx.store.write() as conn:
        update_adapter_fields(conn, p["adapter_id"], params=dumps(params))
        if result.get("base_hash"):
            update_adapter_fields(conn, p["adapter_id"], base_hash=result["base_hash"])
    return result


def _launch_distributed(ctx: JobContext) -> dict[str, Any]:
    """Run the recipe in N processes with accelerate (DDP; gloo on CPU) and wait for them."""
    p = ctx.params
    # --multi_gpu selects torch.distributed's launcher; without CUDA the trainer's use_cpu makes
    # it DDP over gloo (accelerate's --cpu flag would start a single process).
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        str(p["num_processes"]),
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "-m",
        "learning.train.recipe",
        str(ctx.store.home),
        ctx.job_id,
    ]
    out = Path(p["adapter_dir"])
    for stale in ("cancelled.json", "result.json"):
        (out / stale).unlink(missing_ok=True)
    ctx.progress(force=True, stage="launching", message=f"accelerate launch with {p['num_processes']} processes")
    # The launcher dies with this process (SIGKILL included), and its workers with it (main()).
    code = subprocess.call(cmd, stdin=subprocess.DEVNULL, preexec_fn=die_with_parent)
    row = job_row(ctx.store, ctx.job_id)
    assert row is not None  # this job's own row
    ctx._progress = loads(row["progress"]) or {}  # what rank 0 reported
    if (out / "cancelled.json").exists():
        raise JobCancelled(_cancel_message(p, _read_json(out / "cancelled.json").get("step")))
    if code != 0 or not (out / "result.json").exists():
        raise RuntimeError(f"accelerate launch exited with status {code}; see the job's log")
    return _read_json(out / "result.json")


def main(argv: list[str]) -> int:
    """One process of a distributed run: `python -m learning.train.recipe HOME JOB_ID`."""
    if "LOCAL_RANK" in os.environ and not _bound_to_launcher(argv[1]):
        return 1  # the launcher is gone already: nobody would wait for this process
    ctx = JobContext(Store(argv[0]), argv[1])
    try:
        result = train(ctx)
    except JobCancelled:
        return 0  # rank 0 wrote cancelled.json; the job process reports the cancel
    finally:
        _leave_process_group()
    if result is not None:
        (Path(ctx.params["adapter_dir"]) / "result.json").write_text(json.dumps(result))
    return 0


def _leave_process_group() -> None:
    """Tear down torch.distributed before exit: left to the interpreter's shutdown, gloo's
    threads can abort the process ("terminate called without an active exception")."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _bound_to_launcher(job_id: str) -> bool:
    """Make this worker die with the launcher that started it (whose command line names the
    job); False when that launcher is gone already (this process was re-parented)."""
    die_with_parent()
    if not sys.platform.startswith("linux"):
        return True
    try:
        parent = Path(f"/proc/{os.getppid()}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return job_id.encode() in parent


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _cancel_message(p: dict, step: int | None) -> str:
    return (
        f"cancelled at step {step}; checkpoint saved. Continue with train_adapter resume=true "
        f"adapter_id={p['adapter_id']} (CLI: learnloop train --role {p['role']} --dataset {p['dataset_id']} "
        f"--resume --adapter-id {p['adapter_id']})"
    )


# ---- the recipe ------------------------------------------------------------------------


# The steps share the model, the tokenizer and the trainer; split up, the recipe would no longer read as one.
# Long: the recipe reads top to bottom like TRL's sft.py (base, data, model, LoRA, trainer, train, save).
def train(ctx: JobContext) -> dict[str, Any] | None:
    """Train the adapter described by ctx.params; returns the result on rank 0, None elsewhere."""
    import torch
    import transformers
    from peft import LoraConfig
    from trl import DPOConfig, DPOTrainer, KTOConfig, KTOTrainer, SFTConfig, SFTTrainer

    p, cfg = ctx.params, ctx.params["config"]
    started = time.time()
    out = Path(p["adapter_dir"])
    ckpt_dir = out / "checkpoints"
    os.environ.setdefault("TENSORBOARD_LOGGING_DIR", str(out / "tensorboard"))
    rank0 = int(os.environ.get("RANK", "0")) == 0

    # 1. The base model: the embedded one is built on first use.
    base_path = _resolve_base(ctx)
    tokenizer = transformers.AutoTokenizer.from_pretrained(base_path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token

    # 2. The dataset, converted to the columns TRL's trainers take; run text stays text (the
    #    base's control tokens inside it are escaped, learning.data.control_tokens).
    from datasets import Dataset

    lines = (Path(p["dataset_path"]) / "train.jsonl").read_text().splitlines()
    raw = [json.loads(line) for line in lines if line.strip()]
    grpo = cfg["method"] == "grpo"
    rows = training_rows(raw, p["dataset_format"], "sft" if grpo else cfg["method"])
    if grpo:  # the prompts and their tests; the answers are sampled (learning.train.grpo)
        rows = grpo_rows(raw, rows)
    escaped = escape_rows(rows, control_strings(tokenizer), keep=("tests",))
    rows_escaped = sum(a != b for a, b in zip(rows, escaped))
    # Chat rows learn the assistant's turns only, also under templates without generation
    # markers: tokenized here with labels masked by rendered prefixes (learning.data.chat_loss).
    tokenized, loss_on = assistant_only_rows(tokenizer, escaped) if cfg["method"] == "sft" else (None, None)
    dataset = Dataset.from_list(tokenized or escaped)
    if loss_on and rank0:
        ctx.log(f"[learnloop] loss on {loss_on}")

    # 3. The model, 4-/8-bit when asked (QLoRA), float32 on CPU, bfloat16 on a GPU that has it,
    #    with the fastest attention kernel installed (learning.train.speed).
    cuda = torch.cuda.is_available()
    load = model_kwargs(cfg, cuda)
    dtype = load["dtype"]
    model = transformers.AutoModelForCausalLM.from_pretrained(base_path, **load)
    if p.get("start_from"):  # continue a trained adapter (e.g. GRPO after SFT) rather than a fresh LoRA
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, p["start_from"]["path"], is_trainable=True)

    # 4. LoRA on the chosen projections; TRL wraps the model with it.
    lora = LoraConfig(
        r=cfg["rank"],
        lora_alpha=cfg["alpha"],
        lora_dropout=cfg["dropout"],
        target_modules=cfg["target_modules"],
        bias="none",
        task_type="CAUSAL_LM",
    )

    # 5. Trainer arguments shared by the methods; GRPO's reward runs each answer's tests in the jail.
    common = trainer_args(cfg, ckpt_dir, cuda, dtype == torch.bfloat16, needs_checkpointing(model))
    callback = ProgressCallback(ctx, rank0)
    inputs: dict[str, Any] = dict(
        model=model,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=None if p.get("start_from") else lora,
        callbacks=[callback],
    )
    group_callback = None
    if cfg["method"] == "sft":
        args = SFTConfig(
            **common,
            packing=cfg["packing"],
            use_liger_kernel=liger_enabled(cfg, cuda),
            assistant_only_loss="messages" in dataset.column_names and has_generation_markers(tokenizer.chat_template),
        )
        trainer = SFTTrainer(args=args, **inputs)
    elif grpo:
        trainer, group_callback = grpo_trainer(ctx, inputs, common, rank0)
    elif cfg["method"] == "dpo":
        trainer = DPOTrainer(args=DPOConfig(**common, beta=cfg["beta"]), **inputs)
    else:
        trainer = KTOTrainer(args=KTOConfig(**common, beta=cfg["beta"]), **inputs)

    # 6. PEFT adapted what the plan says (learning.train.targets), or nothing trains.
    adapted = adapted_modules(trainer.model)
    mismatch = adapted_mismatch(cfg["target_modules"], adapted)
    if mismatch:
        raise InvalidInput(mismatch)

    # 7. Train, from the newest intact checkpoint when resuming (torn ones are skipped and said).
    resume_from, skipped = newest_intact(ckpt_dir)  # read-only: every process finds the same one
    if skipped and rank0:
        move_aside(ckpt_dir, skipped)
        ctx.log(f"[learnloop] {skipped_message(skipped, resume_from)}")
        ctx.progress(force=True, checkpoints_skipped=skipped, message=skipped_message(skipped, resume_from))
    if resume_from and rank0:
        ctx.log(f"[learnloop] resuming from {resume_from}")
    output = trainer.train(resume_from_checkpoint=resume_from)
    if callback.cancelled_at is not None:
        if rank0:
            (out / "cancelled.json").write_text(json.dumps({"step": callback.cancelled_at}))
        raise JobCancelled(_cancel_message(p, callback.cancelled_at))
    if group_callback is not None and group_callback.no_signal:
        stats = group_stats(trainer.state.log_history, group_callback.groups_per_step)
        raise InvalidInput(no_signal_message(cfg["no_signal_steps"], stats))

    # 8. Save the adapter, the tokenizer and what produced them.
    if not trainer.is_world_process_zero():
        return None
    trainer.save_model(str(out))
    tokenizer.save_pretrained(str(out))
    metrics = {**_run_metrics(trainer, output, callback, len(dataset), cuda), "rows_escaped": rows_escaped}
    if loss_on:
        metrics["loss_on"] = loss_on
    if group_callback is not None:
        metrics["grpo"] = grpo_metrics(trainer, group_callback, metrics["train_runtime_s"])
    metadata = {
        **_metadata(p, base_path, metrics, started, resumed_from=resume_from),
        "checkpoints_skipped": skipped,
        "adapted_modules": adapted,
    }
    (out / "metadata.json").write_text(json.dumps(metadata, indent=2))
    ctx.progress(force=True, stage="done", step=trainer.state.global_step, eta_s=0)
    base_id = metadata["base_model"].get("sha256") or metadata["base_model"].get("revision")
    return {
        "adapter_id": p["adapter_id"],
        "path": str(out),
        "metrics": metrics,
        "base_hash": base_id,
        "resumed_from": resume_from,
        "checkpoints_skipped": skipped,
        "adapted_modules": adapted,
    }


def trainer_args(cfg: dict, ckpt_dir: Path, cuda: bool, bf16: bool, gradient_checkpointing: bool) -> dict[str, Any]:
    """The trainer arguments SFT, DPO and KTO share, from the adapter's configuration."""
    return dict(
        output_dir=str(ckpt_dir),
        learning_rate=cfg["learning_rate"],
        num_train_epochs=cfg["epochs"],
        max_steps=cfg["max_steps"] or -1,
        per_device_train_batch_size=cfg["batch_size"],
        gradient_accumulation_steps=cfg["grad_accum"],
        warmup_steps=cfg["warmup_ratio"],
        weight_decay=cfg["weight_decay"],
        lr_scheduler_type="linear",
        seed=cfg["seed"],
        data_seed=cfg["seed"],
        logging_steps=cfg["logging_steps"],
        save_strategy="steps",
        save_steps=cfg["save_steps"],
        save_total_limit=2,
        report_to=["tensorboard"],
        disable_tqdm=True,
        use_cpu=not cuda,
        bf16=bf16,
        gradient_checkpointing=gradient_checkpointing,
        dataloader_num_workers=0,
        max_length=cfg["max_length"],
        include_num_input_tokens_seen="non_padding",
        ddp_find_unused_parameters=False,
    )


def _run_metrics(trainer, output, callback: ProgressCallback, train_rows: int, cuda: bool) -> dict[str, Any]:
    return {
        "train_loss": _final_loss(trainer, output),
        "steps": trainer.state.global_step,
        "tokens_seen": int(trainer.state.num_input_tokens_seen or 0),
        "epochs": round(trainer.state.epoch or 0, 3),
        "train_runtime_s": round(output.metrics.get("train_runtime", 0.0), 2),
        "tokens_per_s": callback.tokens_per_s,
        "train_rows": train_rows,
        **_peak_memory(cuda),
    }


def _peak_memory(cuda: bool) -> dict[str, float]:
    import resource

    import torch

    peak = {"peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
    if cuda:
        peak["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return peak


def _resolve_base(ctx: JobContext) -> str:
    base = ctx.params["base"]
    if base["kind"] != "embedded":
        return base["ref"]
    from learning.models.tinybase import base_dir, ensure_base, read_info

    if read_info(base_dir(ctx.store.home, base["size"])) is None:
        ctx.progress(force=True, stage="building base", message=f"building the embedded {base['size']} base model")
    # A file lock inside makes concurrent processes build it once.
    return ensure_base(ctx.store, base["size"], log=ctx.log).path


def _final_loss(trainer, output) -> float | None:
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return round(losses[-1], 5) if losses else (round(output.training_loss, 5) if output.training_loss else None)


def _metadata(p: dict, base_path: str, metrics: dict, started: float, resumed_from: str | None) -> dict:
    import accelerate
    import datasets
    import peft
    import torch
    import transformers
    import trl

    return {
        "adapter_id": p["adapter_id"],
        "role": p["role"],
        "method": p["config"]["method"],
        "base_model": {**p["base"], "path": base_path, **base_fingerprint(base_path)},
        "dataset": {"id": p["dataset_id"], "content_hash": p["dataset_hash"], "format": p["dataset_format"]},
        "hyperparameters": p["config"],
        "num_processes": p.get("num_processes", 1),
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
        "resumed_from": resumed_from,
        **metrics,
    }


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
