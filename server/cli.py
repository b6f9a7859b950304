"""The learnloop CLI: one command per verb of server/catalog.py, built from the verb's declaration,
plus the commands only a person needs (serve, demo, init-base, jobs) in server/commands.py.

Every command takes --home and --json (which prints the model the MCP tool returns).
"""

from __future__ import annotations

import json
import sys
import types
import typing
from collections.abc import Callable
from typing import Annotated, Any, Literal, Optional, Union

import typer
from pydantic import BaseModel, ValidationError, create_model
from rich.markup import escape

from learning.errors import LearnloopError, check
from learning.store import Store
from server import commands, render
from server.catalog import VERBS
from server.terminal import HomeOpt, JsonOpt, console, emit, err_console, fail
from server.verbs import Argument, CliShape, Verb, arguments, call, consent_summary, signed

SIMPLE = (str, int, float, bool)
YES = typer.Option("--yes", "-y", help="Do it without asking for confirmation.")
WAIT = typer.Option("--wait/--no-wait", help="Follow the job in the terminal until it ends.")


def _parsed_as(arg: Argument) -> tuple[Any, bool]:
    """The type typer parses an argument's text as, and whether that text is JSON (an object, a
    list of objects, a model). Choices, dates and paths stay text: checked after (_validated)."""
    t = arg.type
    if typing.get_origin(t) in (Union, types.UnionType):  # X | None: the CLI passes None by leaving it out
        members = [m for m in typing.get_args(t) if m is not type(None)]
        t = members[0] if len(members) == 1 else str
    if t in SIMPLE or (typing.get_origin(t) is list and typing.get_args(t)[0] in SIMPLE):
        return t, False
    model = isinstance(t, type) and issubclass(t, BaseModel)
    return str, model or t in (dict, Any) or typing.get_origin(t) in (dict, list)


def _choices(t: Any) -> tuple | None:
    """The values of a Literal (possibly optional), or None."""
    for member in (t, *typing.get_args(t)):
        if typing.get_origin(member) is Literal:
            return typing.get_args(member)
    return None


def _option(shape: CliShape, arg: Argument) -> tuple[str, Any, Any]:
    """The typer parameter (name, annotation, default) for one declared argument."""
    if arg.name == "confirm":  # a person's consent: --yes on a terminal
        return "confirm", Annotated[bool, YES], False
    t, _ = _parsed_as(arg)
    help_text = arg.info.description or ""
    if (choices := _choices(arg.type)) is not None:
        help_text += f" One of: {', '.join(map(str, choices))}."
    default = None if arg.required and arg.name in shape.stdin else arg.default  # None: read from stdin
    if default is None:
        t = Optional[t]  # noqa: UP045 - a type built at run time, possibly a Literal
    if arg.name in shape.arguments:
        marker = typer.Argument(help=help_text + (" '-' reads stdin." if arg.name in shape.stdin else ""))
    else:
        names = [f"--{arg.name.replace('_', '-')}", *shape.aliases.get(arg.name, ())]
        if t is bool:
            names = [f"{n}/--no-{n[2:]}" if n.startswith("--") else n for n in names]  # a switch both ways
        marker = typer.Option(*names, help=help_text)
    return arg.name, Annotated[t, marker], default


def _checked_type(arg: Argument) -> Any:
    """What the CLI checks before the call: the declaration, except that a choice among names is
    left to the library, whose error says which names are valid."""
    if _choices(arg.type) is None:
        return arg.annotation
    loose: Any = str if arg.required else Optional[str]  # noqa: UP045 - a type built at run time
    return Annotated[loose, arg.info]


def _validated(verb: Verb, args: list[Argument], values: dict[str, Any]) -> dict[str, Any]:
    """Decode JSON arguments and check every argument against its declaration; all problems at once."""
    problems = []
    for arg in args:
        if _parsed_as(arg)[1] and isinstance(values.get(arg.name), str):
            try:
                values[arg.name] = json.loads(values[arg.name])
            except json.JSONDecodeError as exc:
                problems.append(
                    f"--{arg.name.replace('_', '-')} must be JSON, e.g. '{{\"compiled\": true}}' ({exc.msg})"
                )
    check(problems, "Invalid arguments:")
    if verb.request is not None:  # the request model checks everything itself
        return values
    fields: dict[str, Any] = {a.name: (_checked_type(a), ... if a.required else a.default) for a in args}
    model = create_model(f"{verb.command}_arguments", **fields)
    try:
        checked = model.model_validate({k: v for k, v in values.items() if k in fields})
    except ValidationError as exc:
        check(
            [f"{e['loc'][0]} (--{str(e['loc'][0]).replace('_', '-')}): {e['msg']}" for e in exc.errors()],
            "Invalid arguments:",
        )
        raise
    return {a.name: getattr(checked, a.name) for a in args if a.name in values}


def _ask(verb: Verb, store: Store, values: dict[str, Any], as_json: bool) -> bool:
    """Show what changes in production and ask; refuse without a terminal unless --yes."""
    summary = consent_summary(verb, store, values)
    if summary is None or values.get("confirm"):
        return True
    if not sys.stdin.isatty():
        fail(
            summary + "\nThis changes which adapter agents get; there is no terminal to confirm on. "
            "Run it again with --yes to confirm."
        )
    (err_console if as_json else console).print(summary, highlight=False)  # stdout stays JSON with --json
    if not typer.confirm("Go ahead?", default=False, err=as_json):
        result = verb.refused("declined", summary) if verb.refused else None
        if result is None:
            console.print("[yellow]declined[/]: nothing changed.")
        else:
            emit(result, as_json, _renderer(verb))
        return False
    values["confirm"] = True
    return True


def _renderer(verb: Verb) -> Callable[[Any], None] | None:
    return getattr(render, verb.cli.render) if verb.cli.render else None


def _read_stdin(shape: CliShape, values: dict[str, Any]) -> dict[str, Any]:
    for name in shape.stdin:
        if values.get(name) in (None, "-"):
            values[name] = sys.stdin.read()
    return values


def add_command(app: typer.Typer, groups: dict[str, typer.Typer], verb: Verb) -> None:
    args, shape = arguments(verb), verb.cli
    positional_first = sorted(args, key=lambda a: a.name not in shape.arguments)
    params = [_option(shape, a) for a in positional_first]
    params += [(n, Annotated[t, typer.Option(help=h)], d) for n, (t, d, h) in shape.extras.items()]
    if shape.follow is not None:
        params.append(("wait", Annotated[bool, WAIT], shape.follow))
    params += [("home", HomeOpt, None), ("as_json", JsonOpt, False)]

    def command(**values: Any) -> None:
        home, as_json, wait = values.pop("home"), values.pop("as_json"), values.pop("wait", False)
        if shape.prepare is not None:
            values = shape.prepare(values)
        values = _validated(verb, args, _read_stdin(shape, values))
        store = Store(home)
        if verb.consent is not None and not _ask(verb, store, values, as_json):
            return
        result = call(verb, store, values, actor="cli", stdin=sys.stdin.buffer)
        if not wait or getattr(result, "job_id", None) is None:
            emit(result, as_json, _renderer(verb))
            return
        commands.follow_to_the_end(store, result, as_json, verb.tool)

    signed(command, params)
    command.__doc__ = verb.doc
    group, _, name = (verb.command or "").rpartition(" ")
    if group and group not in groups:
        groups[group] = typer.Typer(help=commands.GROUP_HELP.get(group), no_args_is_help=True, rich_markup_mode=None)
        app.add_typer(groups[group], name=group)
    (groups[group] if group else app).command(name)(command)


def build_app() -> typer.Typer:
    app = typer.Typer(
        name="learnloop",
        help="Let coding agents improve their own local model from experience.",
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
        rich_markup_mode=None,  # help is plain text: `learnloop/<role>[/<task_type>]` is not markup
    )
    groups: dict[str, typer.Typer] = {}
    commands.register(app)
    for verb in VERBS:
        if verb.command is not None:
            add_command(app, groups, verb)
    return app


app = build_app()


def main() -> None:
    try:
        app()
    except LearnloopError as exc:
        # the message may quote what a caller sent (a task key, an id): shown as text, never as markup
        err_console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        sys.exit(1)
    except KeyboardInterrupt:
        err_console.print("interrupted")
        sys.exit(130)
