"""CLI commands for the server and runs: serve, log, import, stats."""

from __future__ import annotations

import json
import sys
from typing import Optional

import typer
from rich.table import Table
from typing_extensions import Annotated

from learning.runs import record as runs
from learning.runs import stats as runstats
from learning.errors import InvalidInput
from learning.store import Store
from server.cli import HomeOpt, JsonOpt, console, emit, fmt


def _json_object(text: str | None, name: str) -> dict | None:
    if text is None:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidInput(f"--{name} must be a JSON object, e.g. '{{\"compiled\": true}}' ({exc.msg}).") from exc
    if not isinstance(value, dict):
        raise InvalidInput(f"--{name} must be a JSON object, e.g. '{{\"compiled\": true}}'.")
    return value


def register(app: typer.Typer) -> None:
    @app.command()
    def serve(
        home: HomeOpt = None,
        transport: Annotated[str, typer.Option(help="stdio (default) or http (streamable HTTP).")] = "stdio",
        host: Annotated[str, typer.Option(help="HTTP bind address; loopback unless you say otherwise.")] = "127.0.0.1",
        port: Annotated[int, typer.Option(help="HTTP port.")] = 8765,
    ) -> None:
        """Run the MCP server (stdio by default)."""
        from server.mcp import serve as run_server

        if transport not in ("stdio", "http"):
            raise InvalidInput(f"--transport must be stdio or http, got {transport!r}.")
        run_server(home, "stdio" if transport == "stdio" else "http", host, port)

    @app.command("log")
    def log_cmd(
        role: Annotated[str, typer.Option(help="coder, fixer, judge, or any lower-case name.")],
        reward: Annotated[float, typer.Option(help="A number in [0, 1].")],
        output: Annotated[Optional[str], typer.Option(help="What the agent produced; '-' reads stdin.")] = None,
        instruction: Annotated[str, typer.Option(help="The task.")] = "",
        input: Annotated[str, typer.Option("--input", help="Extra input (code to fix, diagnostics).")] = "",
        agent: Annotated[str, typer.Option(help="Which agent ran it.")] = "agent",
        task_type: Annotated[Optional[str], typer.Option(help="Kind of task.")] = None,
        complexity: Annotated[Optional[str], typer.Option(help="easy, medium, hard, or free text.")] = None,
        task_key: Annotated[Optional[str], typer.Option(help="Groups attempts at one task.")] = None,
        signals: Annotated[Optional[str], typer.Option(help='JSON object, e.g. \'{"compiled": true}\'.')] = None,
        model: Annotated[Optional[str], typer.Option(help="What served the run.")] = None,
        adapter_id: Annotated[Optional[str], typer.Option(help="Adapter that produced it.")] = None,
        decision_id: Annotated[Optional[str], typer.Option(help="decision_id from select.")] = None,
        meta: Annotated[Optional[str], typer.Option(help="JSON object of free metadata.")] = None,
        home: HomeOpt = None,
        as_json: JsonOpt = False,
    ) -> None:
        """Record one run and its reward."""
        if output is None or output == "-":
            output = sys.stdin.read()
        data = dict(role=role, reward=reward, output=output, instruction=instruction, input=input, agent=agent,
                    task_type=task_type, complexity=complexity, task_key=task_key,
                    signals=_json_object(signals, "signals"), model=model, adapter_id=adapter_id,
                    decision_id=decision_id, meta=_json_object(meta, "meta"))
        result = runs.log_run(Store(home), {k: v for k, v in data.items() if v is not None})
        emit(result, as_json, lambda r: console.print(f"logged run [bold]{r.run_id}[/] (task_key {r.task_key})"))

    @app.command("import")
    def import_cmd(
        file: Annotated[str, typer.Argument(help="JSONL file, one run per line; '-' reads stdin.")],
        skip_invalid: Annotated[bool, typer.Option(help="Skip bad lines instead of stopping.")] = False,
        start_line: Annotated[int, typer.Option(help="First line to read (resume after a fix).")] = 1,
        batch_size: Annotated[int, typer.Option(help="Runs per transaction.")] = runs.IMPORT_BATCH,
        home: HomeOpt = None,
        as_json: JsonOpt = False,
    ) -> None:
        """Import runs from JSONL. A batch with a bad line is never half written."""
        source = sys.stdin.buffer if file == "-" else file
        result = runs.import_runs(Store(home), source, batch_size=batch_size, skip_invalid=skip_invalid,
                                  start_line=start_line)

        def render(r: runs.ImportResult) -> None:
            console.print(f"imported [bold]{r.imported}[/] runs from {r.lines} lines in {r.seconds:.2f}s"
                          + (f", skipped {r.skipped} bad lines" if r.skipped else ""))
            for e in r.errors[:10]:
                console.print(f"  line {e.line}: {e.error}", highlight=False)

        emit(result, as_json, render)

    @app.command()
    def stats(
        role: Annotated[Optional[str], typer.Option(help="Only this role.")] = None,
        adapter_id: Annotated[Optional[str], typer.Option(help="Only this adapter.")] = None,
        agent: Annotated[Optional[str], typer.Option(help="Only this agent.")] = None,
        since: Annotated[Optional[str], typer.Option(help="Window start (ISO 8601).")] = None,
        until: Annotated[Optional[str], typer.Option(help="Window end (ISO 8601).")] = None,
        days: Annotated[Optional[float], typer.Option(help="The last N days.")] = None,
        by: Annotated[str, typer.Option(help="role, adapter, role_adapter or none.")] = "role",
        home: HomeOpt = None,
        as_json: JsonOpt = False,
    ) -> None:
        """Counts, mean reward, compile rate, test pass rate, mean iterations."""
        result = runstats.run_stats(Store(home), role=role, adapter_id=adapter_id, agent=agent, since=since,
                                until=until, days=days, group_by=by)

        def render(r: runstats.RunStats) -> None:
            table = Table(title=f"{r.total_runs} runs")
            for col in ("role", "adapter", "runs", "mean reward", "compile rate", "test pass rate",
                        "mean iterations", "last run"):
                table.add_column(col)
            for g in r.groups:
                table.add_row(fmt(g.role), fmt(g.adapter_id or ("base" if "adapter_id" in r.group_by else None)),
                              str(g.runs), fmt(g.mean_reward), fmt(g.compile_rate), fmt(g.test_pass_rate),
                              fmt(g.mean_iterations, 1), fmt(g.last_time))
            console.print(table)

        emit(result, as_json, render)
