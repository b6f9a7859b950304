"""CLI command for background jobs: learnloop jobs [ID] [--wait] [--cancel]."""

from __future__ import annotations

from typing import Optional

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from typing_extensions import Annotated

from learning.jobs import manage as jobs
from learning.store import Store
from server.cli import HomeOpt, JsonOpt, console, emit, fmt


def follow(store: Store, job_id: str, as_json: bool = False) -> jobs.JobStatus:
    """Wait for a job to finish, with a progress bar unless printing JSON."""
    if as_json:
        while (status := jobs.wait_job(store, job_id, timeout=jobs.MAX_WAIT_SECONDS)).status not in jobs.FINAL:
            pass
        return status
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.fields[info]}"),
                  TimeElapsedColumn(), console=console, transient=False) as bar:
        task = bar.add_task(job_id, total=None, info="")

        def update(s: jobs.JobStatus) -> None:
            p = s.progress
            info = " ".join(f"{k}={fmt(p[k])}" for k in ("stage", "loss", "tokens_per_s", "eta_s") if p.get(k) is not None)
            bar.update(task, total=p.get("total_steps"), completed=p.get("step", 0),
                       description=f"{s.kind} {s.status}", info=p.get("message") or info)

        while (status := jobs.wait_job(store, job_id, timeout=jobs.MAX_WAIT_SECONDS, on_progress=update)).status not in jobs.FINAL:
            pass
    return status


def render_status(s: jobs.JobStatus) -> None:
    color = {"succeeded": "green", "failed": "red", "cancelled": "yellow"}.get(s.status, "cyan")
    console.print(f"job [bold]{s.job_id}[/] ({s.kind}) [{color}]{s.status}[/]"
                  + (f" subject {s.subject}" if s.subject else "") + (f" in {s.elapsed_s}s" if s.elapsed_s else ""))
    if s.progress:
        console.print("  progress: " + ", ".join(f"{k}={fmt(v)}" for k, v in s.progress.items()), highlight=False)
    if s.error:
        console.print(f"  [red]error:[/] {s.error}", highlight=False)
    if s.result:
        console.print("  result: " + ", ".join(f"{k}={fmt(v)}" for k, v in s.result.items()
                                              if not isinstance(v, (dict, list))), highlight=False)
    console.print(f"  log: {s.log_path}", highlight=False)


def register(app: typer.Typer) -> None:
    @app.command("jobs")
    def jobs_cmd(
        job_id: Annotated[Optional[str], typer.Argument(help="A job id; without it, list recent jobs.")] = None,
        wait: Annotated[bool, typer.Option("--wait", help="Follow the job until it ends.")] = False,
        cancel: Annotated[bool, typer.Option("--cancel", help="Stop the job gracefully (it checkpoints).")] = False,
        status: Annotated[Optional[str], typer.Option(help="List only jobs in this state.")] = None,
        home: HomeOpt = None,
        as_json: JsonOpt = False,
    ) -> None:
        """List jobs, show one, follow it (--wait) or cancel it (--cancel)."""
        store = Store(home)
        if job_id is None:
            result = jobs.list_jobs(store, status)

            def render(rows: list[jobs.JobStatus]) -> None:
                table = Table(title="jobs")
                for col in ("id", "kind", "status", "subject", "created", "elapsed s", "step", "error"):
                    table.add_column(col)
                for j in rows:
                    table.add_row(j.job_id, j.kind, j.status, fmt(j.subject), j.created, fmt(j.elapsed_s),
                                  fmt(j.progress.get("step")), (j.error or "")[:60])
                console.print(table)

            emit(result, as_json, render)
            return
        if cancel:
            result = jobs.cancel_job(store, job_id)
            if wait:
                result = follow(store, job_id, as_json)
        elif wait:
            result = follow(store, job_id, as_json)
        else:
            result = jobs.job_status(store, job_id)
        emit(result, as_json, render_status)
        if wait and result.status == "failed":
            raise typer.Exit(1)
