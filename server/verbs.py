"""How a verb's declaration in the library becomes an MCP tool and a CLI command.

A verb is one library function (or a request model and the function that takes it). Its
parameters annotated `Annotated[type, Field(description=..., limits)]` are the verb's
arguments, declared once; both faces are built from them, so names, defaults, limits and
required-ness agree by construction (tests/test_faces.py checks the built tool and command).
Parameters without a Field (a Store, an actor, a stream) are not arguments: the catalog's row
says which of them a face passes (`actor=True`, `CliShape(stdin_stream=True)`).
An argument declared with learning.params.CLI_ONLY is the CLI's only: the tool leaves it out.

The table of verbs, with how each face shows it, is server/catalog.py.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO, Any, Literal

from pydantic import BaseModel, Field, Strict
from pydantic.fields import FieldInfo

Effect = Literal["read", "append", "job", "destructive", "runtime"]
REQUIRED = inspect.Parameter.empty  # the default of a required argument


@dataclass(frozen=True)
class CliShape:
    """How the CLI shows a verb, where it differs from one `--option` per argument."""

    arguments: tuple[str, ...] = ()  # positional, in this order
    aliases: dict[str, tuple[str, ...]] = field(default_factory=dict)  # older option spellings kept working
    stdin: tuple[str, ...] = ()  # text arguments where '-' (or nothing, for a required one) reads stdin
    stdin_stream: bool = False  # fn takes stdin=: the stream it reads itself for a file argument of '-'
    follow: bool | None = None  # starts a job: --wait/--no-wait with this default follows it in the terminal
    # CLI-only options: name -> (type, default, help); `prepare` folds them into the verb's arguments.
    extras: dict[str, tuple[Any, Any, str]] = field(default_factory=dict)
    prepare: Callable[[dict[str, Any]], dict[str, Any]] | None = None
    render: str | None = None  # a screenful: a function of server/render.py; None prints the JSON


@dataclass(frozen=True, kw_only=True)
class Verb:
    fn: Callable[..., Any]  # fn(store, **arguments), or fn(store, request_dict) with `request`
    tool: str | None  # MCP tool name (None: CLI only)
    command: str | None  # CLI command name, "group sub" for a sub-command (None: MCP only)
    title: str
    effect: Effect = "read"
    request: type[BaseModel] | None = None  # the arguments are this model's fields
    actor: bool = False  # fn takes actor=: which face asked ("mcp", "cli"), kept in the history
    # For verbs that can change production: what a person must agree to (None: nothing), from
    # the verb's own arguments. The library refuses the change without confirm=True.
    consent: Callable[..., str | None] | None = None
    # What a refused change returns (MCP elicitation declined/cancelled); None: an error.
    refused: Callable[[str, str], Any] | None = None
    cli: CliShape = field(default_factory=CliShape)

    @property
    def doc(self) -> str:
        return inspect.cleandoc(self.fn.__doc__ or self.title)

    @property
    def returns(self) -> Any:
        return typing.get_type_hints(self.fn).get("return")


@dataclass(frozen=True)
class Argument:
    name: str
    annotation: Any  # Annotated[type, FieldInfo]
    info: FieldInfo
    default: Any  # REQUIRED when required

    @property
    def required(self) -> bool:
        return self.default is REQUIRED

    @property
    def cli_only(self) -> bool:
        """Declared with learning.params.CLI_ONLY: the MCP tool leaves it out."""
        extra = self.info.json_schema_extra
        return isinstance(extra, dict) and extra.get("cli_only") is True

    @property
    def type(self) -> Any:
        return (
            typing.get_args(self.annotation)[0]
            if typing.get_origin(self.annotation) is typing.Annotated
            else self.annotation
        )


def arguments(verb: Verb) -> list[Argument]:
    """The verb's arguments, in declaration order: the parameters that carry a pydantic Field."""
    if verb.request is not None:
        out = []
        for name, model_info in verb.request.model_fields.items():
            info = Field(description=model_info.description)
            annotation: Any = model_info.annotation
            if model_info.is_required():
                default = REQUIRED
            elif model_info.default_factory is not None:  # an empty object or list: absent means the same
                default, annotation = None, annotation | None
            else:
                default = model_info.default
            # The request model checks its limits itself, with messages that name each field.
            # A number stays a number: no true for 1.0, no "0.5" for 0.5.
            hint = (
                typing.Annotated[annotation, info, Strict()]
                if annotation in (float, float | None)
                else typing.Annotated[annotation, info]
            )
            out.append(Argument(name, hint, info, default))
        return out
    hints = typing.get_type_hints(verb.fn, include_extras=True)
    out = []
    for name, param in inspect.signature(verb.fn).parameters.items():
        hint = hints.get(name)
        if typing.get_origin(hint) is not typing.Annotated:
            continue
        info = next((m for m in typing.get_args(hint)[1:] if isinstance(m, FieldInfo)), None)
        if info is not None:
            out.append(Argument(name, hint, info, param.default))
    return out


def tool_arguments(verb: Verb) -> list[Argument]:
    """The arguments the MCP tool takes: all but the CLI-only ones, which must have a default."""
    args = arguments(verb)
    required = [a.name for a in args if a.cli_only and a.required]
    if required:
        raise TypeError(f"{verb.tool}: CLI-only arguments need a default: {', '.join(required)}")
    return [a for a in args if not a.cli_only]


def call(verb: Verb, store: Any, values: dict[str, Any], actor: str, stdin: IO[bytes] | None = None) -> Any:
    """Call the verb's library function with the arguments a face collected, plus the context
    its row declares."""
    if verb.request is not None:
        return verb.fn(store, {k: v for k, v in values.items() if v is not None})
    context: dict[str, Any] = {"actor": actor} if verb.actor else {}
    if verb.cli.stdin_stream:
        context["stdin"] = stdin
    return verb.fn(store, **values, **context)


def consent_summary(verb: Verb, store: Any, values: dict[str, Any]) -> str | None:
    """What a person must agree to before this call, or None."""
    if verb.consent is None:
        return None
    accepted = inspect.signature(verb.consent).parameters
    return verb.consent(store, **{k: v for k, v in values.items() if k in accepted})


def signed(fn: Callable[..., Any], params: list[tuple[str, Any, Any]], returns: Any = inspect.Signature.empty) -> Any:
    """Give fn(**values) keyword parameters (name, annotation, default): the MCP SDK and typer
    both build a tool or a command from a function's signature."""
    fn.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, annotation=a, default=d) for n, a, d in params],
        return_annotation=returns,
    )
    fn.__annotations__ = {n: a for n, a, _ in params}
    if returns is not inspect.Signature.empty:
        fn.__annotations__["return"] = returns
    return fn
