"""CLI command: learnloop cycle --role R [--to-production] [--no-wait] [--json]."""

from __future__ import annotations

from typing import Optional

import typer
from rich.table import Table
from typing_extensions import Annotated

from learning.loop import cycle
from learning.store import Store
from server.cli import HomeOpt, JsonOpt, console, emit, fmt
from server.cli_jobs import follow, render_status


def render_report(status) -> None:
    render_status(status)
    stages = (status.result or {}).get("stages") or status.progress.get("stages") or []
    if stages:
        table = Table(title=f"cycle {status.job_id}")
        for col in ("stage", "status", "seconds", "detail"):
            table.add_column(col)
        for st in stages:
            d = st.get("detail", {})
            note = d.get("error") or d.get("reason") or d.get("message") or ", ".join(
                f"{k}={fmt(d[k])}" for k in ("dataset_id", "adapter_id", "eval_loss", "base_eval_loss", "gate_passed",
                                            "status", "decision") if k in d)
            table.add_row(st["name"], st["status"], fmt(st["seconds"], 1), str(note)[:100])
        console.print(table)


def register(app: typer.Typer) -> None:
    @app.command("cycle")
    def cycle_cmd(
        role: Annotated[str, typer.Option(help="The role to improve, e.g. coder.")],
        to_production: Annotated[bool, typer.Option("--to-production", help="Promote to production when the gate passes.")] = False,
        min_reward: Annotated[float, typer.Option("--min-reward", help="Curate runs with at least this reward.")] = 0.7,
        days: Annotated[Optional[float], typer.Option(help="Only runs of the last N days.")] = None,
        base: Annotated[Optional[str], typer.Option(help="Base model folder or hub id.")] = None,
        preset: Annotated[str, typer.Option(help="light, default or heavy.")] = "default",
        max_steps: Annotated[Optional[int], typer.Option("--max-steps", help="Training steps.")] = None,
        auto_rollback: Annotated[bool, typer.Option("--auto-rollback", help="Roll back the previous adapter on a regression.")] = False,
        wait: Annotated[bool, typer.Option("--wait/--no-wait", help="Follow the job to its end (default) or return its id.")] = True,
        home: HomeOpt = None,
        as_json: JsonOpt = False,
    ) -> None:
        """make-sft -> train -> eval -> promote if the gate passes -> drift, as one job.

        Exits 1 when a stage failed; with --no-wait prints the job id at once."""
        store = Store(home)
        started = cycle.run_cycle(store, role, to_production=to_production, min_reward=min_reward, days=days,
                                  base=base, preset=preset, max_steps=max_steps, auto_rollback=auto_rollback)
        if not wait:
            emit(started, as_json, lambda s: console.print(f"cycle job [bold]{s.job_id}[/] started for role {s.role}; "
                                                           f"follow it with: learnloop jobs {s.job_id} --wait"))
            return
        status = follow(store, started.job_id, as_json)
        emit(status, as_json, render_report)
        if status.status != "succeeded":
            raise typer.Exit(1)
