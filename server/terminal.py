"""What every CLI screen shares: the consoles, JSON output, number formatting, errors."""

from __future__ import annotations

import json
import re
import sys
import time
from collections.abc import Callable
from typing import Annotated, Any

import typer
from pydantic_core import to_jsonable_python
from rich.console import Console
from rich.markup import escape

HomeOpt = Annotated[
    str | None, typer.Option("--home", envvar="LEARNLOOP_HOME", help="learnloop home folder (default ~/.learnloop).")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the result as JSON (the MCP tool's output).")]
# No emoji codes: ":warning:" in a task key is shown as typed, like any text a caller sent.
console = Console(emoji=False)
err_console = Console(stderr=True, emoji=False)


class PlainLines:
    """Progress as plain lines, for an output that is not a terminal (a file, a pipe, a CI log),
    where a live progress bar shows nothing until it ends. Each line is printed and flushed at
    once: a new kind of message always, the same message with other numbers at most once every
    `every_s` seconds per key."""

    def __init__(self, out: Console, every_s: float = 5.0):
        self.out, self.every_s = out, every_s
        self.last: dict[str, tuple[str, str, float]] = {}  # key -> (text, its shape, time printed)

    def line(self, key: str, text: str, force: bool = False) -> None:
        now = time.monotonic()
        shape = re.sub(r"\d+(?:[.:]\d+)*", "#", text)
        last = self.last.get(key)
        if not force and last is not None:
            if text == last[0] or (shape == last[1] and now - last[2] < self.every_s):
                return
        self.last[key] = (text, shape, now)
        self.out.print(text, markup=False, highlight=False, emoji=False, soft_wrap=True)
        self.out.file.flush()


def emit(result: Any, as_json: bool, render: Callable[[Any], None] | None) -> None:
    """Print a result as JSON (the MCP tool's output) or through its renderer."""
    if as_json or render is None:
        sys.stdout.write(json.dumps(to_jsonable_python(result, by_alias=False), indent=2, ensure_ascii=False) + "\n")
    else:
        render(result)


def fail(message: str, code: int = 1) -> None:
    """Print an error (it may quote a caller's input: shown as text, never as markup) and exit."""
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


# Values a caller sent, into rich markup or a table cell as text (server/render.py).
def esc(value: Any) -> str:
    """str(value) for our markup or a table cell, shown as it is: whatever would open a tag is escaped.

    Unlike rich.markup.escape, which doubles a trailing backslash (it shows twice unless a tag follows),
    trailing backslashes stay as they are: a value right before a tag of ours goes through styled.
    """
    text = str(value)
    body = text.rstrip("\\")
    return escape(body) + text[len(body) :]


def esc_fmt(value: Any, digits: int = 3) -> str:
    """fmt(value), escaped as esc escapes it."""
    return esc(fmt(value, digits))


def styled(value: Any, style: str = "bold") -> str:
    """str(value) in a style of ours, shown as it is (trailing backslashes doubled: none escapes the `[/]`)."""
    text = str(value)
    body = text.rstrip("\\")
    return f"[{style}]{escape(body)}{text[len(body) :] * 2}[/]"
