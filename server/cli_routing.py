"""CLI commands for routing and drift: select, drift, report, experiment start|stop|list."""

from __future__ import annotations

from typing import Optional

import typer
from rich.table import Table
from typing_extensions import Annotated

from learning.routing import drift
from learning.routing import experiments
from learning.routing import router
from learning.errors import InvalidInput
from learning.store import Store
from server.cli import HomeOpt, JsonOpt, console, emit, fmt

RoleOpt = Annotated[str, typer.Option(help="The agent role, e.g. coder.")]
TaskTypeOpt = Annotated[Optional[str], typer.Option("--task-type", help="Kind of task, e.g. refactor.")]
ComplexityOpt = Annotated[Optional[str], typer.Option(help="easy, medium, hard, or free text.")]


def _render_experiment(e: experiments.Experiment) -> None:
    route = "/".join(x for x in (e.role, e.task_type, e.complexity) if x)
    share = f" {e.fraction:.0%}" if e.fraction is not None else ""
    console.print(f"experiment [bold]{e.id}[/] on {route}: {e.candidate_id} vs {e.control_id or 'base'}, "
                  f"{e.mode}{share}, {e.status}", highlight=False)
    for a in e.arms:
        console.print(f"  {a.arm:9} {a.adapter_id or 'base':30} runs {a.runs:6}  mean reward {fmt(a.mean_reward)}",
                      highlight=False)


def register(app: typer.Typer) -> None:
    @app.command("select")
    def select_cmd(role: RoleOpt, task_type: TaskTypeOpt = None, complexity: ComplexityOpt = None,
                   task_key: Annotated[Optional[str], typer.Option(help="Stable key of the task.")] = None,
                   home: HomeOpt = None, as_json: JsonOpt = False) -> None:
        """Which adapter should serve a task (adapter_id null = the base model)."""
        result = router.select_adapter(Store(home), role, task_type, complexity, task_key)

        def render(s: router.Selection) -> None:
            what = s.adapter_id or f"base model {s.base_model or ''}".strip()
            console.print(f"[bold]{what}[/] (route: {s.route}"
                          + (f", experiment {s.experiment_id} arm {s.arm}" if s.experiment_id else "") + ")", highlight=False)
            if s.adapter_path:
                console.print(f"  path {s.adapter_path}  base {s.base_model}", highlight=False)
            if s.served_name:
                console.print(f"  served as {s.served_name} at {s.deployment_url or '-'}", highlight=False)
            console.print(f"  decision_id {s.decision_id} (pass it to: learnloop log --decision-id)", highlight=False)

        emit(result, as_json, render)

    @app.command("drift")
    def drift_cmd(
        role: Annotated[Optional[str], typer.Option(help="Compare the role's production adapter with the one it replaced.")] = None,
        task_type: TaskTypeOpt = None, complexity: ComplexityOpt = None,
        new: Annotated[Optional[str], typer.Option("--new", help="Adapter id to check.")] = None,
        old: Annotated[Optional[str], typer.Option("--old", help="Adapter id to compare with.")] = None,
        experiment: Annotated[Optional[str], typer.Option(help="Compare the arms of this experiment.")] = None,
        days: Annotated[Optional[float], typer.Option(help="Only the last N days.")] = None,
        since: Annotated[Optional[str], typer.Option(help="Only runs from this time (ISO 8601).")] = None,
        last_n: Annotated[Optional[int], typer.Option("--last-n", help="Only the last N runs per arm.")] = None,
        threshold: Annotated[float, typer.Option(help="Smallest relative drop that counts.")] = 0.05,
        alpha: Annotated[float, typer.Option(help="False-alarm rate allowed.")] = 0.05,
        min_runs: Annotated[int, typer.Option("--min-runs", help="Runs per arm before deciding.")] = 30,
        sequential: Annotated[bool, typer.Option(help="Always-valid test for repeated checks (cron).")] = False,
        auto_rollback: Annotated[bool, typer.Option("--auto-rollback", help="Roll back on a regression.")] = False,
        yes: Annotated[bool, typer.Option("--yes", help="Confirm --auto-rollback.")] = False,
        home: HomeOpt = None, as_json: JsonOpt = False,
    ) -> None:
        """Does the new adapter earn less than the one it replaced? regression / improvement / no_change / insufficient_data."""
        if auto_rollback and not yes:
            raise InvalidInput("--auto-rollback changes which adapter serves production: add --yes to confirm.")
        result = drift.detect_drift(Store(home), role, task_type, complexity, new, old, experiment, days=days, since=since,
                                    last_n=last_n, threshold=threshold, alpha=alpha, min_runs=min_runs,
                                    sequential=sequential, auto_rollback=auto_rollback)

        def render(r: drift.DriftResult) -> None:
            table = Table(title=f"drift of {r.role} ({r.window}, {r.method})")
            for col in ("arm", "adapter", "runs", "mean reward", "sd"):
                table.add_column(col)
            for name, arm in (("new", r.new), ("old", r.old)):
                table.add_row(name, arm.adapter_id or "base", str(arm.runs), fmt(arm.mean_reward), fmt(arm.sd))
            console.print(table)
            color = {"regression": "red", "improvement": "green"}.get(r.decision, "yellow")
            console.print(f"[{color} bold]{r.decision}[/]: {r.message}", highlight=False)
            if r.rollback:
                console.print(r.rollback, highlight=False)

        emit(result, as_json, render)

    @app.command("report")
    def report_cmd(role: RoleOpt,
                   out: Annotated[Optional[str], typer.Option(help="PNG to write (default: <home>/reports/).")] = None,
                   window: Annotated[int, typer.Option(help="Runs in the rolling mean.")] = 20,
                   home: HomeOpt = None, as_json: JsonOpt = False) -> None:
        """Plot reward over time per adapter, with promotions, rollbacks and the latest drift decision."""
        from learning.routing.reward_plot import write_report

        result = write_report(Store(home), role, out, window)
        emit(result, as_json, lambda r: console.print(f"wrote {r.path} ({r.runs} runs, {len(r.series)} lines)",
                                                      highlight=False))

    exp = typer.Typer(help="Run a candidate beside production: canary or Thompson sampling.", no_args_is_help=True)
    app.add_typer(exp, name="experiment")

    @exp.command("start")
    def exp_start(role: RoleOpt,
                  candidate: Annotated[str, typer.Option(help="Candidate adapter id.")],
                  mode: Annotated[str, typer.Option(help="canary or thompson.")] = "canary",
                  fraction: Annotated[Optional[float], typer.Option(help="Canary share of traffic (default 0.1).")] = None,
                  seed: Annotated[int, typer.Option(help="Seed of the task-to-arm hash.")] = 0,
                  reason: Annotated[str, typer.Option(help="Why, for the record.")] = "",
                  home: HomeOpt = None, as_json: JsonOpt = False) -> None:
        """Start serving a candidate beside its route's production adapter."""
        result = experiments.start_experiment(Store(home), role, candidate, mode, fraction, seed, reason)
        emit(result, as_json, _render_experiment)

    @exp.command("stop")
    def exp_stop(id: Annotated[Optional[str], typer.Option("--id", help="Experiment id.")] = None,
                 role: Annotated[Optional[str], typer.Option(help="Or the role whose route runs one.")] = None,
                 task_type: TaskTypeOpt = None, complexity: ComplexityOpt = None,
                 reason: Annotated[str, typer.Option(help="Why, for the record.")] = "",
                 home: HomeOpt = None, as_json: JsonOpt = False) -> None:
        """Stop an experiment; traffic goes back to production."""
        result = experiments.stop_experiment(Store(home), id, role, task_type, complexity, reason)
        emit(result, as_json, _render_experiment)

    @exp.command("list")
    def exp_list(role: Annotated[Optional[str], typer.Option(help="Only this role.")] = None,
                 home: HomeOpt = None, as_json: JsonOpt = False) -> None:
        """Experiments, newest first, with each arm's runs and mean reward."""
        result = experiments.list_experiments(Store(home), role)
        emit(result, as_json, lambda rs: [_render_experiment(e) for e in rs] or console.print("no experiments"))
