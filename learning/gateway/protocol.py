"""Reading the OpenAI requests the gateway receives.

A request is read into a `Call`: where it goes (the model name, parsed by `route_of`, and the
metadata), what the gateway itself must know to record and score it (the messages or the
prompt, `stream`, `metadata.tests`), and the body as sent. Only those fields are checked;
every other field (n, stop, logprobs, tools, tool_choice, response_format, seed, image parts,
any runtime's own extensions) passes to the runtime untouched, and the runtime's limits apply
(max_tokens, the context length, the number of stop strings). Anything malformed raises
`BadRequest`, which the app answers with a 400 and an OpenAI error object, before any work; it is
never recorded as a run.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Literal

from learning.runs.schema import test_problems

DEFAULT_MAX_TOKENS = 256  # the in-process backend's, as OpenAI's own default is "until the context ends"
MODEL_PREFIX = "learnloop/"
ROUTE_HEADERS = ("task-type", "complexity", "task-key")
CHAT_ROLES = ("system", "developer", "user", "assistant", "tool")


class BadRequest(Exception):
    """A request the gateway, its backend or the model refuses: answered 400 (or the runtime's
    own 4xx, with the runtime's error object as `body`), not recorded."""

    def __init__(self, message: str, param: str | None = None, status: int = 400, body: dict | None = None):
        super().__init__(message)
        self.param, self.status, self.body = param, status, body


@dataclass
class Route:
    """Where a `learnloop/<role>[/<task_type>]` model name (and the request's metadata) sends a call."""

    role: str
    task_type: str | None = None
    complexity: str | None = None
    task_key: str | None = None


@dataclass
class Call:
    kind: Literal["chat", "completion"]
    model: str
    messages: list[dict[str, Any]] = field(default_factory=list)  # as sent, content made text where it was parts
    prompt: str = ""
    max_tokens: int | None = None  # None: the backend's default
    temperature: float | None = None
    stop: list[str] = field(default_factory=list)
    n: int = 1
    tools: list[dict[str, Any]] | None = None
    stream: bool = False
    include_usage: bool = False
    route: Route | None = None
    tests: list[str] = field(default_factory=list)  # metadata.tests: the gateway scores the answer
    body: dict[str, Any] = field(default_factory=dict)  # as sent, for forwarding


@dataclass
class Generation:
    """What the in-process backend generated (a forwarded answer stays the runtime's object)."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str = "stop"


def error_body(message: str, kind: str = "invalid_request_error", param: str | None = None, code: str | None = None):
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def text_of(content: Any) -> str:
    """A message's content as text: a string as it is, text parts joined, other parts (images,
    audio, files) named in brackets, None empty."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            part["text"] if part.get("type") == "text" else f"[{part.get('type')}]"
            for part in content
            if isinstance(part, dict)
        )
    return ""


def _message(m: Any, i: int) -> dict[str, Any]:
    where = f"messages[{i}]"
    if not isinstance(m, dict) or not isinstance(m.get("role"), str):
        raise BadRequest(f"{where} must be an object with a 'role' string.", where)
    if m["role"] not in CHAT_ROLES:
        raise BadRequest(f"{where}.role {m['role']!r} is not a chat role.", f"{where}.role")
    content = m.get("content")
    if content is None and not (m["role"] == "assistant" and m.get("tool_calls")):
        content = ""
    if isinstance(content, list):
        for j, part in enumerate(content):
            if not isinstance(part, dict) or not isinstance(part.get("type"), str):
                raise BadRequest(f"{where}.content[{j}] must be a content part with a 'type'.", f"{where}.content")
            if part["type"] == "text" and not isinstance(part.get("text"), str):
                raise BadRequest(f"{where}.content[{j}].text must be a string.", f"{where}.content")
    elif content is not None and not isinstance(content, str):
        raise BadRequest(f"{where}.content must be a string or a list of content parts.", f"{where}.content")
    calls = m.get("tool_calls")
    if calls is not None and not (isinstance(calls, list) and all(isinstance(c, dict) for c in calls)):
        raise BadRequest(f"{where}.tool_calls must be a list of objects.", f"{where}.tool_calls")
    role = "system" if m["role"] == "developer" else m["role"]  # what chat templates know
    return {**m, "role": role, "content": content}


def _messages(value: Any) -> list[dict[str, Any]]:
    if not isinstance(value, list) or not value:
        raise BadRequest("'messages' must be a non-empty list of {role, content} objects.", "messages")
    return [_message(m, i) for i, m in enumerate(value)]


def _stop(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(s, str) for s in value):
        return list(value)
    raise BadRequest("'stop' must be a string or a list of strings.", "stop")


def _number(body: dict, name: str, low: float, high: float | None = None, integer: bool = False) -> Any:
    value = body.get(name)
    if value is None:
        return None
    ok = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok or value < low or (high is not None and value > high):
        kind = "an integer" if integer else "a number"
        span = f"from {low:g} to {high:g}" if high is not None else f"of at least {low:g}"
        raise BadRequest(f"'{name}' must be {kind} {span}, got {value!r}.", name)
    return value


def check_text(raw: bytes, body: Any) -> None:
    """Refuse what cannot be stored or forwarded as UTF-8: a lone surrogate (\\ud800) escaped in the JSON."""
    if b"\\ud" in raw.lower():  # only escapes can make one; a cheap test before the full one
        try:
            json.dumps(body, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise BadRequest("The body holds a lone surrogate (e.g. \\ud800): send valid Unicode text.") from None


def read_call(raw: bytes, kind: Literal["chat", "completion"], headers: dict[str, str]) -> Call:
    """The call a request body asks for; BadRequest naming the field when it is malformed."""
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise BadRequest(f"The body is not valid JSON ({exc}).") from None
    if not isinstance(body, dict):
        raise BadRequest("The body must be a JSON object.")
    check_text(raw, body)
    model = body.get("model")
    if not isinstance(model, str) or not model.strip():
        raise BadRequest(
            "'model' is required: learnloop/<role>, learnloop/<role>/<task_type>, or a model name.", "model"
        )
    call = Call(kind=kind, model=model, body=body)
    if kind == "chat":
        call.messages = _messages(body.get("messages"))
    else:
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1:
            prompt = prompt[0]
        if not isinstance(prompt, str):
            raise BadRequest("'prompt' must be a string (one prompt per request).", "prompt")
        call.prompt = prompt
    tokens = _number(body, "max_completion_tokens", 1, integer=True) or _number(body, "max_tokens", 1, integer=True)
    call.max_tokens = tokens
    call.temperature = _number(body, "temperature", 0, 2)
    call.stop = _stop(body.get("stop"))
    call.n = _number(body, "n", 1, 128, integer=True) or 1
    tools = body.get("tools")
    if tools is not None and not (isinstance(tools, list) and all(isinstance(t, dict) for t in tools)):
        raise BadRequest("'tools' must be a list of tool objects.", "tools")
    call.tools = tools or None
    call.stream = bool(body.get("stream", False))
    options = body.get("stream_options")
    call.include_usage = isinstance(options, dict) and bool(options.get("include_usage"))
    call.route = route_of(model, body.get("metadata"), headers)
    call.tests = tests_of(body.get("metadata"))
    return call


def tests_of(metadata: Any) -> list[str]:
    """metadata.tests: Python statements (e.g. 'assert add(1, 2) == 3') the answer's code must pass;
    the gateway runs them in the sandbox after answering and records the share passed."""
    tests = metadata.get("tests") if isinstance(metadata, dict) else None
    if tests is None:
        return []
    if not isinstance(tests, list) or not tests or not all(isinstance(t, str) for t in tests):
        raise BadRequest("metadata.tests must be a non-empty list of Python statements (strings).", "metadata.tests")
    problems = test_problems(tests)
    if problems:
        raise BadRequest(f"metadata.tests cannot be run: {'; '.join(problems)}.", "metadata.tests")
    return tests


def route_of(model: str, metadata: Any, headers: dict[str, str]) -> Route | None:
    """The route a model name asks for (None: a plain model name, passed through unrouted).
    task_type, complexity and task_key may also come from the request's metadata or the
    x-learnloop-task-type / -complexity / -task-key headers; the model name's task type wins."""
    if not model.startswith(MODEL_PREFIX):
        return None
    parts = model[len(MODEL_PREFIX) :].split("/")
    if len(parts) > 2 or not all(parts):
        raise BadRequest("The model must be learnloop/<role> or learnloop/<role>/<task_type>.", "model")
    meta = metadata if isinstance(metadata, dict) else {}
    extra = {}
    for name in ROUTE_HEADERS:
        key = name.replace("-", "_")
        value = meta.get(key, headers.get(f"x-learnloop-{name}"))
        if value is not None and not isinstance(value, str):
            raise BadRequest(f"metadata.{key} must be a string.", f"metadata.{key}")
        extra[key] = value or None
    return Route(
        role=parts[0],
        task_type=parts[1] if len(parts) == 2 else extra["task_type"],
        complexity=extra["complexity"],
        task_key=extra["task_key"],
    )
