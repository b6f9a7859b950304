"""MCP tools for evaluation and the adapter lifecycle: evaluate_adapter, promote, rollback,
register_adapter, list_adapters, adapter_history; resources learnloop://adapters[/{id}].

promote and rollback change which adapter agents get, so a person confirms them: through
MCP elicitation when the client declares it (the person sees what is replaced and the
metrics of both; accept -> done, decline/cancel -> nothing changes), otherwise the caller
must pass confirm=true after showing the person the same summary (the error carries it).
"""

# No `from __future__ import annotations` here: the SDK reads the Resolve(...) markers of the
# tools' parameters with typing.get_type_hints, which cannot see the closures they name.
import json
from pathlib import Path
from typing import Any, Literal

import anyio
from mcp.server.mcpserver import Context, Elicit, MCPServer, Resolve
from mcp.server.elicitation import ElicitationResult
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import ToolAnnotations
from pydantic import BaseModel, Field
from typing_extensions import Annotated

from learning.evaluate import evaluation as evaluate
from learning.routing import lifecycle
from learning.registry import adapters as registry
from learning.registry import folders
from learning.errors import LearnloopError
from learning.store import Store
from server.mcp import READ_ONLY, register_tool

DESTRUCTIVE = ToolAnnotations(read_only_hint=False, destructive_hint=True, idempotent_hint=False, open_world_hint=False)
STARTS_JOB = ToolAnnotations(read_only_hint=False, destructive_hint=False, idempotent_hint=False, open_world_hint=False)


class Confirmation(BaseModel):
    confirm: bool = Field(True, description="Go ahead with the change.")


def supports_elicitation(ctx: Context) -> bool:
    caps = ctx.client_capabilities
    return caps is not None and caps.elicitation is not None


def ask_person(ctx: Context, plan_fn, confirm: bool):
    """A Resolve(...) resolver: ask the person through elicitation when the client can (the SDK
    sends the question in whichever way the negotiated protocol uses), else accept only an
    explicit confirm=true; refuse with the summary otherwise. Bad input fails here, before asking."""
    try:
        plan = plan_fn()
    except LearnloopError as exc:
        raise ToolError(str(exc)) from exc
    if supports_elicitation(ctx):
        return Elicit(plan.summary + "\n\nGo ahead?", Confirmation)
    if not confirm:
        raise ToolError(plan.summary + "\n\nThis changes which adapter agents get. Show this summary to the person and, "
                                       "once they agree, call again with confirm=true.")
    return Confirmation(confirm=True)


def outcome_of(answer) -> Literal["done", "declined", "cancelled"]:
    if answer.action == "accept":
        return "done" if answer.data.confirm else "declined"
    return "declined" if answer.action == "decline" else "cancelled"


def register(server: MCPServer, store: Store) -> None:
    def evaluate_adapter(
        adapter_id: Annotated[str, Field(description="The adapter to evaluate (a trained adapter; see list_adapters).")],
        dataset_id: Annotated[str | None, Field(description="Evaluate on this dataset's test split instead of the adapter's own.")] = None,
        max_examples: Annotated[int, Field(ge=1, le=100_000, description="Test rows for loss / perplexity / token accuracy.")] = 200,
        max_generate: Annotated[int, Field(ge=0, le=10_000, description="Test prompts answered and checked (compiles, tests, patch form, verdict).")] = 32,
        max_new_tokens: Annotated[int, Field(ge=1, le=8192, description="Longest generated answer, in tokens.")] = 256,
        min_pass_rate: Annotated[float | None, Field(ge=0, le=1, description="Gate: the adapter must also reach this pass rate (e.g. 0.9). Default: none.")] = None,
        min_loss_improvement: Annotated[float, Field(ge=0, description="Gate: eval loss must beat the base's by more than this.")] = 0.0,
        pass_rate_tolerance: Annotated[float, Field(ge=0, le=1, description="Gate: pass rate may be this much below the base's.")] = 0.0,
    ) -> evaluate.EvalStarted:
        """Evaluate an adapter against its base on held-out examples, as a background job (returns
        its job id at once; follow it with wait_job). Both models on the same examples: eval loss,
        perplexity, token accuracy; answers checked per role; sanity prompts saved. If the gate
        passes (loss below the base's, pass rate not below the base's), the adapter becomes a candidate."""
        gate = evaluate.GateConfig(min_pass_rate=min_pass_rate, min_loss_improvement=min_loss_improvement,
                                   pass_rate_tolerance=pass_rate_tolerance)
        return evaluate.evaluate_adapter(store, adapter_id, dataset_id, max_examples=max_examples,
                                         max_generate=max_generate, max_new_tokens=max_new_tokens, gate=gate)

    def ask_promote(adapter_id: str, to: str, force: bool, confirm: bool, ctx: Context):
        return ask_person(ctx, lambda: lifecycle.plan_promote(store, adapter_id, to, force), confirm)  # type: ignore[arg-type]

    def ask_rollback(role: str, task_type: str | None, complexity: str | None, confirm: bool, ctx: Context):
        return ask_person(ctx, lambda: lifecycle.plan_rollback(store, role, task_type, complexity), confirm)

    async def promote(
        adapter_id: Annotated[str, Field(description="The adapter to move.")],
        answer: Annotated[ElicitationResult[Confirmation], Resolve(ask_promote)],
        to: Annotated[lifecycle.Target, Field(description="candidate, production (replaces and archives the route's current one) or archived.")] = "production",
        force: Annotated[bool, Field(description="Override the checks (production only from candidate; same base as the route's production adapter).")] = False,
        reason: Annotated[str, Field(description="Why, kept in the adapter's history.")] = "",
        confirm: Annotated[bool, Field(description="Only for clients without elicitation: true after the person agreed to the summary.")] = False,
    ) -> lifecycle.LifecycleOutcome:
        """Promote an adapter (usually a candidate to production). Asks the person to confirm, showing
        what it replaces and the metrics of both; the replaced adapter is archived in the same step
        and rollback undoes it."""
        outcome = outcome_of(answer)
        if outcome != "done":
            plan = await anyio.to_thread.run_sync(lambda: lifecycle.plan_promote(store, adapter_id, to, force))
            return lifecycle.LifecycleOutcome(outcome=outcome, summary=plan.summary)
        done = await anyio.to_thread.run_sync(
            lambda: lifecycle.promote(store, adapter_id, to, force, reason or f"promoted to {to}", actor="mcp"))
        return lifecycle.LifecycleOutcome(outcome="done", summary=done.summary, promoted=done)

    async def rollback(
        role: Annotated[str, Field(description="The route's role, e.g. coder.")],
        answer: Annotated[ElicitationResult[Confirmation], Resolve(ask_rollback)],
        task_type: Annotated[str | None, Field(description="The route's task type, if the route has one.")] = None,
        complexity: Annotated[str | None, Field(description="The route's complexity, if the route has one.")] = None,
        reason: Annotated[str, Field(description="Why, kept in the history.")] = "",
        confirm: Annotated[bool, Field(description="Only for clients without elicitation: true after the person agreed to the summary.")] = False,
    ) -> lifecycle.LifecycleOutcome:
        """Put the route's previous production adapter back into production and archive the current
        one, in one step. Asks the person to confirm first."""
        outcome = outcome_of(answer)
        if outcome != "done":
            plan = await anyio.to_thread.run_sync(lambda: lifecycle.plan_rollback(store, role, task_type, complexity))
            return lifecycle.LifecycleOutcome(outcome=outcome, summary=plan.summary)
        done = await anyio.to_thread.run_sync(
            lambda: lifecycle.rollback(store, role, task_type, complexity, reason or "rollback", actor="mcp"))
        return lifecycle.LifecycleOutcome(outcome="done", summary=done.summary, rolled_back=done)

    def register_adapter(
        path: Annotated[str, Field(description="Folder of a PEFT adapter on the server's machine (adapter_config.json + weights), e.g. Unsloth, Axolotl or LLaMA-Factory output.")],
        role: Annotated[str, Field(description="The role it serves: coder, fixer, judge, ...")],
        base: Annotated[str | None, Field(description="Its base model (local folder or cached hub id); default: base_model_name_or_path from adapter_config.json.")] = None,
        task_type: Annotated[str | None, Field(description="Route it to this task type only.")] = None,
        complexity: Annotated[str | None, Field(description="Route it to this complexity only.")] = None,
        dataset_id: Annotated[str | None, Field(description="A learnloop dataset to evaluate it on by default.")] = None,
    ) -> registry.Adapter:
        """Bring an adapter trained elsewhere into the registry as 'trained', after checking that it
        loads on its base (takes seconds to minutes: the base is loaded in a separate process).
        Then evaluate_adapter and promote treat it like any other."""
        return folders.register_adapter(store, path, role, base, task_type=task_type, complexity=complexity,
                                        dataset_id=dataset_id, actor="mcp")

    def list_adapters(
        role: Annotated[str | None, Field(description="Only this role.")] = None,
        status: Annotated[str | None, Field(description="Only this status: training, trained, candidate, production, archived, failed.")] = None,
    ) -> list[registry.Adapter]:
        """Every adapter learnloop knows, newest first, with status, base, dataset and eval metrics."""
        return registry.list_adapters(store, role, status)

    def adapter_history(
        adapter_id: Annotated[str | None, Field(description="One adapter's moves; without it, all (or a role's).")] = None,
        role: Annotated[str | None, Field(description="Only adapters of this role.")] = None,
    ) -> list[registry.AdapterEvent]:
        """Every status change (time, actor, from, to, reason), oldest first, evaluations included."""
        return registry.adapter_history(store, adapter_id, role)

    register_tool(server, evaluate_adapter, annotations=STARTS_JOB, title="Evaluate an adapter")
    register_tool(server, promote, annotations=DESTRUCTIVE, title="Promote an adapter")
    register_tool(server, rollback, annotations=DESTRUCTIVE, title="Roll back a route")
    register_tool(server, register_adapter, annotations=STARTS_JOB, title="Register an external adapter")
    register_tool(server, list_adapters, annotations=READ_ONLY, title="List adapters")
    register_tool(server, adapter_history, annotations=READ_ONLY, title="Adapter history")

    @server.resource("learnloop://adapters", name="adapters", mime_type="application/json",
                     description="The adapter registry: every adapter with its status and metrics.")
    def adapters_resource() -> str:
        return json.dumps([a.model_dump(mode="json") for a in registry.list_adapters(store)], indent=1)

    @server.resource("learnloop://adapters/{adapter_id}", name="adapter", mime_type="application/json",
                     description="One adapter: record, history and its last evaluation (metrics.json).")
    def adapter_resource(adapter_id: str) -> str:
        adapter = registry.get_adapter(store, adapter_id)
        metrics_file = Path(adapter.path) / "eval" / "metrics.json"
        evaluation: Any = json.loads(metrics_file.read_text()) if metrics_file.is_file() else None
        return json.dumps({"adapter": adapter.model_dump(mode="json"),
                           "history": [e.model_dump(mode="json") for e in registry.adapter_history(store, adapter_id)],
                           "evaluation": evaluation}, indent=1)
