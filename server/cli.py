"""The learnloop CLI: the same verbs as the MCP tools, for people and cron.

Every command takes --home and --json (which prints the model the MCP tool returns).
Commands are declared by the server/cli_*.py modules; this module holds what they share.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any, Optional

import typer
from pydantic import BaseModel
from rich.console import Console
from typing_extensions import Annotated

from learning.errors import LearnloopError

app = typer.Typer(
    name="learnloop",
    help="Let coding agents improve their own local model from experience.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
err_console = Console(stderr=True)

HomeOpt = Annotated[Optional[str], typer.Option("--home", envvar="LEARNLOOP_HOME",
                                                 help="learnloop home folder (default ~/.learnloop).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the result as JSON (the MCP tool's output).")]


def to_jsonable(result: Any) -> Any:
    if isinstance(result, BaseModel):
        return result.model_dump(mode="json")
    if isinstance(result, list):
        return [to_jsonable(r) for r in result]
    if isinstance(result, dict):
        return {k: to_jsonable(v) for k, v in result.items()}
    return result


def emit(result: Any, as_json: bool, render: Callable[[Any], None]) -> None:
    """Print a result as JSON or through its rich renderer."""
    if as_json:
        sys.stdout.write(json.dumps(to_jsonable(result), indent=2, ensure_ascii=False) + "\n")
    else:
        render(result)


def fail(message: str, code: int = 1) -> None:
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _register_commands() -> None:
    from server import (cli_cycle, cli_datasets, cli_demo, cli_jobs, cli_lifecycle, cli_routing, cli_runs,
                        cli_serving, cli_train)

    for module in (cli_runs, cli_jobs, cli_datasets, cli_train, cli_lifecycle, cli_routing, cli_serving, cli_cycle,
                   cli_demo):
        module.register(app)


_register_commands()


def main() -> None:
    try:
        app()
    except LearnloopError as exc:
        err_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(1)
    except KeyboardInterrupt:
        err_console.print("interrupted")
        sys.exit(130)
