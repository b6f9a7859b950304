"""CLI commands for evaluation and the adapter lifecycle: eval, promote, rollback, register,
list, history. promote and rollback show what changes and ask for confirmation unless --yes;
without a terminal and without --yes they refuse."""

from __future__ import annotations

import sys
from typing import Optional

import typer
from rich.table import Table
from typing_extensions import Annotated

from learning.evaluate import evaluation as evaluate
from learning.routing import lifecycle
from learning.registry import adapters as registry
from learning.registry import folders
from learning.store import Store
from server.cli import HomeOpt, JsonOpt, console, emit, err_console, fail, fmt

YesOpt = Annotated[bool, typer.Option("--yes", "-y", help="Do it without asking for confirmation.")]
ReasonOpt = Annotated[str, typer.Option("--reason", help="Why; kept in the adapter's history.")]


def confirmed(summary: str, yes: bool, as_json: bool) -> bool:
    """Show the summary and ask; refuse without a terminal unless --yes."""
    if yes:
        return True
    if not sys.stdin.isatty():
        fail(summary + "\nThis changes which adapter agents get; there is no terminal to confirm on. "
             "Run it again with --yes to confirm.")
    (err_console if as_json else console).print(summary, highlight=False)  # stdout stays JSON with --json
    return typer.confirm("Go ahead?", default=False, err=as_json)


def render_outcome(result: lifecycle.LifecycleOutcome) -> None:
    if result.outcome != "done":
        console.print(f"[yellow]{result.outcome}[/]: nothing changed.")
        return
    if result.promoted:
        p = result.promoted
        console.print(f"[green]{p.adapter.adapter_id}[/] {p.from_status} -> {p.to_status}"
                      + (f"; replaced {p.replaced.adapter_id} (now archived)" if p.replaced else ""), highlight=False)
    if result.rolled_back:
        r = result.rolled_back
        console.print(f"[green]{r.restored.adapter_id}[/] back in production"
                      + (f"; {r.archived.adapter_id} archived" if r.archived else ""), highlight=False)


def render_adapters(rows: list[registry.Adapter]) -> None:
    table = Table(title="adapters (* = production)")
    for col in ("", "id", "role", "status", "created", "base", "dataset", "eval loss", "pass rate"):
        table.add_column(col, no_wrap=col in ("id", "status", "eval loss", "pass rate"))
    for a in rows:
        m = a.metrics or {}
        route = "/".join(x for x in (a.role, a.task_type, a.complexity) if x)
        table.add_row("*" if a.status == "production" else "", a.id, route, a.status, a.created[:16].replace("T", " "),
                      a.base_model[-30:], fmt(a.dataset_id), fmt(m.get("eval_loss")), fmt(m.get("pass_rate")))
    console.print(table)


def render_history(rows: list[registry.AdapterEvent]) -> None:
    table = Table(title="adapter history")
    for col in ("time", "adapter", "from", "to", "actor", "reason"):
        table.add_column(col)
    for e in rows:
        table.add_row(e.time, e.adapter_id, fmt(e.from_status), e.to_status, e.actor, e.reason[:90])
    console.print(table)


def render_eval(result) -> None:
    if isinstance(result, evaluate.EvalStarted):
        console.print(f"evaluation job [bold]{result.job_id}[/] started for {result.adapter_id} on "
                      f"{result.dataset_id} ({result.test_rows} test rows); follow it with: learnloop jobs {result.job_id} --wait",
                      highlight=False)
        return
    from server.cli_jobs import render_status

    render_status(result)


def register(app: typer.Typer) -> None:
    @app.command("eval")
    def eval_cmd(
        adapter_id: Annotated[str, typer.Argument(help="The adapter to evaluate.")],
        dataset: Annotated[Optional[str], typer.Option("--dataset", help="Use this dataset's test split.")] = None,
        max_examples: Annotated[int, typer.Option(help="Test rows for the teacher-forced metrics.")] = 200,
        max_generate: Annotated[int, typer.Option(help="Test prompts answered and checked.")] = 32,
        max_new_tokens: Annotated[int, typer.Option(help="Longest generated answer, in tokens.")] = 256,
        min_pass_rate: Annotated[Optional[float], typer.Option(help="Gate: absolute pass rate to reach (e.g. 0.9).")] = None,
        wait: Annotated[bool, typer.Option("--wait", help="Follow the job until it ends.")] = False,
        home: HomeOpt = None,
        as_json: JsonOpt = False,
    ) -> None:
        """Evaluate an adapter against its base (a background job); the gate makes it a candidate."""
        store = Store(home)
        started = evaluate.evaluate_adapter(store, adapter_id, dataset, max_examples=max_examples,
                                            max_generate=max_generate, max_new_tokens=max_new_tokens,
                                            gate={"min_pass_rate": min_pass_rate})
        if not wait:
            emit(started, as_json, render_eval)
            return
        from server.cli_jobs import follow

        status = follow(store, started.job_id, as_json)
        emit(status, as_json, render_eval)
        if status.status != "succeeded":
            raise typer.Exit(1)

    @app.command("promote")
    def promote_cmd(
        adapter_id: Annotated[str, typer.Argument(help="The adapter to move.")],
        to: Annotated[str, typer.Option("--to", help="candidate, production or archived.")] = "production",
        yes: YesOpt = False,
        force: Annotated[bool, typer.Option("--force", help="Override the checks (from candidate only; same base).")] = False,
        reason: ReasonOpt = "",
        home: HomeOpt = None,
        as_json: JsonOpt = False,
    ) -> None:
        """Promote an adapter; to production it replaces (and archives) the route's current one."""
        store = Store(home)
        plan = lifecycle.plan_promote(store, adapter_id, to, force)  # type: ignore[arg-type]
        if not confirmed(plan.summary, yes, as_json):
            emit(lifecycle.LifecycleOutcome(outcome="declined", summary=plan.summary), as_json, render_outcome)
            return
        done = lifecycle.promote(store, adapter_id, to, force, reason or f"promoted to {to}", actor="cli")  # type: ignore[arg-type]
        emit(lifecycle.LifecycleOutcome(outcome="done", summary=done.summary, promoted=done), as_json, render_outcome)

    @app.command("rollback")
    def rollback_cmd(
        role: Annotated[str, typer.Option("--role", help="The route's role.")],
        task_type: Annotated[Optional[str], typer.Option("--task-type", help="The route's task type.")] = None,
        complexity: Annotated[Optional[str], typer.Option("--complexity", help="The route's complexity.")] = None,
        yes: YesOpt = False,
        reason: ReasonOpt = "",
        home: HomeOpt = None,
        as_json: JsonOpt = False,
    ) -> None:
        """Put the route's previous production adapter back; the current one is archived."""
        store = Store(home)
        plan = lifecycle.plan_rollback(store, role, task_type, complexity)
        if not confirmed(plan.summary, yes, as_json):
            emit(lifecycle.LifecycleOutcome(outcome="declined", summary=plan.summary), as_json, render_outcome)
            return
        done = lifecycle.rollback(store, role, task_type, complexity, reason or "rollback", actor="cli")
        emit(lifecycle.LifecycleOutcome(outcome="done", summary=done.summary, rolled_back=done), as_json, render_outcome)

    @app.command("register")
    def register_cmd(
        path: Annotated[str, typer.Argument(help="A PEFT adapter folder (Unsloth, Axolotl, LLaMA-Factory output).")],
        role: Annotated[str, typer.Option("--role", help="The role it serves.")],
        base: Annotated[Optional[str], typer.Option("--base", help="Its base model; default from adapter_config.json.")] = None,
        task_type: Annotated[Optional[str], typer.Option("--task-type")] = None,
        complexity: Annotated[Optional[str], typer.Option("--complexity")] = None,
        dataset: Annotated[Optional[str], typer.Option("--dataset", help="Default dataset to evaluate it on.")] = None,
        home: HomeOpt = None,
        as_json: JsonOpt = False,
    ) -> None:
        """Bring an adapter trained elsewhere into the registry (checks that it loads on its base)."""
        adapter = folders.register_adapter(Store(home), path, role, base, task_type=task_type,
                                           complexity=complexity, dataset_id=dataset, actor="cli")
        emit(adapter, as_json, lambda a: console.print(f"registered [bold]{a.id}[/] ({a.role}, base {a.base_model}) "
                                                       f"as trained; evaluate it with: learnloop eval {a.id}", highlight=False))

    @app.command("list")
    def list_cmd(
        role: Annotated[Optional[str], typer.Option("--role", help="Only this role.")] = None,
        status: Annotated[Optional[str], typer.Option("--status", help="Only this status.")] = None,
        home: HomeOpt = None,
        as_json: JsonOpt = False,
    ) -> None:
        """The adapter registry as a table."""
        emit(registry.list_adapters(Store(home), role, status), as_json, render_adapters)

    @app.command("history")
    def history_cmd(
        adapter_id: Annotated[Optional[str], typer.Argument(help="One adapter; without it, all.")] = None,
        role: Annotated[Optional[str], typer.Option("--role", help="Only this role.")] = None,
        home: HomeOpt = None,
        as_json: JsonOpt = False,
    ) -> None:
        """Every status change of the adapters, oldest first."""
        emit(registry.adapter_history(Store(home), adapter_id, role), as_json, render_history)

