"""The OpenAI wire format the gateway speaks: reading a request, and writing answers, stream
chunks and error objects.

A request is read into a `Call`: what to generate (chat messages or a prompt), how (max_tokens,
temperature, stop), and where it goes (the model name, parsed by `route_of`). Anything malformed
raises `BadRequest`, which the app answers with a 400 and an OpenAI error object; it is never
recorded as a run.
"""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import dataclass, field
from typing import Any, Literal

from learning.runs.schema import test_problems

MAX_TOKENS_LIMIT = 4096
DEFAULT_MAX_TOKENS = 256
MODEL_PREFIX = "learnloop/"
ROUTE_HEADERS = ("task-type", "complexity", "task-key")


class BadRequest(Exception):
    """A request the gateway cannot read: answered 400, not recorded."""

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.param = param


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
    messages: list[dict[str, str]] = field(default_factory=list)
    prompt: str = ""
    max_tokens: int = DEFAULT_MAX_TOKENS
    temperature: float | None = None
    stop: list[str] = field(default_factory=list)
    stream: bool = False
    include_usage: bool = False
    route: Route | None = None
    tests: list[str] = field(default_factory=list)  # metadata.tests: the gateway scores the answer
    body: dict[str, Any] = field(default_factory=dict)  # as sent, for forwarding


@dataclass
class Generation:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str = "stop"


def error_body(message: str, kind: str = "invalid_request_error", param: str | None = None, code: str | None = None):
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def _content(value: Any, where: str) -> str:
    """A message's content: a string, or a list of text parts (joined)."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        parts = []
        for part in value:
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise BadRequest(f"{where}: only text content parts are supported.", where)
            parts.append(part["text"])
        return "".join(parts)
    if value is None:
        return ""
    raise BadRequest(f"{where} must be a string or a list of text parts.", where)


def _messages(value: Any) -> list[dict[str, str]]:
    if not isinstance(value, list) or not value:
        raise BadRequest("'messages' must be a non-empty list of {role, content} objects.", "messages")
    out = []
    for i, m in enumerate(value):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise BadRequest(f"messages[{i}] must be an object with a 'role' string.", f"messages[{i}]")
        if m["role"] not in ("system", "developer", "user", "assistant", "tool"):
            raise BadRequest(f"messages[{i}].role {m['role']!r} is not a chat role.", f"messages[{i}].role")
        role = "system" if m["role"] == "developer" else m["role"]
        out.append({"role": role, "content": _content(m.get("content"), f"messages[{i}].content")})
    return out


def _stop(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and len(value) <= 4 and all(isinstance(s, str) for s in value):
        return list(value)
    raise BadRequest("'stop' must be a string or a list of at most 4 strings.", "stop")


def _number(body: dict, name: str, low: float, high: float, integer: bool = False) -> Any:
    value = body.get(name)
    if value is None:
        return None
    ok = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok or not low <= value <= high:
        kind = "an integer" if integer else "a number"
        raise BadRequest(f"'{name}' must be {kind} from {low:g} to {high:g}, got {value!r}.", name)
    return value


def read_call(raw: bytes, kind: Literal["chat", "completion"], headers: dict[str, str]) -> Call:
    """The call a request body asks for; BadRequest naming the field when it is malformed."""
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise BadRequest(f"The body is not valid JSON ({exc}).") from None
    if not isinstance(body, dict):
        raise BadRequest("The body must be a JSON object.")
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
    tokens = _number(body, "max_completion_tokens", 1, MAX_TOKENS_LIMIT, True) or _number(
        body, "max_tokens", 1, MAX_TOKENS_LIMIT, True
    )
    call.max_tokens = tokens or DEFAULT_MAX_TOKENS
    call.temperature = _number(body, "temperature", 0, 2)
    call.stop = _stop(body.get("stop"))
    if body.get("n", 1) != 1:
        raise BadRequest("'n' must be 1: the gateway answers one choice per request.", "n")
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


# ---- answers ---------------------------------------------------------------------------------


def new_id(call: Call) -> str:
    return ("chatcmpl-" if call.kind == "chat" else "cmpl-") + secrets.token_hex(12)


def usage(gen: Generation) -> dict[str, int]:
    total = gen.prompt_tokens + gen.completion_tokens
    return {"prompt_tokens": gen.prompt_tokens, "completion_tokens": gen.completion_tokens, "total_tokens": total}


def answer(call: Call, answer_id: str, gen: Generation) -> dict[str, Any]:
    """The whole (non-streamed) answer object."""
    if call.kind == "chat":
        choice: dict[str, Any] = {"index": 0, "message": {"role": "assistant", "content": gen.text}}
        obj = "chat.completion"
    else:
        choice, obj = {"index": 0, "text": gen.text, "logprobs": None}, "text_completion"
    choice["finish_reason"] = gen.finish_reason
    return {
        "id": answer_id,
        "object": obj,
        "created": int(time.time()),
        "model": call.model,
        "choices": [choice],
        "usage": usage(gen),
    }


def chunk(call: Call, answer_id: str, text: str | None, finish: str | None = None, role: bool = False) -> str:
    """One server-sent event of a streamed answer (OpenAI's chunk format)."""
    if call.kind == "chat":
        delta: dict[str, Any] = {"role": "assistant"} if role else {}
        if text:
            delta["content"] = text
        choice: dict[str, Any] = {"index": 0, "delta": delta}
        obj = "chat.completion.chunk"
    else:
        choice, obj = {"index": 0, "text": text or "", "logprobs": None}, "text_completion"
    choice["finish_reason"] = finish
    return sse({"id": answer_id, "object": obj, "created": int(time.time()), "model": call.model, "choices": [choice]})


def usage_chunk(call: Call, answer_id: str, gen: Generation) -> str:
    obj = "chat.completion.chunk" if call.kind == "chat" else "text_completion"
    body = {"id": answer_id, "object": obj, "created": int(time.time()), "model": call.model, "choices": []}
    return sse({**body, "usage": usage(gen)})


def sse(data: Any) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


DONE = "data: [DONE]\n\n"
