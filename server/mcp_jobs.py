"""MCP tools for background jobs: job_status, wait_job, cancel_job, list_jobs."""

from __future__ import annotations

import anyio
from mcp.server.mcpserver import Context, MCPServer
from mcp.types import ToolAnnotations
from pydantic import Field
from typing_extensions import Annotated

from learning.jobs import manage as jobs
from learning.store import Store
from server.mcp import READ_ONLY, register_tool


def register(server: MCPServer, store: Store) -> None:
    def job_status(
        job_id: Annotated[str, Field(description="The job id train_adapter / evaluate_adapter / run_cycle returned.")],
    ) -> jobs.JobStatus:
        """Where a background job stands: status, progress (step, loss, tokens/s, ETA), result or error."""
        return jobs.job_status(store, job_id)

    async def wait_job(
        job_id: Annotated[str, Field(description="The job to wait for.")],
        ctx: Context,
        timeout_s: Annotated[float, Field(ge=0, le=jobs.MAX_WAIT_SECONDS,
                                          description="Longest wait in seconds (at most 45).")] = 30,
    ) -> jobs.JobStatus:
        """Wait for a job to finish, at most timeout_s seconds (45 max, below client time-outs),
        sending progress notifications meanwhile. Returns the status; call again if still running."""
        deadline = anyio.current_time() + timeout_s
        while True:
            status = await anyio.to_thread.run_sync(lambda: jobs.job_status(store, job_id, log_lines=0))
            p = status.progress
            await ctx.report_progress(float(p.get("step", 0)), float(p["total_steps"]) if p.get("total_steps") else None,
                                      p.get("message") or f"{status.kind} {status.status}")
            if status.status in jobs.FINAL or anyio.current_time() >= deadline:
                return await anyio.to_thread.run_sync(lambda: jobs.job_status(store, job_id))
            await anyio.sleep(min(0.5, max(0.0, deadline - anyio.current_time())))

    def cancel_job(
        job_id: Annotated[str, Field(description="The job to stop.")],
    ) -> jobs.JobStatus:
        """Stop a running job gracefully: training saves a checkpoint first, so train_adapter
        with resume=true continues later."""
        return jobs.cancel_job(store, job_id)

    def list_jobs(
        status: Annotated[str | None, Field(description="Only jobs in this state: queued, running, succeeded, failed, cancelled.")] = None,
        limit: Annotated[int, Field(ge=1, le=500)] = 20,
    ) -> list[jobs.JobStatus]:
        """Recent background jobs, newest first."""
        return jobs.list_jobs(store, status, limit)

    register_tool(server, job_status, annotations=READ_ONLY, title="Job status")
    register_tool(server, wait_job, annotations=READ_ONLY, title="Wait for a job")
    register_tool(server, cancel_job, title="Cancel a job", annotations=ToolAnnotations(
        read_only_hint=False, destructive_hint=False, idempotent_hint=True, open_world_hint=False))
    register_tool(server, list_jobs, annotations=READ_ONLY, title="List jobs")
