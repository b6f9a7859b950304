"""MCP tools for serving: export_adapter (a job) and deploy_adapter."""

from __future__ import annotations

from typing import Any, Literal

import anyio
from mcp.server.mcpserver import MCPServer
from mcp.types import ToolAnnotations
from pydantic import BaseModel, Field
from typing_extensions import Annotated

from learning.serve import deploy
from learning.serve import export
from learning.jobs import manage as jobs
from learning.store import Store
from server.mcp import register_tool

WRITES_FILES = ToolAnnotations(read_only_hint=False, destructive_hint=False, idempotent_hint=True, open_world_hint=False)
TOUCHES_RUNTIME = ToolAnnotations(read_only_hint=False, destructive_hint=False, idempotent_hint=False, open_world_hint=True)


class ExportJob(BaseModel):
    job_id: str = Field(description="Follow it with wait_job / job_status; its result is the export result.")
    status: str = Field(description="queued, running, succeeded, failed or cancelled.")
    result: dict[str, Any] | None = Field(description="When finished within wait_s: out_dir, files, checks, max_delta_diff / max_logit_diff, seconds.")
    error: str | None


def register(server: MCPServer, store: Store) -> None:
    async def export_adapter(
        adapter_id: Annotated[str, Field(description="The adapter to export (list_adapters shows ids).")],
        format: Annotated[Literal["peft", "merged", "gguf", "ollama"], Field(
            description="peft: clean PEFT folder; merged: full transformers model (base+adapter); gguf: LoRA GGUF for "
                        "llama.cpp; ollama: GGUF + Modelfile.")],
        out: Annotated[str | None, Field(description="Output folder; default <home>/exports/<id>/<format>.")] = None,
        dtype: Annotated[Literal["f32", "f16"], Field(description="Tensor precision of the written files.")] = "f32",
        base: Annotated[str | None, Field(description="Base model folder to check against the one trained on.")] = None,
        from_model: Annotated[str | None, Field(description="ollama: the base as Ollama names it (Modelfile FROM).")] = None,
        wait_s: Annotated[float, Field(ge=0, le=jobs.MAX_WAIT_SECONDS, description="Wait this long for the job (45 max).")] = 30,
    ) -> ExportJob:
        """Export an adapter for a runtime, verified after writing (GGUF delta vs PEFT, merged logits
        vs adapter). Incompatible adapters (DoRA, rank patterns, LoRA on embeddings/lm_head, an
        unsupported architecture, a different base) are refused with every reason. Runs as a job:
        returns its result when done within wait_s, else the job id to follow with wait_job."""
        job_id = await anyio.to_thread.run_sync(
            lambda: export.start_export(store, adapter_id, format, out, dtype, base, from_model))
        status = await anyio.to_thread.run_sync(lambda: jobs.wait_job(store, job_id, timeout=wait_s))
        return ExportJob(job_id=job_id, status=status.status, result=status.result, error=status.error)

    def deploy_adapter(
        adapter_id: Annotated[str, Field(description="The adapter to serve.")],
        target: Annotated[Literal["ollama", "vllm", "llamacpp"], Field(description="The runtime.")],
        url: Annotated[str | None, Field(description="Runtime URL; defaults: ollama :11434, vllm :8000. llamacpp without "
                                                     "a URL only writes the llama-server command line.")] = None,
        from_model: Annotated[str | None, Field(description="ollama: the base as Ollama names it (default: the adapter's base).")] = None,
        base_gguf: Annotated[str | None, Field(description="llamacpp: the base model GGUF for the command line.")] = None,
    ) -> deploy.Deployment:
        """Serve an adapter: Ollama (create model learnloop-<id>), vLLM (load LoRA learnloop-<id>,
        unload the version it replaces) or a llama.cpp server (set its scale). Recorded only after
        the runtime confirmed it; on failure nothing is recorded and the error says why."""
        return deploy.deploy_adapter(store, adapter_id, target, url, base_gguf=base_gguf, from_model=from_model)

    register_tool(server, export_adapter, annotations=WRITES_FILES, title="Export an adapter")
    register_tool(server, deploy_adapter, annotations=TOUCHES_RUNTIME, title="Deploy an adapter")
