"""What a run is: the model a run is checked against when logged or imported, the stored run,
and what logging and importing return (the logging itself: learning/runs/record.py).

Field limits (characters): agent/model 200, role/task_type/complexity 64, task_key 256,
adapter_id/decision_id 128, instruction 200,000, input and output 1,000,000 each, signals and
meta 64 KiB of JSON each, nested at most 64 levels; tests_passed <= tests_total; time between
2000 and 2100; tests: at most 100 statements, 10,000 characters each, 100,000 in all,
each one compiling as Python; messages 2,000,000 and tools 200,000 characters of JSON (the
exchange itself: learning/runs/messages.py).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from datetime import datetime, timezone
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from learning.clock import RANGE_TEXT, in_range
from learning.errors import InvalidInput
from learning.runs.messages import MESSAGES_CHARS, TOOLS_CHARS, ChatMessage, ToolSpec, check_exchange, check_tools

LIMITS = {
    "agent": 200,
    "model": 200,
    "role": 64,
    "task_type": 64,
    "complexity": 64,
    "task_key": 256,
    "adapter_id": 128,
    "decision_id": 128,
    "instruction": 200_000,
    "input": 1_000_000,
    "output": 1_000_000,
    "signals": 65_536,
    "meta": 65_536,
    "tests": 100_000,
    "messages": MESSAGES_CHARS,
    "tools": TOOLS_CHARS,
}
MAX_JSON_DEPTH = 64  # nesting levels of signals and meta
MAX_TESTS = 100
MAX_TEST_CHARS = 10_000
ROLE_PATTERN = r"^[a-z][a-z0-9_-]{0,63}$"


def check_json(value: Any) -> Any:
    """Refuses what JSON cannot carry as stored: nesting past MAX_JSON_DEPTH, and NaN or Infinity
    (Python writes them, but they are not JSON: SQLite's JSON functions refuse the whole value)."""
    if json_depth(value) > MAX_JSON_DEPTH:
        raise ValueError(f"is nested more than {MAX_JSON_DEPTH} levels deep; flatten it")
    if not all_finite(value):
        raise ValueError("holds NaN or Infinity, which JSON cannot carry; send a finite number or null")
    return value


def all_finite(value: Any) -> bool:
    """No float in the JSON value is NaN or infinite (walked without recursion)."""
    todo = [value]
    while todo:
        v = todo.pop()
        if isinstance(v, float) and not math.isfinite(v):
            return False
        if isinstance(v, dict):
            todo.extend(v.values())
        elif isinstance(v, list):
            todo.extend(v)
    return True


def check_passed_within_total(value: Signals | None) -> Signals | None:
    if value is None:
        return None
    passed, total = value.tests_passed, value.tests_total
    if passed is not None and total is not None and passed > total:
        raise ValueError(f"tests_passed ({passed}) cannot exceed tests_total ({total})")
    return value


def check_statements(value: Any) -> Any:
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(t, str) for t in value):
        raise ValueError('tests must be a list of strings, each a Python statement, e.g. ["assert f(1) == 2"]')
    return value


def check_tests_compile(value: list[str] | None) -> list[str] | None:
    if value is None:
        return None
    problems = test_problems(value)
    if problems:
        raise ValueError("; ".join(problems))
    return value or None


def check_reward(value: Any) -> Any:
    """A reward as given, if it is a finite number (not a bool, not text); ValueError otherwise.
    Its range, [0, 1], is checked by the field."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError("reward must be a number in [0, 1], e.g. 0.8")
    if not math.isfinite(value):
        raise ValueError("reward must be a finite number in [0, 1]")
    return value


def json_depth(value: Any) -> int:
    """How deeply a JSON value nests (a scalar is 0), counted without recursion, stopping once
    past the limit."""
    depth, level = 0, [value]
    while level and depth <= MAX_JSON_DEPTH:
        children = [c for v in level if isinstance(v, (dict, list)) for c in (v.values() if isinstance(v, dict) else v)]
        depth += 1 if any(isinstance(v, (dict, list)) for v in level) else 0
        level = children
    return depth


def test_problems(tests: list[str]) -> list[str]:
    """Everything wrong with a list of test statements: their number, their sizes, and each one
    that does not compile as Python (empty list when they are fine)."""
    problems = []
    if len(tests) > MAX_TESTS:
        problems.append(f"{len(tests)} tests; the limit is {MAX_TESTS}")
    total = sum(map(len, tests))
    if total > LIMITS["tests"]:
        problems.append(f"{total:,} characters of tests in all; the limit is {LIMITS['tests']:,}")
    for i, test in enumerate(tests[:MAX_TESTS]):
        if len(test) > MAX_TEST_CHARS:
            problems.append(f"test {i} is {len(test):,} characters; the limit is {MAX_TEST_CHARS:,}")
        elif not test.strip():
            problems.append(f"test {i} is empty")
        else:
            try:
                compile(test, f"<test {i}>", "exec")
            except (SyntaxError, ValueError) as exc:
                problems.append(f"test {i} does not compile as Python ({getattr(exc, 'msg', exc)})")
    return problems


class Signals(BaseModel):
    """What the agent observed about its answer. Known keys are typed; any other key is kept."""

    model_config = ConfigDict(extra="allow")

    compiled: bool | None = Field(default=None, description="Did the answer compile / parse?")
    tests_passed: int | None = Field(default=None, ge=0, description="Number of tests that passed.")
    tests_total: int | None = Field(default=None, ge=0, description="Number of tests run.")
    iterations: int | None = Field(default=None, ge=0, description="Agent iterations used for the task.")
    verdict: str | None = Field(default=None, max_length=2000, description="A judge's verdict, e.g. 'pass' or 'fail'.")


# The checks log_run and log_reward share, on the fields they share.
CheckedSignals = Annotated[Signals, BeforeValidator(check_json), AfterValidator(check_passed_within_total)]
Tests = Annotated[list[str] | None, BeforeValidator(check_statements), AfterValidator(check_tests_compile)]
Reward = Annotated[float, BeforeValidator(check_reward)]


class RunIn(BaseModel):
    """One run as an agent reports it. Unknown fields are rejected."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=False)

    role: str = Field(pattern=ROLE_PATTERN, description="Who acted: coder, fixer, judge, or any lower-case name.")
    output: str = Field(
        min_length=1, max_length=LIMITS["output"], description="What the agent produced (code, patch, verdict)."
    )
    reward: Annotated[float | None, BeforeValidator(lambda v: None if v is None else check_reward(v))] = Field(
        default=None,
        ge=0.0,
        le=1.0,
        description="How good the output was, in [0, 1]. Leave it out when not known yet: the run is "
        "pending (left out of curation and drift, counted apart by run_stats) until log_reward scores it.",
    )
    instruction: str = Field(
        default="", max_length=LIMITS["instruction"], description="The task as given to the agent."
    )
    input: str = Field(
        default="", max_length=LIMITS["input"], description="Extra input: code to fix, diagnostics, context."
    )
    agent: str = Field(
        default="agent", min_length=1, max_length=LIMITS["agent"], description="Which agent ran the task."
    )
    task_type: str | None = Field(
        default=None, max_length=LIMITS["task_type"], description="Kind of task, e.g. 'refactor'."
    )
    complexity: str | None = Field(
        default=None, max_length=LIMITS["complexity"], description="easy / medium / hard, or free text."
    )
    task_key: str | None = Field(
        default=None,
        min_length=1,
        max_length=LIMITS["task_key"],
        description="Groups attempts at one task; derived from the instruction when absent.",
    )
    signals: CheckedSignals = Field(
        default_factory=Signals, description="compiled, tests_passed, tests_total, iterations, verdict, ..."
    )
    model: str | None = Field(
        default=None, max_length=LIMITS["model"], description="What served the run (model name, endpoint)."
    )
    adapter_id: str | None = Field(
        default=None, max_length=LIMITS["adapter_id"], description="The learnloop adapter that produced it, if any."
    )
    decision_id: str | None = Field(
        default=None, max_length=LIMITS["decision_id"], description="The id select_adapter returned, if any."
    )
    meta: Annotated[dict[str, Any], BeforeValidator(check_json)] = Field(
        default_factory=dict, description="Free metadata (JSON object)."
    )
    tests: Tests = Field(
        default=None,
        description="Python statements that check an answer to this task, e.g. 'assert add(2, 3) == 5'; "
        "they travel into datasets and evaluate_adapter's gate runs them. At most 100, 10,000 characters each (CLI: --tests once per statement).",
    )
    time: datetime | None = Field(default=None, description="When the run happened (ISO 8601); now when absent.")
    messages: list[ChatMessage] | None = Field(
        default=None,
        description="The whole exchange in OpenAI chat format, ending with the assistant's answer: "
        "{role: system|user|assistant|tool, content, tool_calls?: [{id, type: 'function', function: "
        "{name, arguments}}], tool_call_id?}; make_sft --format messages trains on it. At most 2,000,000 "
        "characters of JSON.",
    )
    tools: Annotated[list[ToolSpec] | None, BeforeValidator(check_json)] = Field(
        default=None,
        description="The tools offered, in OpenAI format: [{type: 'function', function: {name, description, "
        "parameters}}]. At most 200,000 characters of JSON.",
    )

    @field_validator("messages", "tools")
    @classmethod
    def _an_exchange(cls, value: Any, info: ValidationInfo) -> Any:
        return check_exchange(value) if info.field_name == "messages" else check_tools(value)

    @field_validator("time")
    @classmethod
    def _time_in_range(cls, value: datetime | None) -> datetime | None:
        if value is None:
            return None
        try:
            aware = value if value.tzinfo is not None else value.replace(tzinfo=timezone.utc)
            ok = in_range(aware)
        except (OverflowError, ValueError):
            ok = False
        if not ok:
            raise ValueError(f"must be a time {RANGE_TEXT}")
        return value


class RewardIn(BaseModel):
    """A reward given to a run after it was logged (log_reward), checked as log_run checks them."""

    model_config = ConfigDict(extra="forbid")

    reward: Reward = Field(ge=0.0, le=1.0, description="How good the run's output was, in [0, 1].")
    signals: CheckedSignals | None = Field(default=None, description="What scoring observed; merged into the run's.")
    tests: Tests = Field(default=None, description="Statements that check an answer; replace the run's.")


class RewardEvent(BaseModel):
    """A reward given to a run after it was logged (learning/runs/rewards.py)."""

    time: str
    actor: str = Field(
        description="Who gave it: mcp, cli, http, python, gateway (its own scoring), or the user who corrected it."
    )
    kind: Literal["scored", "correction"] = Field(
        description="scored: a pending run filled; correction: the home owner's override."
    )
    reward: float
    previous: float | None = Field(description="The reward before it; None: the run was pending.")
    reason: str = ""


class Run(BaseModel):
    """A stored run."""

    id: int
    time: str
    agent: str
    role: str
    task_type: str | None
    complexity: str | None
    task_key: str
    instruction: str
    input: str
    output: str
    reward: float | None = Field(description="In [0, 1]; None while the run is pending (not scored yet).")
    signals: dict[str, Any]
    model: str | None
    adapter_id: str | None
    decision_id: str | None
    meta: dict[str, Any]
    tests: list[str] = Field(default_factory=list, description="Statements that check an answer to the task.")
    messages: list[dict[str, Any]] | None = Field(default=None, description="The whole exchange, when recorded.")
    tools: list[dict[str, Any]] | None = Field(default=None, description="The tools offered, when recorded.")
    reward_history: list[RewardEvent] = Field(
        default_factory=list, description="Rewards given after the run was logged, oldest first (get_run fills it)."
    )


class LogResult(BaseModel):
    run_id: int = Field(description="Id of the stored run.")
    task_key: str = Field(description="The task key stored (derived from the instruction when not given).")
    reward_token: str | None = Field(
        default=None,
        description="For a run logged without a reward (pending): pass it to log_reward to score the run, "
        "once. Shown only now; only its hash is stored. None for a run logged with its reward.",
    )


class ImportError_(BaseModel):
    line: int
    error: str


class ImportResult(BaseModel):
    imported: int = Field(description="Runs written.")
    skipped: int = Field(description="Bad lines skipped (only with skip_invalid).")
    already_imported: int = Field(0, description="Lines of this file imported before (skipped, not duplicated).")
    lines: int = Field(description="Lines read, blank lines included.")
    batches: int = Field(description="Transactions committed.")
    errors: list[ImportError_] = Field(description="Bad lines (first 50) with their line numbers.")
    seconds: float


def derive_task_key(instruction: str, input_: str = "") -> str:
    """A stable key for a task: a hash of its normalised instruction (and input if no instruction)."""
    text = re.sub(r"\s+", " ", (instruction or input_).strip().lower())
    return "t-" + hashlib.sha256(text.encode()).hexdigest()[:16]


def format_validation_error(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        field = ".".join(str(p) for p in err["loc"]) or "run"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown field; remove it (known fields: " + ", ".join(RunIn.model_fields) + ")"
        elif err["type"] == "string_too_long":
            assert "ctx" in err  # pydantic gives this error the limit it broke
            msg = f"too long ({len(err['input']):,} characters; limit {err['ctx']['max_length']:,})"
        elif err["type"] == "missing":
            msg = "is required"
        elif err["type"] == "value_error":
            msg = msg.removeprefix("Value error, ")
        if field == "reward" and "number in [0, 1]" not in msg:
            msg += " (reward must be a number in [0, 1], e.g. 0.8)"
        parts.append(f"'{field}' {msg}")
    return "; ".join(parts)


def parse_reward(data: dict[str, Any]) -> RewardIn:
    """Validate a reward given later (with its signals and tests); InvalidInput names every bad field."""
    try:
        return RewardIn.model_validate(data)
    except ValidationError as exc:
        raise InvalidInput(f"Invalid reward: {format_validation_error(exc)}.") from exc


def rescored(signals: dict, meta: dict, new: RewardIn, now: str) -> tuple[str, str]:
    """A run's signals and meta (as JSON) once `new` scores it: the new signals merged over the old
    (a key given replaces it) and meta's rewarded_at set to now."""
    merged = {**signals, **(new.signals.model_dump(exclude_none=True) if new.signals else {})}
    try:
        check_passed_within_total(Signals.model_validate(merged))
    except (ValidationError, ValueError) as exc:
        raise InvalidInput(f"Invalid reward: the run's signals merged with these are wrong: {exc}.") from exc
    out = []
    for name, value in (("signals", merged), ("meta", {**meta, "rewarded_at": now})):
        text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), sort_keys=True)
        if len(text) > LIMITS[name]:
            raise InvalidInput(
                f"The run's {name} would be {len(text):,} characters of JSON; the limit is {LIMITS[name]:,}."
            )
        out.append(text)
    return out[0], out[1]


def parse_run(data: Any) -> RunIn:
    """Validate one run given as a dict (or RunIn); InvalidInput names every bad field."""
    if isinstance(data, RunIn):
        return data
    if not isinstance(data, dict):
        raise InvalidInput(f"A run must be a JSON object, got {type(data).__name__}.")
    try:
        return RunIn.model_validate(data)
    except ValidationError as exc:
        raise InvalidInput(f"Invalid run: {format_validation_error(exc)}.") from exc
