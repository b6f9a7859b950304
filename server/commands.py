"""The CLI commands that are not verbs: serve, gateway, dashboard, init-base and jobs (demo: server/demo.py),
and following a job in the terminal. Agents reach the same through the MCP server itself, `job_status`,
`wait_job`, `cancel_job` and `list_jobs`, and train_adapter (which builds the base on first use).
"""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from learning.errors import InvalidInput
from learning.jobs import manage as jobs
from learning.store import Store
from server import render
from server.demo import demo_cmd
from server.terminal import HomeOpt, JsonOpt, PlainLines, console, emit, err_console, fmt

GROUP_HELP = {
    "experiment": "Run a candidate beside production: canary or Thompson sampling.",
    "base": "Bases to train on: import the GGUF that Ollama or llama.cpp serves.",
}


def follow(store: Store, job_id: str, as_json: bool = False) -> jobs.JobStatus:
    """Wait for a job to finish, with a progress bar unless printing JSON (plain lines, each flushed,
    when the output is not a terminal)."""
    if as_json:
        return jobs.follow_job(store, job_id)
    if not console.is_terminal:
        plain = PlainLines(console)
        return jobs.follow_job(
            store, job_id, on_progress=lambda s: plain.line(job_id, f"{s.kind} {s.status}: {_progress_text(s)}")
        )
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
            bar.update(
                task,
                total=p.get("total_steps"),
                completed=p.get("step", 0),
                description=f"{s.kind} {s.status}",
                info=_progress_text(s, steps=False),
            )

        return jobs.follow_job(store, job_id, on_progress=update)


def _progress_text(s: jobs.JobStatus, steps: bool = True) -> str:
    """A job's progress in words: its message, else its stage, loss, speed and ETA (and step)."""
    p = s.progress
    keys = ("stage", "loss", "tokens_per_s", "eta_s")
    info = " ".join(f"{k}={fmt(p[k])}" for k in keys if p.get(k) is not None)
    if steps and p.get("total_steps"):
        info = f"step {p.get('step', 0)}/{p['total_steps']} {info}"
    return p.get("message") or info


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
            help="In process: the base to load (a folder, a hub id, embedded:tiny or embedded:small); default: "
            "the base the production adapters were trained on, else embedded:small (train's default). A production "
            "adapter trained on another base is refused at start. Forwarding: the name the runtime serves the base "
            "under (required for vllm and ollama)."
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
        from learning.gateway.served_base import served_base

        # The base the routed adapters were trained on, checked from the registry (no model loaded).
        chosen = served_base(store, base, log=lambda m: err_console.print(m, markup=False, highlight=False))
        err_console.print(f"base: {chosen.base} ({chosen.reason})", markup=False, highlight=False, soft_wrap=True)
        served: Any = InProcess(chosen.base)
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


def dashboard(
    home: HomeOpt = None,
    host: Annotated[str, typer.Option(help="Bind address; loopback unless you say otherwise.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.")] = 8767,
    token: Annotated[
        str | None,
        typer.Option(
            help="Token a browser opens the dashboard with once, as ?token= (else $LEARNLOOP_TOKEN, else "
            "<home>/http_token); required off loopback."
        ),
    ] = None,
    allow_host: Annotated[
        list[str] | None, typer.Option(help="Another host name browsers may use to reach it (repeatable).")
    ] = None,
) -> None:
    """Run a read-only web dashboard of the loop: runs and rewards, adapters and their lineage, jobs, routing."""
    import uvicorn

    from server.dashboard.app import build_app
    from server.transport import is_loopback, require_known_host, token_for

    store = Store(home)
    secret, source = token_for(store.home, host, token)
    app: Any = require_known_host(build_app(store, secret), host, allow_host or [])
    where = "this machine only" if is_loopback(host) and not source else f"open it once with ?token= from {source}"
    err_console.print(f"learnloop dashboard on http://{host}:{port}/ ({where}).", highlight=False, soft_wrap=True)
    if not is_loopback(host):
        err_console.print(
            f"WARNING: {host} is reachable from other machines: anyone who holds the token can read every run. "
            "Keep the token secret.",
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


def register(app: typer.Typer) -> None:
    app.command()(serve)
    app.command()(gateway)
    app.command()(dashboard)
    app.command("jobs")(jobs_cmd)
    app.command("init-base")(init_base)
    app.command("demo")(demo_cmd)
