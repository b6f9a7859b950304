"""MCP tool train_adapter: checks the request, starts a training job, returns its id at once."""

from __future__ import annotations

from typing import Any, Literal

from mcp.server.mcpserver import MCPServer
from mcp.types import ToolAnnotations
from pydantic import Field
from typing_extensions import Annotated

from learning.train import launch as training
from learning.store import Store
from server.mcp import register_tool


def register(server: MCPServer, store: Store) -> None:
    def train_adapter(
        role: Annotated[str, Field(description="The role the adapter serves (coder, fixer, judge, ...); the dataset must be of this role.")],
        dataset_id: Annotated[str, Field(description="A dataset id from make_sft (sft) or make_preferences (dpo/kto).")],
        base: Annotated[str | None, Field(description="Base model: a local folder, a hub id, or embedded:tiny / embedded:small. "
                                                      "Default: the embedded small base, built on first use.")] = None,
        method: Annotated[Literal["sft", "dpo", "kto"], Field(description="sft on prompt/completion or chat data; dpo or kto on preference data.")] = "sft",
        preset: Annotated[Literal["light", "default", "heavy"], Field(description="light r=8 (attention only), default r=16, heavy r=64 (all projections).")] = "default",
        overrides: Annotated[dict[str, Any] | None, Field(description="Any hyper-parameter by name: rank, alpha, dropout, target_modules, learning_rate, "
                                                                     "epochs, batch_size, grad_accum, max_length, warmup_ratio, weight_decay, beta, seed, save_steps, packing.")] = None,
        max_steps: Annotated[int | None, Field(ge=1, description="Stop after this many optimizer steps.")] = None,
        quantize: Annotated[Literal["none", "4bit", "8bit", "auto"] | None, Field(description="4bit = QLoRA; auto picks 4bit when the model would not fit in memory.")] = None,
        resume: Annotated[bool, Field(description="Continue a cancelled or failed adapter from its latest checkpoint (the role's latest, or adapter_id).")] = False,
        adapter_id: Annotated[str | None, Field(description="The adapter to resume, or an id for a new one (default role-YYYYMMDD-HHMMSS).")] = None,
        dry_run: Annotated[bool, Field(description="Check everything and return the plan (rows, steps, tokens, time, memory) without training.")] = False,
        num_processes: Annotated[int, Field(ge=1, le=64, description="Training processes (accelerate DDP): one per GPU, or CPU processes.")] = 1,
    ) -> training.TrainStarted:
        """Train a LoRA adapter for a role on a curated dataset, in a background job. Returns
        job_id and adapter_id at once: follow the job with wait_job / job_status, stop it with
        cancel_job (it checkpoints; resume=true continues). Every input is checked first and all
        problems are reported together. Use dry_run to see the plan without training."""
        return training.train_adapter(store, role, dataset_id, base=base, method=method, preset=preset, overrides=overrides,
                                      quantize=quantize, resume=resume, adapter_id=adapter_id, dry_run=dry_run,
                                      max_steps=max_steps, num_processes=num_processes)

    register_tool(server, train_adapter, title="Train an adapter", annotations=ToolAnnotations(
        read_only_hint=False, destructive_hint=False, idempotent_hint=False, open_world_hint=False))
