"""The learnloop CLI: one command per verb of server/catalog.py, built from the verb's declaration,
plus the commands only a person needs (serve, demo, init-base, jobs) in server/commands.py.

Every command takes --home and --json (which prints the model the MCP tool returns).
"""

from __future__ import annotations

import inspect
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
from server.verbs import Argument, Verb, arguments, call, consent_summary

SIMPLE = (str, int, float, bool)


def _is_json(t: Any) -> bool:
    """Arguments the CLI takes as JSON text: objects, lists of objects, models."""
    origin = typing.get_origin(t)
    return (
        t is dict
        or origin is dict
        or t is Any
        or (isinstance(t, type) and issubclass(t, BaseModel))
        or (origin is list and typing.get_args(t)[0] not in SIMPLE)
    )


def _cli_type(arg: Argument) -> tuple[Any, bool]:
    """The type typer parses an argument as, and whether the text is JSON to decode."""
    t = arg.type
    if typing.get_origin(t) in (Union, types.UnionType):  # X | None: the CLI passes None by leaving it out
        members = [m for m in typing.get_args(t) if m is not type(None)]
        t = members[0] if len(members) == 1 else str
    if _is_json(t):
        return str, True
    if typing.get_origin(t) is Literal:  # the library names the valid choices in its own error
        return str, False
    if t in SIMPLE or typing.get_origin(t) is list:
        return t, False
    return str, False  # datetimes, paths: pydantic parses the text


def _parameter(verb: Verb, arg: Argument) -> inspect.Parameter:
    shape = verb.cli
    t, _ = _cli_type(arg)
    help_text = arg.info.description or ""
    if (choices := _choices(arg.type)) is not None:
        help_text += f" One of: {', '.join(map(str, choices))}."
    if arg.name == "confirm":  # a person's consent: --yes on a terminal
        return inspect.Parameter(
            "confirm",
            inspect.Parameter.KEYWORD_ONLY,
            default=False,
            annotation=Annotated[bool, typer.Option("--yes", "-y", help="Do it without asking for confirmation.")],
        )
    if arg.required and arg.name not in shape.stdin:
        default: Any = inspect.Parameter.empty
    else:
        default = None if arg.required else arg.default
        if default is None:
            t = Optional[t]  # noqa: UP045 - a type built at run time, possibly a Literal
    if arg.name in shape.arguments:
        marker = typer.Argument(help=help_text + (" '-' reads stdin." if arg.name in shape.stdin else ""))
    else:
        names = [f"--{arg.name.replace('_', '-')}", *shape.aliases.get(arg.name, ())]
        if t is bool:
            names = [f"{n}/--no-{n[2:]}" if n.startswith("--") else n for n in names]  # a switch both ways
        marker = typer.Option(*names, help=help_text)
    return inspect.Parameter(arg.name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=Annotated[t, marker])


def _choices(t: Any) -> tuple | None:
    """The values of a Literal (possibly optional), or None."""
    for member in (t, *typing.get_args(t)):
        if typing.get_origin(member) is Literal:
            return typing.get_args(member)
    return None


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
        if _cli_type(arg)[1] and isinstance(values.get(arg.name), str):
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


def _stdin(verb: Verb, values: dict[str, Any]) -> dict[str, Any]:
    for name in verb.cli.stdin:
        if name == "path":
            continue  # a file argument: the library reads stdin itself for '-'
        if values.get(name) in (None, "-"):
            values[name] = sys.stdin.read()
    return values


def add_command(app: typer.Typer, groups: dict[str, typer.Typer], verb: Verb) -> None:
    args = arguments(verb)
    shape = verb.cli
    params = [_parameter(verb, a) for a in sorted(args, key=lambda a: a.name not in shape.arguments)]
    params += [
        inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, default=d, annotation=Annotated[t, typer.Option(help=h)])
        for n, (t, d, h) in shape.extras.items()
    ]
    if shape.follow is not None:
        params.append(
            inspect.Parameter(
                "wait",
                inspect.Parameter.KEYWORD_ONLY,
                default=shape.follow,
                annotation=Annotated[
                    bool, typer.Option("--wait/--no-wait", help="Follow the job in the terminal until it ends.")
                ],
            )
        )
    params += [
        inspect.Parameter("home", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=HomeOpt),
        inspect.Parameter("as_json", inspect.Parameter.KEYWORD_ONLY, default=False, annotation=JsonOpt),
    ]

    def command(**values: Any) -> None:
        home, as_json, wait = values.pop("home"), values.pop("as_json"), values.pop("wait", False)
        if shape.prepare is not None:
            values = shape.prepare(values)
        values = _validated(verb, args, _stdin(verb, values))
        store = Store(home)
        if verb.consent is not None and not _ask(verb, store, values, as_json):
            return
        result = call(verb, store, values, actor="cli", stdin=sys.stdin.buffer)
        job_id = getattr(result, "job_id", None)
        if not wait or job_id is None:
            emit(result, as_json, _renderer(verb))
            return
        commands.follow_to_the_end(store, result, as_json, verb.tool)

    command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    command.__annotations__ = {p.name: p.annotation for p in params}
    command.__doc__ = verb.doc
    name = verb.command or ""
    if " " in name:
        group, name = name.split(" ", 1)
        if group not in groups:
            groups[group] = typer.Typer(
                help=commands.GROUP_HELP.get(group), no_args_is_help=True, rich_markup_mode=None
            )
            app.add_typer(groups[group], name=group)
        groups[group].command(name)(command)
    else:
        app.command(name)(command)


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
