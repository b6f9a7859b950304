"""MCP tool run_cycle: curate, train, evaluate, promote and check drift in one background job."""

from __future__ import annotations

from mcp.server.mcpserver import MCPServer
from mcp.types import ToolAnnotations
from pydantic import Field
from typing_extensions import Annotated

from learning.loop import cycle
from learning.errors import InvalidInput
from learning.store import Store
from server.mcp import register_tool

# Starts a job that may promote to production (only with to_production and confirm).
CYCLE = ToolAnnotations(read_only_hint=False, destructive_hint=True, idempotent_hint=False, open_world_hint=False)


def register(server: MCPServer, store: Store) -> None:
    def run_cycle(
        role: Annotated[str, Field(description="The role to improve, e.g. coder, fixer, judge.")],
        to_production: Annotated[bool, Field(description="Promote to production when the gate passes (else candidate only). Needs confirm=true.")] = False,
        min_reward: Annotated[float, Field(ge=0, le=1, description="Curate runs with at least this reward.")] = 0.7,
        days: Annotated[float | None, Field(gt=0, description="Only runs of the last N days.")] = None,
        base: Annotated[str | None, Field(description="Base model folder or hub id (default: the embedded base).")] = None,
        preset: Annotated[str, Field(description="Training preset: light, default or heavy.")] = "default",
        max_steps: Annotated[int | None, Field(ge=1, description="Training steps (default: the preset's epochs).")] = None,
        auto_rollback: Annotated[bool, Field(description="Roll back the previous production adapter if drift shows a regression. Needs confirm=true.")] = False,
        confirm: Annotated[bool, Field(description="Set true to allow to_production / auto_rollback to change production.")] = False,
    ) -> cycle.CycleStarted:
        """One background job: make_sft -> train_adapter -> evaluate_adapter (the gate moves a
        better adapter to candidate) -> promote to production when asked -> detect_drift for the
        adapter that was in production before. Returns the job id at once; follow it with wait_job.
        The job's result lists each stage with its status, seconds and figures."""
        if (to_production or auto_rollback) and not confirm:
            raise InvalidInput("to_production and auto_rollback change which adapter serves production: "
                               "call again with confirm=true once the person agrees.")
        return cycle.run_cycle(store, role, to_production=to_production, min_reward=min_reward, days=days,
                               base=base, preset=preset, max_steps=max_steps, auto_rollback=auto_rollback)

    register_tool(server, run_cycle, annotations=CYCLE, title="Run a training cycle")
