"""CLI commands for the embedded base model and training: learnloop init-base, learnloop train."""

from __future__ import annotations

from typing import Optional

import typer
from typing_extensions import Annotated

from learning.store import Store
from server.cli import HomeOpt, JsonOpt, console, emit, fmt


def register(app: typer.Typer) -> None:
    @app.command("init-base")
    def init_base(
        size: Annotated[str, typer.Option("--size", help="tiny (seconds, for tests) or small (about a minute, for the demo).")] = "small",
        seed: Annotated[int, typer.Option("--seed", help="Seed of the corpus, tokenizer and weights.")] = 0,
        force: Annotated[bool, typer.Option("--force", help="Rebuild even if it exists.")] = False,
        home: HomeOpt = None,
        as_json: JsonOpt = False,
    ) -> None:
        """Build the embedded base model under <home>/base/<size>/ (reused if it exists)."""
        from learning.models.tinybase import ensure_base

        store = Store(home)
        info = ensure_base(store, size, seed=seed, force=force,
                           log=None if as_json else (lambda m: console.print(m, highlight=False)))

        def render(i) -> None:
            verb = "built" if i.built else "already there"
            console.print(f"base [bold]{i.size}[/] {verb}: {i.path} ({i.parameters:,} parameters, "
                          f"pretraining loss {fmt(i.final_loss)}, build {fmt(i.build_s, 1)} s)", highlight=False)

        emit(info, as_json, render)

    @app.command("train")
    def train_cmd(
        role: Annotated[str, typer.Option("--role", help="The role the adapter serves; the dataset must be of this role.")],
        dataset: Annotated[str, typer.Option("--dataset", help="Dataset id (make-sft / make-preferences).")],
        base: Annotated[Optional[str], typer.Option("--base", help="Folder, hub id, or embedded:tiny|small (default: embedded:small, built on first use).")] = None,
        preset: Annotated[str, typer.Option("--preset", help="light (r=8), default (r=16) or heavy (r=64).")] = "default",
        method: Annotated[str, typer.Option("--method", help="sft, dpo or kto.")] = "sft",
        max_steps: Annotated[Optional[int], typer.Option("--max-steps", help="Stop after N optimizer steps.")] = None,
        epochs: Annotated[Optional[float], typer.Option("--epochs", help="Passes over the data.")] = None,
        lr: Annotated[Optional[float], typer.Option("--lr", help="Peak learning rate.")] = None,
        rank: Annotated[Optional[int], typer.Option("--rank", help="LoRA rank r.")] = None,
        quantize: Annotated[Optional[str], typer.Option("--quantize", help="4bit (QLoRA), 8bit, none or auto.")] = None,
        config: Annotated[Optional[str], typer.Option("--config", help="A YAML file: preset and any hyper-parameter.")] = None,
        adapter_id: Annotated[Optional[str], typer.Option("--adapter-id", help="The adapter to resume, or an id for a new one.")] = None,
        num_processes: Annotated[int, typer.Option("--num-processes", help="Training processes (accelerate DDP).")] = 1,
        resume: Annotated[bool, typer.Option("--resume", help="Continue a cancelled or failed adapter from its latest checkpoint.")] = False,
        dry_run: Annotated[bool, typer.Option("--dry-run", help="Check and print the plan without training.")] = False,
        wait: Annotated[bool, typer.Option("--wait", help="Follow the job until it ends.")] = False,
        home: HomeOpt = None,
        as_json: JsonOpt = False,
    ) -> None:
        """Train a LoRA adapter for a role on a dataset, as a background job."""
        from learning.jobs import manage as jobs
        from learning.train import launch as training
        from learning.train.config import load_yaml
        from server.cli_jobs import follow, render_status

        overrides: dict = {}
        if config:
            file_preset, overrides = load_yaml(config)
            preset = file_preset if preset == "default" else preset
        overrides.update({k: v for k, v in dict(epochs=epochs, learning_rate=lr, rank=rank).items() if v is not None})
        store = Store(home)
        started = training.train_adapter(store, role, dataset, base=base, method=method, preset=preset,
                                         overrides=overrides, quantize=quantize, resume=resume, adapter_id=adapter_id,
                                         dry_run=dry_run, max_steps=max_steps, num_processes=num_processes)
        if not wait or started.job_id is None:
            emit(started, as_json, render_started)
            return
        if not as_json:
            render_started(started)
        status = follow(store, started.job_id, as_json)
        emit({"job_id": started.job_id, "adapter_id": started.adapter_id, "status": status.status, "job": status},
             as_json, lambda r: render_status(r["job"]))
        if status.status != "succeeded":
            raise typer.Exit(1)


def render_started(s) -> None:
    p = s.plan
    head = "plan (dry run)" if s.dry_run else f"job [bold]{s.job_id}[/] started"
    console.print(f"{head}: adapter [bold]{s.adapter_id}[/], {p.method} on {p.dataset_id} ({p.train_rows} rows), "
                  f"base {p.base_model}", highlight=False)
    c = p.config
    console.print(f"  r={c['rank']} alpha={c['alpha']} lr={c['learning_rate']} batch={c['batch_size']}x{c['grad_accum']} "
                  f"steps={p.steps} tokens~{p.tokens_estimate:,} time~{fmt(p.est_time_s, 0)}s "
                  f"memory~{fmt(p.est_memory_mb, 0)}MiB processes={p.num_processes} quantize={c['quantize']}",
                  highlight=False)
    for note in p.notes:
        console.print(f"  note: {note}", highlight=False)
    if not s.dry_run:
        console.print(f"  follow it: learnloop jobs {s.job_id} --wait", highlight=False)
