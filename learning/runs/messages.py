"""A run's whole exchange: its messages in OpenAI chat format (tool calls and tool results
included, ending with the assistant's answer) and the tools it was offered, checked when a run is
logged (the fields `messages` and `tools` of learning/runs/schema.py); and a plain rendering of an
answer that was only tool calls, for a run's `output`.

A message is {role, content, tool_calls?, tool_call_id?}: role system, user, assistant or tool;
content text, or null only for an assistant message that calls tools; an assistant message's
tool_calls [{id, type: "function", function: {name, arguments}}], arguments the JSON text OpenAI's
format carries; a tool message's tool_call_id (the call it answers). A tool is {type: "function",
function: {name, description?, parameters?}}. Other keys are dropped; content given as a list of
text parts is joined into one text; arguments given as an object are written as JSON text.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

MAX_MESSAGES = 10_000
MAX_TOOLS = 1_000
MESSAGES_CHARS = 2_000_000  # characters of JSON, as stored
TOOLS_CHARS = 200_000
NAME_LIMIT = 256  # function names and tool call ids


class FunctionCall(BaseModel):
    model_config = ConfigDict(extra="ignore")

    name: str = Field(min_length=1, max_length=NAME_LIMIT, description="The function called.")
    arguments: str = Field(default="{}", description="Its arguments as JSON text, as the model wrote them.")

    @field_validator("arguments", mode="before")
    @classmethod
    def _arguments_as_text(cls, value: Any) -> Any:
        return json.dumps(value, ensure_ascii=False) if isinstance(value, (dict, list)) else value


class ToolCall(BaseModel):
    model_config = ConfigDict(extra="ignore")

    id: str | None = Field(default=None, max_length=NAME_LIMIT, description="The call's id; tool results name it.")
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(BaseModel):
    """One message of a run's exchange, in OpenAI chat format. Other keys are dropped."""

    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "user", "assistant", "tool"]
    content: str | None = Field(
        default=None, description="The text; null only for an assistant message that calls tools."
    )
    tool_calls: list[ToolCall] | None = Field(default=None, description="An assistant message's calls of tools.")
    tool_call_id: str | None = Field(
        default=None, max_length=NAME_LIMIT, description="A tool message's answer to this call."
    )

    @field_validator("content", mode="before")
    @classmethod
    def _text_parts_joined(cls, value: Any) -> Any:
        if isinstance(value, list) and all(isinstance(p, dict) and p.get("type") == "text" for p in value):
            return "".join(str(p.get("text", "")) for p in value)
        if isinstance(value, list):
            raise ValueError("content must be text (or a list of text parts); other parts are not recorded")
        return value

    @model_validator(mode="after")
    def _fits_its_role(self) -> ChatMessage:
        if self.tool_calls and self.role != "assistant":
            raise ValueError(f"only assistant messages carry tool_calls (this one's role is {self.role})")
        if self.role == "tool" and not self.tool_call_id:
            raise ValueError("a tool message needs the tool_call_id of the call it answers")
        if self.tool_call_id is not None and self.role != "tool":
            raise ValueError(f"only tool messages carry a tool_call_id (this one's role is {self.role})")
        if self.content is None and not (self.role == "assistant" and self.tool_calls):
            raise ValueError("content is required (null only in an assistant message that has tool_calls)")
        return self

    def as_dict(self) -> dict[str, Any]:
        """The message as stored: role and content always (content may be null), the rest when set."""
        return {"role": self.role, "content": self.content, **self.model_dump(exclude_none=True)}


class ToolFunction(BaseModel):
    model_config = ConfigDict(extra="ignore")

    name: str = Field(min_length=1, max_length=NAME_LIMIT, description="The function's name.")
    description: str | None = Field(default=None, description="What it does.")
    parameters: dict[str, Any] | None = Field(default=None, description="Its arguments, as a JSON Schema object.")


class ToolSpec(BaseModel):
    """A tool offered to the model, in OpenAI format. Other keys are dropped."""

    model_config = ConfigDict(extra="ignore")

    type: Literal["function"] = "function"
    function: ToolFunction

    def as_dict(self) -> dict[str, Any]:
        return self.model_dump(exclude_none=True)


def check_exchange(messages: list[ChatMessage] | None) -> list[ChatMessage] | None:
    """The messages, if they are an exchange a run can hold: at most MAX_MESSAGES and
    MESSAGES_CHARS, ending with the assistant's answer; ValueError otherwise."""
    if messages is None:
        return None
    if not messages:
        raise ValueError("must hold the conversation, ending with the assistant's answer (or leave it out)")
    if len(messages) > MAX_MESSAGES:
        raise ValueError(f"{len(messages):,} messages; the limit is {MAX_MESSAGES:,}")
    if messages[-1].role != "assistant":
        raise ValueError(f"must end with the assistant's answer (the last message's role is {messages[-1].role})")
    return _sized(messages, MESSAGES_CHARS)


def check_tools(tools: list[ToolSpec] | None) -> list[ToolSpec] | None:
    """The tools, if at most MAX_TOOLS and TOOLS_CHARS (None for none); ValueError otherwise."""
    if tools is not None and len(tools) > MAX_TOOLS:
        raise ValueError(f"{len(tools):,} tools; the limit is {MAX_TOOLS:,}")
    return _sized(tools, TOOLS_CHARS) if tools else None


def _sized(items: list[ChatMessage] | list[ToolSpec], limit: int) -> Any:
    size = len(exchange_json(items) or "")
    if size > limit:
        raise ValueError(f"is {size:,} characters of JSON; the limit is {limit:,}")
    return items


def exchange_json(items: list[ChatMessage] | list[ToolSpec] | None) -> str | None:
    """Messages or tools as the JSON text stored in the runs table (None when absent)."""
    if items is None:
        return None
    return json.dumps([i.as_dict() for i in items], ensure_ascii=False, separators=(",", ":"))


# ---- an answer as text ------------------------------------------------------------------------


def render_tool_calls(tool_calls: Iterable[Mapping[str, Any]]) -> str:
    """Tool calls as plain text, one call a line: `name(arguments)`, the arguments as the JSON
    text the model wrote (an object given instead is written as JSON). Takes OpenAI's
    [{id, type, function: {name, arguments}}], as dicts straight from a response."""
    lines = []
    for call in tool_calls:
        function = call.get("function") or {}
        arguments = function.get("arguments")
        if not isinstance(arguments, str):
            arguments = json.dumps(arguments if arguments is not None else {}, ensure_ascii=False)
        lines.append(f"{function.get('name', '')}({arguments})")
    return "\n".join(lines)


def answer_text(message: Mapping[str, Any]) -> str:
    """An assistant message as a run's output: its text, or, when it has none and only calls
    tools, those calls rendered by render_tool_calls."""
    content = message.get("content")
    if isinstance(content, str) and content:
        return content
    return render_tool_calls(message.get("tool_calls") or [])
