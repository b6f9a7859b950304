"""The MCP server: one tool per verb of server/catalog.py, built from the verb's declaration.

Start-up imports only the MCP SDK, pydantic and learnloop's light modules: torch and
transformers load inside job processes, never here. Plain `def` tools run in worker
threads, so a slow database read never blocks the event loop.
"""

# No `from __future__ import annotations` here: the SDK reads the Resolve(...) markers of the
# tools' parameters with typing.get_type_hints, which cannot see the closures they name.
import functools
import gc
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal

import anyio
from mcp.server.elicitation import ElicitationResult
from mcp.server.mcpserver import Context, Elicit, MCPServer, Resolve
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.mcpserver.tools import Tool
from mcp.server.stdio import stdio_server
from mcp.types import ToolAnnotations
from pydantic import BaseModel, Field

from learning import __version__
from learning.errors import LearnloopError
from learning.home import regular_file, resolve_home
from learning.jobs import manage as jobs
from learning.registry import adapters as registry
from learning.store import Store
from server.catalog import VERBS
from server.transport import Answering, exposure_warning, require_token, security_settings, token_for
from server.verbs import REQUIRED, Verb, call, consent_summary, signed, tool_arguments

INSTRUCTIONS = """learnloop makes your local model better from your own runs.
Log every run with log_run (role, instruction, output, reward in [0, 1]; a run whose reward is
not known yet is pending until log_reward scores it, once, with the run_id and reward_token that
log_run returned; a reward is never replaced). Curate the best runs
with make_sft, train an adapter with train_adapter (returns a job id; follow it with wait_job),
evaluate it with evaluate_adapter, promote it, and before each task ask select_adapter which
adapter to use; pass its decision_id back in log_run. detect_drift tells when a new adapter
earns less than the one it replaced."""

EFFECTS = {  # what each kind of verb may do, as MCP tool annotations
    "read": ToolAnnotations(read_only_hint=True, destructive_hint=False, idempotent_hint=True, open_world_hint=False),
    "append": ToolAnnotations(
        read_only_hint=False, destructive_hint=False, idempotent_hint=False, open_world_hint=False
    ),
    "job": ToolAnnotations(read_only_hint=False, destructive_hint=False, idempotent_hint=False, open_world_hint=False),
    "destructive": ToolAnnotations(
        read_only_hint=False, destructive_hint=True, idempotent_hint=False, open_world_hint=False
    ),
    "runtime": ToolAnnotations(
        read_only_hint=False, destructive_hint=False, idempotent_hint=False, open_world_hint=True
    ),
}
REFUSED = (
    "\n\nThis changes which adapter agents get. Show this summary to the person and, once they agree, "
    "call again with confirm=true."
)


class Confirmation(BaseModel):
    confirm: bool = Field(True, description="Go ahead with the change.")


def _tool_errors(fn: Callable) -> Callable:
    """Domain errors reach the client as ToolError with their message."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except LearnloopError as exc:
            raise ToolError(str(exc)) from exc

    return wrapper


def _outcome(answer: Any) -> Literal["done", "declined", "cancelled"]:
    if answer.action == "accept":
        return "done" if answer.data.confirm else "declined"
    return "declined" if answer.action == "decline" else "cancelled"


def _consent_resolver(verb: Verb, store: Store, names: list[str]) -> Callable:
    """Runs before the tool body: ask the person through elicitation when the client can (the
    SDK asks in whichever way the negotiated protocol uses), else accept only confirm=true;
    refuse with the summary otherwise. Bad input fails here, before anyone is asked."""

    def resolve(ctx: Context, **values: Any) -> Any:
        try:
            summary = consent_summary(verb, store, values)
        except LearnloopError as exc:
            raise ToolError(str(exc)) from exc
        if summary is None:
            return Confirmation(confirm=True)
        caps = ctx.client_capabilities
        if caps is not None and caps.elicitation is not None:
            return Elicit(summary + "\n\nGo ahead?", Confirmation)
        if not values.get("confirm"):
            raise ToolError(summary + REFUSED)
        return Confirmation(confirm=True)

    resolve.__name__ = resolve.__qualname__ = f"ask_{verb.tool}"  # its key in input_required requests
    # The SDK passes a resolver the tool's arguments it names, so it names them all.
    return signed(resolve, [("ctx", Context, REQUIRED)] + [(n, Any, REQUIRED) for n in names], Any)


def tool_function(verb: Verb, store: Store) -> Callable:
    """The tool for one verb: its arguments (but the CLI-only ones) as parameters, the library
    call as its body."""
    args = tool_arguments(verb)
    params = [(a.name, a.annotation, a.default) for a in args]

    if verb.consent is None:

        def direct_body(**values: Any) -> Any:
            return call(verb, store, values, actor="mcp")

        body = direct_body
    else:
        ask = _consent_resolver(verb, store, [a.name for a in args])
        params.append(("answer", Annotated[ElicitationResult[Confirmation], Resolve(ask)], REQUIRED))

        def consent_body(answer: Any, **values: Any) -> Any:
            outcome = _outcome(answer)
            if outcome != "done":
                summary = consent_summary(verb, store, values) or ""
                if verb.refused is None:
                    raise ToolError(f"{outcome}: nothing changed.\n{summary}")
                return verb.refused(outcome, summary)
            return call(verb, store, {**values, "confirm": True}, actor="mcp")

        body = consent_body

    tool = signed(_tool_errors(body), params, verb.returns)
    tool.__name__ = tool.__qualname__ = verb.tool  # the SDK names the argument schema after it
    return tool


class LearnloopServer(MCPServer):
    """The SDK's server, except that an unknown argument is an error: the SDK drops it silently,
    and an agent's typo (`rewrd`) should not pass for a call without that argument."""

    def __init__(self, tools: list[Tool], **settings: Any):
        super().__init__(tools=tools, **settings)
        self.accepted = {t.name: list(t.parameters.get("properties", {})) for t in tools}

    async def call_tool(self, name: str, arguments: dict[str, Any], context: Any = None) -> Any:
        known = self.accepted.get(name)
        unknown = sorted(set(arguments) - set(known)) if known is not None else []
        if unknown:
            raise ToolError(
                f"Unknown argument{'s' if len(unknown) > 1 else ''} for {name}: "
                f"{', '.join(map(repr, unknown))}. Valid arguments: {', '.join(known or ())}."
            )
        return await super().call_tool(name, arguments, context)

    async def run_stdio_async(self) -> None:
        """The SDK's stdio loop, except that a line it cannot parse gets an error reply (server/transport.py)."""
        # The SDK has no public way to serve stdio through a wrapped read stream: its low-level server.
        lowlevel = self._lowlevel_server
        async with stdio_server() as (read_stream, write_stream):
            await lowlevel.run(
                Answering(read_stream, write_stream), write_stream, lowlevel.create_initialization_options()
            )


def _wait_job_tool(store: Store) -> Tool:
    """wait_job is the one tool written by hand: it reports progress to the client while it waits."""

    async def wait_job(
        job_id: Annotated[str, Field(description="The job to wait for.")],
        ctx: Context,
        timeout_s: Annotated[
            float, Field(ge=0, le=jobs.MAX_WAIT_SECONDS, description="Longest wait in seconds (at most 45).")
        ] = 30,
    ) -> jobs.JobStatus:
        """Wait for a job to finish, at most timeout_s seconds (45 max, below client time-outs),
        sending progress notifications meanwhile. Returns the status; call again if still running."""

        async def report(status: jobs.JobStatus) -> None:
            p = status.progress
            total = float(p["total_steps"]) if p.get("total_steps") else None
            await ctx.report_progress(
                float(p.get("step", 0)), total, p.get("message") or f"{status.kind} {status.status}"
            )

        def wait() -> jobs.JobStatus:  # in a worker thread; progress goes back through the event loop
            return jobs.wait_job(
                store,
                job_id,
                timeout=timeout_s,
                poll=0.5,
                on_progress=lambda status: anyio.from_thread.run(report, status),
            )

        try:
            return await anyio.to_thread.run_sync(wait)
        except LearnloopError as exc:
            raise ToolError(str(exc)) from exc

    return Tool.from_function(wait_job, title="Wait for a job", annotations=EFFECTS["read"], structured_output=True)


def _add_resources(server: MCPServer, store: Store) -> None:
    @server.resource(
        "learnloop://adapters",
        name="adapters",
        mime_type="application/json",
        description="The adapter registry: every adapter with its status and metrics.",
    )
    def adapters_resource() -> str:
        return json.dumps([a.model_dump(mode="json") for a in registry.list_adapters(store)], indent=1)

    @server.resource(
        "learnloop://adapters/{adapter_id}",
        name="adapter",
        mime_type="application/json",
        description="One adapter: record, history and its last evaluation (metrics.json).",
    )
    def adapter_resource(adapter_id: str) -> str:
        adapter = registry.get_adapter(store, adapter_id)
        # Only a regular file under the home, reached through no link, is read.
        metrics_file = regular_file(store.home, Path(adapter.path) / "eval" / "metrics.json")
        evaluation: Any = json.loads(metrics_file.read_text()) if metrics_file is not None else None
        return json.dumps(
            {
                "adapter": adapter.model_dump(mode="json"),
                "history": [e.model_dump(mode="json") for e in registry.adapter_history(store, adapter_id)],
                "evaluation": evaluation,
            },
            indent=1,
        )


def build_server(home: str | None = None) -> MCPServer:
    store = Store(home)
    jobs.reconcile(store)
    tools = [
        Tool.from_function(
            tool_function(verb, store),
            title=verb.title,
            description=verb.doc,
            annotations=EFFECTS[verb.effect],
            structured_output=True,
        )
        for verb in VERBS
        if verb.tool is not None
    ]
    tools.append(_wait_job_tool(store))
    for tool in tools:  # tell clients only the listed arguments are accepted
        tool.parameters["additionalProperties"] = False
    server = LearnloopServer(
        tools, name="learnloop", version=__version__, instructions=INSTRUCTIONS, log_level="WARNING"
    )
    _add_resources(server, store)
    return server


def _with_dashboard(app: Any, home: str | None, host: str, secret: str | None, allow_hosts: list[str]) -> Any:
    """The read-only dashboard under /ui, with its own door: the same token (a browser's cookie
    derived from it) and the same Host/Origin checks."""
    from server.dashboard.app import beside
    from server.dashboard.app import build_app as build_dashboard
    from server.transport import require_known_host

    dashboard = require_known_host(build_dashboard(Store(home), secret, base="/ui"), host, allow_hosts)
    return beside(app, dashboard, "/ui")


def serve(
    home: str | None = None,
    transport: str = "stdio",
    host: str = "127.0.0.1",
    port: int = 8765,
    token: str | None = None,
    allow_hosts: list[str] | None = None,
) -> None:
    """Serve over stdio, or over streamable HTTP with Host/Origin allowlists on every bind address and
    a bearer token off loopback (server/transport.py)."""
    server = build_server(home)
    gc.freeze()  # start-up objects live as long as the server: keep them out of every collection
    gc.enable()
    if transport == "stdio":
        server.run("stdio")
        return
    import uvicorn

    secret, source = token_for(resolve_home(home), host, token)
    app: Any = server.streamable_http_app(
        streamable_http_path="/mcp", transport_security=security_settings(host, allow_hosts or []), host=host
    )
    if secret is not None:
        app = require_token(app, secret)
    app = _with_dashboard(app, home, host, secret, allow_hosts or [])
    print(exposure_warning(host, port, source), file=sys.stderr, flush=True)
    uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning")).run()
