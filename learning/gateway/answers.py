"""The answers the gateway sends and what it records of them.

A forwarded answer is the runtime's own object, passed on with every field (choices for n > 1,
tool_calls, logprobs, usage, finish_reason, the runtime's extensions); only `model` is set back
to the name the client asked for. The in-process backend's text is written as OpenAI's typed
objects (the `openai` package's models). Either way, `Reply` is what the gateway records: the
first choice's text and tool calls, its finish reason and the token counts; `StreamReply`
builds the same from a stream's chunks, merging tool-call deltas by index.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from learning.gateway.protocol import Call, Generation, text_of


@dataclass
class Reply:
    """The first choice of an answer, as the gateway records it."""

    text: str = ""
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    choices: int = 1

    def message(self) -> dict[str, Any]:
        """The assistant's message, as a chat history holds it."""
        out: dict[str, Any] = {"role": "assistant", "content": self.text or None}
        if self.tool_calls:
            out["tool_calls"] = self.tool_calls
        else:
            out["content"] = self.text
        return out


def _obj(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _str(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _count(usage: Any, name: str) -> int:
    value = usage.get(name) if isinstance(usage, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def reply_of(call: Call, answer: dict[str, Any]) -> Reply:
    """What an answer object says (ValueError when it is not OpenAI's format)."""
    choices = answer.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise ValueError("it has no choices")
    first = choices[0]
    usage = answer.get("usage")
    reply = Reply(
        finish_reason=first.get("finish_reason"),
        prompt_tokens=_count(usage, "prompt_tokens"),
        completion_tokens=_count(usage, "completion_tokens"),
        choices=len(choices),
    )
    if call.kind == "chat":
        message = first.get("message")
        if not isinstance(message, dict):
            raise ValueError("its first choice has no message")
        reply.text = text_of(message.get("content"))
        calls = message.get("tool_calls")
        reply.tool_calls = [c for c in calls if isinstance(c, dict)] if isinstance(calls, list) else []
    else:
        reply.text = _str(first.get("text"))
    return reply


class StreamReply:
    """The Reply a stream adds up to, chunk by chunk (the first choice only)."""

    def __init__(self, call: Call):
        self.call, self.reply, self.parts = call, Reply(), []
        self.calls: dict[int, dict[str, Any]] = {}
        self.indexes: set[int] = set()

    def add(self, chunk: dict[str, Any]) -> None:
        usage = chunk.get("usage")
        if isinstance(usage, dict):
            self.reply.prompt_tokens = _count(usage, "prompt_tokens")
            self.reply.completion_tokens = _count(usage, "completion_tokens")
        for choice in chunk.get("choices") or []:
            if not isinstance(choice, dict):
                continue
            index = choice.get("index", 0)
            self.indexes.add(index if isinstance(index, int) else 0)
            if index not in (0, None):
                continue
            if choice.get("finish_reason"):
                self.reply.finish_reason = choice["finish_reason"]
            if self.call.kind != "chat":
                self.parts.append(_str(choice.get("text")))
                continue
            delta = _obj(choice.get("delta"))
            if isinstance(delta.get("content"), str):
                self.parts.append(delta["content"])
            for piece in delta.get("tool_calls") or []:
                if isinstance(piece, dict):
                    self._merge(piece)

    def _merge(self, piece: dict[str, Any]) -> None:
        """A tool call arrives in pieces: its id, type and name first, its arguments in parts."""
        index = piece.get("index", len(self.calls))
        known = self.calls.setdefault(index if isinstance(index, int) else 0, {"function": {"arguments": ""}})
        for key in ("id", "type"):
            if isinstance(piece.get(key), str):
                known[key] = piece[key]
        function = _obj(piece.get("function"))
        if isinstance(function.get("name"), str):
            known["function"]["name"] = function["name"]
        if isinstance(function.get("arguments"), str):
            known["function"]["arguments"] += function["arguments"]

    def result(self) -> Reply:
        self.reply.text = "".join(self.parts)
        self.reply.tool_calls = [{"type": "function", **self.calls[i]} for i in sorted(self.calls)]
        self.reply.choices = max(len(self.indexes), 1)
        return self.reply


# ---- the in-process backend's answers, as OpenAI's objects -------------------------------------


def new_id(call: Call) -> str:
    return ("chatcmpl-" if call.kind == "chat" else "cmpl-") + secrets.token_hex(12)


def _usage(gen: Generation) -> Any:
    from openai.types import CompletionUsage

    total = gen.prompt_tokens + gen.completion_tokens
    return CompletionUsage(prompt_tokens=gen.prompt_tokens, completion_tokens=gen.completion_tokens, total_tokens=total)


def answer_of(call: Call, gen: Generation) -> dict[str, Any]:
    """The whole (non-streamed) answer object for generated text."""
    from openai.types import Completion, CompletionChoice
    from openai.types.chat import ChatCompletion, ChatCompletionMessage
    from openai.types.chat.chat_completion import Choice

    made, finish = int(time.time()), gen.finish_reason
    if call.kind == "chat":
        message = ChatCompletionMessage(role="assistant", content=gen.text)
        choice = Choice(index=0, message=message, finish_reason=finish)  # type: ignore[arg-type]
        obj: Any = ChatCompletion(
            id=new_id(call), object="chat.completion", created=made, model=call.model, choices=[choice]
        )
    else:
        plain = CompletionChoice(index=0, text=gen.text, logprobs=None, finish_reason=finish)  # type: ignore[arg-type]
        obj = Completion(id=new_id(call), object="text_completion", created=made, model=call.model, choices=[plain])
    obj.usage = _usage(gen)
    return obj.model_dump(mode="json", exclude_none=True)


def _chunk(call: Call, answer_id: str, text: str | None, finish: str | None = None, role: bool = False) -> Any:
    from openai.types import Completion, CompletionChoice
    from openai.types.chat import ChatCompletionChunk
    from openai.types.chat.chat_completion_chunk import Choice, ChoiceDelta

    made = int(time.time())
    if call.kind == "chat":
        delta = ChoiceDelta(role="assistant" if role else None, content=text or None)
        choice = Choice(index=0, delta=delta, finish_reason=finish)  # type: ignore[arg-type]
        return ChatCompletionChunk(
            id=answer_id, object="chat.completion.chunk", created=made, model=call.model, choices=[choice]
        )
    # The type has no null finish_reason, which OpenAI's stream sends until the last chunk.
    plain = CompletionChoice.model_construct(index=0, text=text or "", logprobs=None, finish_reason=finish)
    return Completion(id=answer_id, object="text_completion", created=made, model=call.model, choices=[plain])


def _dump(obj: Any) -> dict[str, Any]:
    out = obj.model_dump(mode="json", exclude_none=True)
    for choice in out.get("choices", []):
        choice.setdefault("finish_reason", None)  # OpenAI sends it as null until the last chunk
    return out


async def chunks_of(call: Call, items: AsyncIterator[Any]) -> AsyncGenerator[dict[str, Any], None]:
    """A backend's stream as OpenAI chunks: a runtime's chunks (dicts) as they are; the in-process
    backend's text pieces and final Generation written as chunks: the role first, the text, the
    finish reason, then the usage (always: the gateway drops it when the client did not ask).
    Closing this closes the backend's stream, which ends its generation."""
    answer_id, started = new_id(call), False
    try:
        async for item in items:
            if isinstance(item, dict):
                yield item
                continue
            if not started and call.kind == "chat":
                yield _dump(_chunk(call, answer_id, None, role=True))
            started = True
            if isinstance(item, Generation):
                yield _dump(_chunk(call, answer_id, None, item.finish_reason))
                last = _chunk(call, answer_id, None)
                last.choices, last.usage = [], _usage(item)
                yield _dump(last)
                return
            if item:
                yield _dump(_chunk(call, answer_id, item))
    finally:
        close = getattr(items, "aclose", None)
        if close is not None:
            await close()
