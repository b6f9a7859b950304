"""`learnloop demo`: the whole loop on the embedded base, one line per stage, then the summary.

On a terminal each stage is a live progress line; on any other output (a file, a pipe, a CI log)
each stage prints plain lines as it goes, flushed at once (server/terminal.py's PlainLines).
"""

from __future__ import annotations

import os
import time
from functools import partial
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from server.terminal import JsonOpt, PlainLines, console, emit, err_console, fmt

DEMO_TITLES = {
    "base": "1. base model",
    "population": "2. agent runs (scored by execution)",
    "curate": "3a. make_sft",
    "train": "3b. train_adapter (SFT)",
    "rl": "3c. train_adapter (GRPO)",
    "evaluate": "3d. evaluate_adapter",
    "promote": "3e. promote",
    "heldout": "4. held-out tasks (select_adapter)",
    "drift": "5. detect_drift",
}
GATEWAY_DEMO_TITLES = {
    "base": "1. base model",
    "gateway": "2. gateway (in-process, loopback)",
    "before": "3. held-out traffic, before",
    "traffic": "4. training traffic (gateway scores)",
    "curate": "5a. make_sft from recorded runs",
    "train": "5b. train_adapter",
    "evaluate": "5c. evaluate_adapter",
    "promote": "5d. promote",
    "after": "6. held-out traffic, after",
}


class StageProgress:
    """The demo's screen: one progress line per stage, a spinner while it runs, a bar where it knows
    its total. On an output that is not a terminal: plain lines, each flushed as it is printed."""

    def __init__(self, out: Console, titles: dict[str, str] = DEMO_TITLES):
        self.titles = titles
        self.plain = None if out.is_terminal else PlainLines(out)
        self.bar = Progress(
            SpinnerColumn(),
            TextColumn("[bold]{task.fields[title]:<38}"),
            BarColumn(bar_width=24),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[message]}"),
            console=out,
            transient=False,
        )
        self.tasks: dict[str, Any] = {}
        self.started: dict[str, float] = {}

    def __enter__(self):
        if self.plain is None:
            self.bar.__enter__()
        return self

    def __exit__(self, *exc):
        return None if self.plain is not None else self.bar.__exit__(*exc)

    def __call__(self, stage: str, message: str, done=None, total=None, final: bool = False) -> None:
        if self.plain is not None:
            self._line(self.plain, stage, str(message), done, total, final)
            return
        if stage not in self.tasks:
            self.tasks[stage] = self.bar.add_task(stage, total=None, title=self.titles.get(stage, stage), message="")
        task = self.tasks[stage]
        if final:
            color = {"done": "green", "failed": "red"}.get(message, "white")
            self.bar.update(task, total=1, completed=1, message=f"[{color}]{message}[/]")
            self.bar.stop_task(task)
            return
        fields: dict[str, Any] = {"message": str(message)[:70]}
        if total:
            fields.update(total=total, completed=done or 0)
        self.bar.update(task, **fields)

    def _line(self, plain: PlainLines, stage: str, message: str, done, total, final: bool) -> None:
        now = time.monotonic()
        started = self.started.setdefault(stage, now)
        title = self.titles.get(stage, stage)
        if final:
            plain.line(stage, f"{title}: {message} ({now - started:.1f} s)", force=True)
        else:
            plain.line(stage, f"{title}: {message}" + (f" ({done or 0}/{total})" if total else ""))


def demo_summary(s: Any) -> None:
    table = Table(title="learnloop demo: held-out coding tasks (rewards from executing the answers)")
    for col in ("model", "pass rate", "mean reward", "eval loss"):
        table.add_column(col, justify="right" if col != "model" else "left")
    table.add_row("base", fmt(s.base_pass_rate, 2), fmt(s.base_mean_reward, 2), fmt(s.eval_loss_base))
    if s.sft_adapter_id:
        table.add_row(f"base + SFT adapter {s.sft_adapter_id}", fmt(s.sft_pass_rate, 2), fmt(s.sft_mean_reward, 2), "")
    table.add_row(
        f"base + adapter {s.adapter_id or ''}",
        fmt(s.adapter_pass_rate, 2),
        fmt(s.adapter_mean_reward, 2),
        fmt(s.eval_loss_adapter),
    )
    console.print(table)
    if s.by_family:
        fam = Table(title="held-out pass rate by task family")
        models = ["base", *(["sft"] if s.sft_adapter_id else []), "adapter"]
        for col in ("family", "tasks", *models):
            fam.add_column(col)
        for name, v in s.by_family.items():
            fam.add_row(name, str(int(v["n"])), *(fmt(v.get(m), 2) for m in models))
        console.print(fam)
    times = Table(title="stages")
    for col in ("stage", "status", "seconds", "note"):
        times.add_column(col)
    for st in s.stages:
        note = st.detail.get("error") or ""
        times.add_row(DEMO_TITLES.get(st.name, st.name), st.status, fmt(st.seconds, 1), note[:80])
    times.add_row("report", "done", fmt(s.seconds.get("report"), 1), "")
    console.print(times)
    style = "bold green" if s.adapter_beat_base else "bold yellow"
    console.print(f"[{style}]{s.verdict}[/]", highlight=False)
    console.print(
        f"gate passed: {fmt(s.gate_passed)}; adapter status: {fmt(s.adapter_status)}; "
        f"drift: {fmt(s.drift_decision)}; {s.executions} answers scored by execution; "
        f"{s.runs_logged} runs logged; total {s.total_seconds:.0f} s",
        highlight=False,
    )
    if s.gate_tested_rows:
        low, high = s.gate_interval or (None, None)
        console.print(
            f"gate, from tests on {s.gate_tested_rows} test-split tasks: base {fmt(s.gate_base_pass_rate_tests)} vs "
            f"adapter {fmt(s.gate_adapter_pass_rate_tests)}; difference interval [{fmt(low)}, {fmt(high)}]",
            highlight=False,
        )
    console.print(f"plot: {s.plot_path}\nsummary: {s.summary_path}", highlight=False)


def gateway_demo_summary(s: Any) -> None:
    table = Table(title="learnloop demo --gateway: held-out tasks sent to the gateway (rewards: its own scoring)")
    for col in ("served by", "requests", "pass rate", "mean reward"):
        table.add_column(col, justify="left" if col == "served by" else "right")
    table.add_row("before: the base", str(s.heldout_tasks), fmt(s.base_pass_rate, 2), fmt(s.base_mean_reward, 2))
    after = f"after: adapter {s.adapter_id or ''} ({s.served_by_adapter} answered)"
    table.add_row(after, str(s.heldout_tasks), fmt(s.adapter_pass_rate, 2), fmt(s.adapter_mean_reward, 2))
    console.print(table)
    times = Table(title="stages")
    for col in ("stage", "status", "seconds", "note"):
        times.add_column(col)
    for st in s.stages:
        times.add_row(
            GATEWAY_DEMO_TITLES.get(st.name, st.name), st.status, fmt(st.seconds, 1), st.detail.get("error", "")[:80]
        )
    console.print(times)
    console.print(f"[{'bold green' if s.adapter_beat_base else 'bold yellow'}]{s.verdict}[/]", highlight=False)
    forced = " (forced: --quick)" if s.forced_promotion else ""
    console.print(
        f"{s.requests} requests to {s.gateway_url}, no MCP tool called; {s.runs_recorded} runs recorded by the "
        f"gateway, {s.scored_by_gateway} scored by its sandbox; training traffic: {s.traffic_requests} requests, "
        f"pass rate {fmt(s.traffic_pass_rate, 2)}; dataset {s.dataset_id} ({s.dataset_rows} rows); gate passed: "
        f"{fmt(s.gate_passed)}; adapter status: {fmt(s.adapter_status)}{forced}; total {s.total_seconds:.0f} s\n"
        f"summary: {s.summary_path}",
        highlight=False,
    )


DemoHomeOpt = Annotated[
    str | None,
    typer.Option(
        "--home",
        help="Run in this folder instead of the demo's own (<learnloop home>/demo, or demo-gateway with "
        "--gateway). $LEARNLOOP_HOME never sends the demo there. A home holding production adapters the "
        "demo did not put there is refused, unless --allow-production-home.",
    ),
]


def demo_cmd(
    quick: Annotated[
        bool, typer.Option("--quick", help="A much smaller run (tiny base, few tasks, few steps).")
    ] = False,
    gateway: Annotated[
        bool,
        typer.Option(
            "--gateway", help="Close the loop through the gateway: the agent only sends OpenAI requests over HTTP."
        ),
    ] = False,
    home: DemoHomeOpt = None,
    allow_production_home: Annotated[
        bool,
        typer.Option(
            "--allow-production-home",
            help="Run in the --home folder even though it holds production adapters: the demo logs its runs "
            "there and replaces the coder role's production adapter with its own.",
        ),
    ] = False,
    seed: Annotated[int, typer.Option(help="Seed of the base model, the tasks and the training.")] = 0,
    as_json: JsonOpt = False,
) -> None:
    """Run the whole loop on the embedded base model and show whether the agent got better.

    The demo runs in a folder of its own, `demo` inside the learnloop home (with --gateway:
    `demo-gateway`), so its runs and adapters never mix with yours, whatever $LEARNLOOP_HOME says.
    """
    from learning.demo.homes import demo_home

    run: Any
    if gateway:
        from learning.demo.gateway_demo import QUICK
        from learning.demo.gateway_demo import GatewayDemoConfig as Config
        from learning.demo.gateway_demo import run_gateway_demo as run
    else:
        from learning.demo.demo import QUICK
        from learning.demo.demo import DemoConfig as Config
        from learning.demo.demo import run_demo as run

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    # The stages print their own progress; library progress bars and warnings would garble it.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    target = demo_home(home, gateway, allow_production_home)  # refuses a home holding production adapters
    config = (QUICK if quick else Config()).model_copy(update={"seed": seed})
    # The home demo_home chose and checked: the run takes it as it is.
    start = partial(run, target, quick=quick, config=config, allow_production_home=True)
    if as_json:
        summary = start(report=lambda *a, **k: None)
    else:
        err_console.print(f"learnloop demo in {target}", markup=False, highlight=False, soft_wrap=True)
        with StageProgress(err_console, GATEWAY_DEMO_TITLES if gateway else DEMO_TITLES) as progress:
            summary = start(report=progress)
    emit(summary, as_json, gateway_demo_summary if gateway else demo_summary)
    if any(st.status == "failed" for st in summary.stages):
        raise typer.Exit(1)
