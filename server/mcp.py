"""The MCP server: one tool per library function, registered by the server/mcp_*.py modules.

Start-up imports only the MCP SDK, pydantic and learnloop's light modules: torch and
transformers load inside job processes, never here. Plain `def` tools run in worker
threads, so a slow database read never blocks the event loop.
"""

from __future__ import annotations

import functools
import gc
import inspect
import sys
from collections.abc import Callable
from typing import Any

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import ToolAnnotations

from learning import __version__
from learning.errors import LearnloopError
from learning.jobs.manage import reconcile
from learning.store import Store

INSTRUCTIONS = """learnloop makes your local model better from your own runs.
Log every run with log_run (role, instruction, output, reward in [0, 1]). Curate the best runs
with make_sft, train an adapter with train_adapter (returns a job id; follow it with wait_job),
evaluate it with evaluate_adapter, promote it, and before each task ask select_adapter which
adapter to use; pass its decision_id back in log_run. detect_drift tells when a new adapter
earns less than the one it replaced."""

READ_ONLY = ToolAnnotations(read_only_hint=True, destructive_hint=False, idempotent_hint=True, open_world_hint=False)
APPEND = ToolAnnotations(read_only_hint=False, destructive_hint=False, idempotent_hint=False, open_world_hint=False)


def register_tool(server: MCPServer, fn: Callable, *, annotations: ToolAnnotations, title: str | None = None,
                  name: str | None = None) -> Callable:
    """Register fn as a tool whose domain errors reach the client as ToolError with their message."""
    if inspect.iscoroutinefunction(fn):
        @functools.wraps(fn)
        async def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                return await fn(*args, **kwargs)
            except LearnloopError as exc:
                raise ToolError(str(exc)) from exc
    else:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                return fn(*args, **kwargs)
            except LearnloopError as exc:
                raise ToolError(str(exc)) from exc
    server.tool(name=name, title=title, annotations=annotations, structured_output=True)(wrapper)
    return fn


class LearnloopServer(MCPServer):
    """The SDK's server, except that an unknown argument is an error: the SDK drops it silently,
    and an agent's typo (`rewrd`) should not pass for a call without that argument."""

    async def call_tool(self, name: str, arguments: dict[str, Any], context: Any = None) -> Any:
        tool = self._tool_manager.get_tool(name)
        if tool is not None:
            known = tool.parameters.get("properties", {})
            unknown = sorted(set(arguments) - set(known))
            if unknown:
                raise ToolError(f"Unknown argument{'s' if len(unknown) > 1 else ''} for {name}: "
                                f"{', '.join(map(repr, unknown))}. Valid arguments: {', '.join(known)}.")
        return await super().call_tool(name, arguments, context)


def _declare_no_extra_arguments(server: MCPServer) -> None:
    """Tell clients, in each input schema, that only the listed arguments are accepted."""
    for tool in server._tool_manager.list_tools():
        tool.parameters["additionalProperties"] = False


def build_server(home: str | None = None) -> MCPServer:
    store = Store(home)
    reconcile(store)
    server = LearnloopServer("learnloop", version=__version__, instructions=INSTRUCTIONS, log_level="WARNING")
    from server import (mcp_cycle, mcp_datasets, mcp_jobs, mcp_lifecycle, mcp_routing, mcp_runs, mcp_serving,
                        mcp_train)

    for module in (mcp_runs, mcp_jobs, mcp_datasets, mcp_train, mcp_lifecycle, mcp_routing, mcp_serving, mcp_cycle):
        module.register(server, store)
    _declare_no_extra_arguments(server)
    return server


def serve(home: str | None = None, transport: str = "stdio", host: str = "127.0.0.1", port: int = 8765) -> None:
    server = build_server(home)
    gc.freeze()  # start-up objects live as long as the server: keep them out of every collection
    gc.enable()
    if transport == "stdio":
        server.run("stdio")
    else:
        print(f"learnloop MCP server on http://{host}:{port}/mcp", file=sys.stderr)
        server.run("streamable-http", host=host, port=port, streamable_http_path="/mcp")
