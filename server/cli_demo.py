"""CLI command: learnloop demo [--home DIR] [--quick] [--json]."""

from __future__ import annotations

import os
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table
from typing_extensions import Annotated

from server.cli import HomeOpt, JsonOpt, console, emit, err_console, fmt

TITLES = {
    "base": "1. base model", "population": "2. agent runs (scored by execution)", "curate": "3a. make_sft",
    "train": "3b. train_adapter", "evaluate": "3c. evaluate_adapter", "promote": "3d. promote",
    "heldout": "4. held-out tasks (select_adapter)", "drift": "5. detect_drift",
}


class StageProgress:
    """One progress line per stage: a spinner while it runs, a bar where it knows its total."""

    def __init__(self, out: Console):
        self.bar = Progress(SpinnerColumn(), TextColumn("[bold]{task.fields[title]:<38}"), BarColumn(bar_width=24),
                            MofNCompleteColumn(), TimeElapsedColumn(), TextColumn("{task.fields[message]}"),
                            console=out, transient=False)
        self.tasks: dict[str, int] = {}

    def __enter__(self):
        self.bar.__enter__()
        return self

    def __exit__(self, *exc):
        return self.bar.__exit__(*exc)

    def __call__(self, stage: str, message: str, done=None, total=None, final: bool = False) -> None:
        if stage not in self.tasks:
            self.tasks[stage] = self.bar.add_task(stage, total=None, title=TITLES.get(stage, stage), message="")
        task = self.tasks[stage]
        if final:
            color = {"done": "green", "failed": "red"}.get(message, "white")
            self.bar.update(task, total=1, completed=1, message=f"[{color}]{message}[/]")
            self.bar.stop_task(task)
            return
        fields = {"message": str(message)[:70]}
        if total:
            fields.update(total=total, completed=done or 0)
        self.bar.update(task, **fields)


def render_summary(s) -> None:
    table = Table(title="learnloop demo: held-out coding tasks (rewards from executing the answers)")
    for col in ("model", "pass rate", "mean reward", "eval loss"):
        table.add_column(col, justify="right" if col != "model" else "left")
    table.add_row("base", fmt(s.base_pass_rate, 2), fmt(s.base_mean_reward, 2), fmt(s.eval_loss_base))
    table.add_row(f"base + adapter {s.adapter_id or ''}", fmt(s.adapter_pass_rate, 2), fmt(s.adapter_mean_reward, 2),
                  fmt(s.eval_loss_adapter))
    console.print(table)
    if s.by_family:
        fam = Table(title="held-out pass rate by task family")
        for col in ("family", "tasks", "base", "adapter"):
            fam.add_column(col)
        for name, v in s.by_family.items():
            fam.add_row(name, str(int(v["n"])), fmt(v["base"], 2), fmt(v["adapter"], 2))
        console.print(fam)
    times = Table(title="stages")
    for col in ("stage", "status", "seconds", "note"):
        times.add_column(col)
    for st in s.stages:
        note = st.detail.get("error") or ""
        times.add_row(TITLES.get(st.name, st.name), st.status, fmt(st.seconds, 1), note[:80])
    times.add_row("report", "done", fmt(s.seconds.get("report"), 1), "")
    console.print(times)
    style = "bold green" if s.adapter_beat_base else "bold yellow"
    console.print(f"[{style}]{s.verdict}[/]", highlight=False)
    console.print(f"gate passed: {fmt(s.gate_passed)}; adapter status: {fmt(s.adapter_status)}; "
                  f"drift: {fmt(s.drift_decision)}; {s.executions} answers scored by execution; "
                  f"{s.runs_logged} runs logged; total {s.total_seconds:.0f} s", highlight=False)
    console.print(f"plot: {s.plot_path}\nsummary: {s.summary_path}", highlight=False)


def register(app: typer.Typer) -> None:
    @app.command("demo")
    def demo_cmd(
        quick: Annotated[bool, typer.Option("--quick", help="A much smaller run (tiny base, few tasks, few steps).")] = False,
        home: HomeOpt = None,
        as_json: JsonOpt = False,
    ) -> None:
        """Run the whole loop on the embedded base model and show whether the agent got better.

        Without --home the demo uses a `demo` folder inside the learnloop home, so its runs and
        adapters never mix with yours.
        """
        from learning.demo.demo import run_demo
        from learning.home import resolve_home

        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        # The stages print their own progress; library progress bars and warnings would garble it.
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        target = home or str(Path(resolve_home(None)) / "demo")
        if as_json:
            summary = run_demo(target, quick=quick, report=lambda *a, **k: None)
        else:
            with StageProgress(err_console) as progress:
                summary = run_demo(target, quick=quick, report=progress)
        emit(summary, as_json, render_summary)
        if any(st.status == "failed" for st in summary.stages):
            raise typer.Exit(1)
