"""Per-run preparation for curation: redact a run's texts, render its prompt, digest it for
duplicate detection, encode the JSON line. A run that recorded its whole exchange (messages, tools)
becomes a messages row as it was, its texts redacted, with no prompt template."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from typing import Any, NamedTuple

from learning.data.formats import sft_row, with_tests
from learning.data.redact import Redactor
from learning.data.templates import Compiled

encode = json.JSONEncoder(ensure_ascii=False).encode  # one encoder: json.dumps(**kw) builds one per call
encode_str = json.encoder.encode_basestring  # what that encoder does to a string, without the dict machinery
_NOTHING: dict[str, int] = {}


def norm_digest(*texts: str) -> int:
    """A 64-bit digest of texts after lower-casing and collapsing white space (near-exact
    duplicates); the same in every process."""
    text = " ".join("\x00".join(texts).split()).lower()
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


class RunRedactor:
    """Redacts a run's three texts in one pass; counts only what the caller keeps."""

    def __init__(self, enabled: bool):
        self.enabled, self.r, self.kept = enabled, Redactor(), Counter()

    def __call__(self, instruction: str, input_: str, output: str) -> tuple[list[str], dict[str, int]]:
        if not self.enabled:
            return [instruction, input_, output], _NOTHING
        counts = self.r.counts
        counts.clear()
        parts = self.r(f"{instruction}\x00{input_}\x00{output}").split("\x00")
        if len(parts) != 3:  # a text held a NUL itself: redact the three apart
            parts = [self.r(t) for t in (instruction, input_, output)]
        return parts, (dict(counts) if counts else _NOTHING)

    def exchange(
        self, messages: list[dict], tools: list[dict] | None
    ) -> tuple[list[dict], list | None, dict[str, int]]:
        """A recorded exchange with its texts redacted: every message's content, every tool call's
        arguments (JSON text; the placeholders keep it JSON) and every text in the tools."""
        if not self.enabled:
            return messages, tools, _NOTHING
        self.r.counts.clear()
        for message in messages:
            if isinstance(message.get("content"), str):
                message["content"] = self.r(message["content"])
            for call in message.get("tool_calls") or []:
                function = call.get("function") or {}
                if isinstance(function.get("arguments"), str):
                    function["arguments"] = self.r(function["arguments"])
        tools = self._strings(tools) if tools else tools
        return messages, tools, (dict(self.r.counts) if self.r.counts else _NOTHING)

    def _strings(self, value: Any) -> Any:
        """A JSON value with every string in it redacted (keys stay)."""
        if isinstance(value, str):
            return self.r(value)
        if isinstance(value, list):
            return [self._strings(v) for v in value]
        if isinstance(value, dict):
            return {k: self._strings(v) for k, v in value.items()}
        return value

    def keep(self, found: dict[str, int]) -> None:
        if found:
            self.kept.update(found)


def render_prompt(
    template: Compiled,
    role: str,
    task_type: str | None,
    complexity: str | None,
    instruction: str,
    input_: str,
    without_input: bool = False,
) -> tuple[str, str]:
    """The rendered prompt, and (for alpaca) the prompt without the input block."""
    fields = {
        "instruction": instruction,
        "input": input_,
        "task_type": task_type or "",
        "complexity": complexity or "",
        "role": role,
    }
    prompt = template.render(fields)
    return prompt, (template.render({**fields, "input": ""}) if without_input else "")


def sft_line(fmt: str, prompt: str, output: str, instruction_only: str, input_: str, tests: str | None = None) -> str:
    """The JSON line of an SFT row, with the run's tests (stored JSON) when it has some; the
    default format is written directly (2x faster than encoding a dict, and byte for byte the same)."""
    if fmt == "prompt_completion":
        line = f'{{"prompt": {encode_str(prompt)}, "completion": {encode_str(output)}'
        return line + (f', "tests": {encode(json.loads(tests))}}}' if tests else "}")
    return encode(with_tests(sft_row(fmt, prompt, output, instruction_only, input_), loads_tests(tests)))


def exchange_line(
    redactor: RunRedactor, messages: str, tools: str | None, tests: str | None, dedupe: bool
) -> tuple[int | None, str, dict[str, int]]:
    """A run's recorded exchange (stored JSON) as a messages row {"messages", "tools" (when it
    was offered some), "tests" (when it has some)}: (digest of the redacted exchange or None,
    JSON line, redaction counts)."""
    msgs, offered, found = redactor.exchange(json.loads(messages), json.loads(tools) if tools else None)
    row: dict = {"messages": msgs, **({"tools": offered} if offered else {})}
    digest = norm_digest(encode(msgs), encode(offered) if offered else "") if dedupe else None
    return digest, encode(with_tests(row, loads_tests(tests))), found


def loads_tests(tests: str | None) -> list[str] | None:
    """A run's stored tests (a JSON list, or None) as a list."""
    return json.loads(tests) if tests else None


class SftInputs(NamedTuple):
    """The texts of a chunk of runs to prepare, column by column: one small object to send to
    a worker process, however many runs it holds."""

    instructions: list[str]
    inputs: list[str]
    outputs: list[str]
    task_types: list[str | None]
    complexities: list[str | None]
    tests: list[str | None]
    messages: list[str | None]  # each run's exchange as stored (JSON), None when it has none
    tools: list[str | None]

    @classmethod
    def of(cls, runs) -> SftInputs:
        """From runs that have instruction, input, output, task_type, complexity, tests, messages and tools."""
        return cls(
            [r.instruction for r in runs],
            [r.input for r in runs],
            [r.output for r in runs],
            [r.task_type for r in runs],
            [r.complexity for r in runs],
            [r.tests for r in runs],
            [r.messages for r in runs],
            [r.tools for r in runs],
        )


_prepared_for: dict[tuple, tuple[RunRedactor, Compiled]] = {}


def prepare_sft_chunk(config: tuple[bool, str, str, str, bool], runs: SftInputs) -> list[tuple]:
    """Each run redacted and rendered as an SFT row: [(digest or None, JSON line, redaction
    counts)]; in the messages format a run with its exchange recorded is that exchange. config =
    (redact, template text, role, format, dedupe). Runs in a worker process or in the caller's
    (learning/data/parallel.py)."""
    redact, template, role, fmt, dedupe = config
    if config not in _prepared_for:
        _prepared_for[config] = (RunRedactor(redact), Compiled(template))
    redactor, compiled = _prepared_for[config]
    out = []
    for instruction, input_, output, task_type, complexity, tests, messages, tools in zip(*runs):
        if fmt == "messages" and messages:
            out.append(exchange_line(redactor, messages, tools, tests, dedupe))
            continue
        (instruction, input_, output), found = redactor(instruction, input_, output)
        digest = norm_digest(instruction, input_, output) if dedupe else None
        prompt, instruction_only = render_prompt(
            compiled, role, task_type, complexity, instruction, input_, fmt == "alpaca"
        )
        out.append((digest, sft_line(fmt, prompt, output, instruction_only, input_, tests), found))
    return out
