"""The CLI commands that are not verbs: serve, gateway, demo, init-base and jobs, and following a job
in the terminal. Agents reach the same through the MCP server itself, `job_status`,
`wait_job`, `cancel_job` and `list_jobs`, and train_adapter (which builds the base on first use).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from learning.errors import InvalidInput
from learning.jobs import manage as jobs
from learning.store import Store
from server import render
from server.terminal import HomeOpt, JsonOpt, console, emit, err_console, fmt

GROUP_HELP = {
    "experiment": "Run a candidate beside production: canary or Thompson sampling.",
    "base": "Bases to train on: import the GGUF that Ollama or llama.cpp serves.",
}
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


def follow(store: Store, job_id: str, as_json: bool = False) -> jobs.JobStatus:
    """Wait for a job to finish, with a progress bar unless printing JSON."""
    if as_json:
        return jobs.follow_job(store, job_id)
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    ) as bar:
        task = bar.add_task(job_id, total=None, info="")

        def update(s: jobs.JobStatus) -> None:
            p = s.progress
            info = " ".join(
                f"{k}={fmt(p[k])}" for k in ("stage", "loss", "tokens_per_s", "eta_s") if p.get(k) is not None
            )
            bar.update(
                task,
                total=p.get("total_steps"),
                completed=p.get("step", 0),
                description=f"{s.kind} {s.status}",
                info=p.get("message") or info,
            )

        return jobs.follow_job(store, job_id, on_progress=update)


def follow_to_the_end(store: Store, started: Any, as_json: bool, tool: str | None) -> None:
    """Follow a job a command started and print what it ended with; exit 1 unless it succeeded."""
    if tool == "train_adapter" and not as_json:
        render.train_started(started)
    status = follow(store, started.job_id, as_json)
    if tool == "train_adapter":
        emit(
            {"job_id": started.job_id, "adapter_id": started.adapter_id, "status": status.status, "job": status},
            as_json,
            lambda r: render.job_status(r["job"]),
        )
    elif tool == "export_adapter" and status.status == "succeeded":
        emit(status.result, as_json, render.export_result)
    elif tool == "run_cycle":
        emit(status, as_json, render.cycle_report)
    else:
        emit(status, as_json, render.job_status)
    if status.status != "succeeded":
        raise typer.Exit(1)


class StageProgress:
    """The demo's screen: one progress line per stage, a spinner while it runs, a bar where it knows its total."""

    def __init__(self, out: Console, titles: dict[str, str] = DEMO_TITLES):
        self.titles = titles
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

    def __enter__(self):
        self.bar.__enter__()
        return self

    def __exit__(self, *exc):
        return self.bar.__exit__(*exc)

    def __call__(self, stage: str, message: str, done=None, total=None, final: bool = False) -> None:
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


def serve(
    home: HomeOpt = None,
    transport: Annotated[str, typer.Option(help="stdio (default) or http (streamable HTTP).")] = "stdio",
    host: Annotated[str, typer.Option(help="HTTP bind address; loopback unless you say otherwise.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="HTTP port.")] = 8765,
    token: Annotated[
        str | None,
        typer.Option(
            help="Bearer token HTTP clients must send (else $LEARNLOOP_TOKEN, else <home>/http_token, generated "
            "on first use); required off loopback."
        ),
    ] = None,
    allow_host: Annotated[
        list[str] | None,
        typer.Option(help="Another host name clients may use to reach the HTTP server (repeatable)."),
    ] = None,
) -> None:
    """Run the MCP server (stdio by default). Over HTTP, Host and Origin headers are checked on every
    bind address and, off loopback, every request needs the bearer token."""
    from server.mcp import serve as run_server

    if transport not in ("stdio", "http"):
        raise InvalidInput(f"--transport must be stdio or http, got {transport!r}.")
    run_server(home, transport, host, port, token, allow_host or [])


def gateway(
    home: HomeOpt = None,
    host: Annotated[str, typer.Option(help="Bind address; loopback unless you say otherwise.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.")] = 8766,
    backend: Annotated[
        str, typer.Option(help="inprocess (the base loaded here) or the URL of an OpenAI-compatible runtime.")
    ] = "inprocess",
    runtime: Annotated[str, typer.Option(help="The runtime at --backend URL: vllm, llamacpp or ollama.")] = "vllm",
    base: Annotated[
        str | None,
        typer.Option(
            help="In process: the base folder (default: the embedded tiny base). Forwarding: the name the runtime "
            "serves the base under (required for vllm and ollama)."
        ),
    ] = None,
    token: Annotated[
        str | None,
        typer.Option(
            help="Bearer token clients send as their API key (else $LEARNLOOP_TOKEN, else <home>/http_token); required off loopback."
        ),
    ] = None,
    allow_host: Annotated[
        list[str] | None, typer.Option(help="Another host name clients may use to reach the gateway (repeatable).")
    ] = None,
    record_failures: Annotated[
        bool,
        typer.Option(help="Record a request the backend failed as a failed run (reward 0.0), not only answer 502."),
    ] = False,
) -> None:
    """Run the OpenAI-compatible gateway: model learnloop/<role>[/<task_type>] is routed to the
    adapter select_adapter picks, and every exchange is recorded as a run with its reward pending."""
    import uvicorn

    from learning.gateway.app import build_app
    from server.transport import is_loopback, require_known_host, require_token, token_for

    store = Store(home)
    if backend == "inprocess":
        from learning.gateway.inprocess import InProcess
        from learning.models.tinybase import ensure_base

        served: Any = InProcess(base or ensure_base(store, "tiny").path)
    elif backend.startswith(("http://", "https://")):
        from learning.gateway.forward import Forwarding

        if runtime not in ("vllm", "llamacpp", "ollama"):
            raise InvalidInput(f"--runtime must be vllm, llamacpp or ollama, got {runtime!r}.")
        served = Forwarding(backend, runtime, base)  # pyright: ignore[reportArgumentType]  # checked above
    else:
        raise InvalidInput(f"--backend must be inprocess or an http(s) URL, got {backend!r}.")
    secret, source = token_for(store.home, host, token)
    app: Any = build_app(store, served, record_failures)
    app = require_known_host(app, host, allow_host or [])
    if secret is not None:
        app = require_token(app, secret)
    where = "this machine only" if is_loopback(host) and not source else f"clients send the token from {source}"
    err_console.print(f"learnloop gateway on http://{host}:{port}/v1 ({served.name}; {where}).", highlight=False)
    if not is_loopback(host):
        err_console.print(
            f"WARNING: {host} is reachable from other machines: anyone who holds the token can generate "
            "with your models and have the exchanges recorded as runs. Keep the token secret.",
            highlight=False,
        )
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)


def jobs_cmd(
    job_id: Annotated[str | None, typer.Argument(help="A job id; without it, list recent jobs.")] = None,
    wait: Annotated[bool, typer.Option("--wait", help="Follow the job until it ends.")] = False,
    cancel: Annotated[bool, typer.Option("--cancel", help="Stop the job gracefully (it checkpoints).")] = False,
    status: Annotated[str | None, typer.Option(help="List only jobs in this state.")] = None,
    limit: Annotated[int, typer.Option(help="List at most this many, newest first.")] = 50,
    home: HomeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """List jobs, show one, follow it (--wait) or cancel it (--cancel)."""
    store = Store(home)
    if job_id is None:
        emit(jobs.list_jobs(store, status, limit), as_json, render.job_list)
        return
    result = jobs.cancel_job(store, job_id) if cancel else None
    result = follow(store, job_id, as_json) if wait else (result or jobs.job_status(store, job_id))
    emit(result, as_json, render.job_status)
    if wait and result.status == "failed":
        raise typer.Exit(1)


def init_base(
    size: Annotated[
        str, typer.Option("--size", help="tiny (seconds, for tests) or small (about a minute, for the demo).")
    ] = "small",
    seed: Annotated[
        int | None,
        typer.Option(
            "--seed",
            help="Seed of the corpus, tokenizer and weights; a base built from another seed is rebuilt. "
            "Without it the home's base is kept (seed 0 for a new one).",
        ),
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Rebuild even if it exists.")] = False,
    home: HomeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Build the embedded base model under <home>/base/<size>/ (reused if it exists)."""
    from learning.models.tinybase import ensure_base

    info = ensure_base(
        Store(home),
        size,
        seed=seed,
        force=force,
        log=None if as_json else (lambda m: console.print(m, highlight=False)),
    )

    def show(i: Any) -> None:
        built = "built" if i.built else "already there"
        console.print(
            f"base [bold]{i.size}[/] {built}: {i.path} ({i.parameters:,} parameters, "
            f"pretraining loss {fmt(i.final_loss)}, build {fmt(i.build_s, 1)} s)",
            highlight=False,
        )

    emit(info, as_json, show)


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
    home: HomeOpt = None,
    seed: Annotated[int, typer.Option(help="Seed of the base model, the tasks and the training.")] = 0,
    as_json: JsonOpt = False,
) -> None:
    """Run the whole loop on the embedded base model and show whether the agent got better.

    Without --home the demo uses a `demo` folder inside the learnloop home, so its runs and
    adapters never mix with yours (with --gateway: a `demo-gateway` folder).
    """
    from learning.home import resolve_home

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
    target = home or str(Path(resolve_home(None)) / ("demo-gateway" if gateway else "demo"))
    config = (QUICK if quick else Config()).model_copy(update={"seed": seed})
    if as_json:
        summary = run(target, quick=quick, config=config, report=lambda *a, **k: None)
    else:
        with StageProgress(err_console, GATEWAY_DEMO_TITLES if gateway else DEMO_TITLES) as progress:
            summary = run(target, quick=quick, config=config, report=progress)
    emit(summary, as_json, gateway_demo_summary if gateway else demo_summary)
    if any(st.status == "failed" for st in summary.stages):
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command()(serve)
    app.command()(gateway)
    app.command("jobs")(jobs_cmd)
    app.command("init-base")(init_base)
    app.command("demo")(demo_cmd)
