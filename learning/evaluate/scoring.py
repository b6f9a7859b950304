"""The run_tests verb: score code by executing it against tests in the sandbox, and optionally
log the run with the reward it measured (passed / total), so agents report measured rewards,
not guessed ones."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, Field

from learning.errors import InvalidInput, check
from learning.runs.record import log_run
from learning.runs.schema import LIMITS, MAX_TEST_CHARS, MAX_TESTS  # the most a run keeps, so a scored run logs
from learning.sandbox import execute as sandbox
from learning.store import Store

CODE_CHARS = 200_000  # code and setup, each


class CodeScore(BaseModel):
    compiled: bool = Field(description="Did the code compile?")
    passed: int = Field(description="Tests that passed.")
    total: int = Field(description="Tests run.")
    score: float = Field(description="passed / total (the reward logged with log=true).")
    timed_out: bool = Field(description="Did the code or its tests run past the timeout?")
    error: str | None = Field(description="The first error: the code's own, or the first failing test's.")
    errors: list[str | None] = Field(description="One entry per test, in order: null for a pass, else the error.")
    duration_s: float = Field(description="Seconds the code and its tests ran.")
    sandbox: str = Field(description="'bwrap' (in the jail) or 'none' (LEARNLOOP_SANDBOX=none, no jail).")
    isolation: str = Field(
        description="How the verdict was decided: 'isolated' (the tests ran in their own process and reached "
        "the code only through calls crossing as plain data), 'in-process' (tests that send the code a function "
        "or an object of their own run in the code's process, where the code could forge them), or 'mixed'."
    )
    modes: list[str] = Field(description="One entry per test, in order: 'isolated' or 'in-process'.")
    run_id: int | None = Field(default=None, description="The logged run's id (log=true only).")
    task_key: str | None = Field(default=None, description="The logged run's task key (log=true only).")


def _problems(code: str, setup: str | None, tests: list[str]) -> list[str]:
    problems = []
    if not code.strip():
        problems.append("code is empty: pass the code to score.")
    for i, test in enumerate(tests):
        if len(test) > MAX_TEST_CHARS:
            problems.append(f"tests[{i}] is {len(test):,} characters; the limit is {MAX_TEST_CHARS:,} per test.")
        elif not test.strip():
            problems.append(f"tests[{i}] is empty: each test is a Python statement, e.g. 'assert f(1) == 2'.")
        else:
            try:
                compile(test, f"<tests[{i}]>", "exec")
            except (SyntaxError, ValueError) as exc:
                problems.append(f"tests[{i}] is not valid Python ({type(exc).__name__}: {exc}).")
    if setup:
        try:
            compile(setup, "<setup>", "exec")
        except (SyntaxError, ValueError) as exc:
            problems.append(f"setup is not valid Python ({type(exc).__name__}: {exc}).")
    return problems


# Long: one parameter per field of the run it may log
def run_code_tests(
    store: Store,
    code: Annotated[
        str, Field(min_length=1, max_length=CODE_CHARS, description="The Python code to score (usually the answer).")
    ],
    tests: Annotated[
        list[str],
        Field(
            min_length=1,
            max_length=MAX_TESTS,
            description="Python statements that check the code, one per test, e.g. 'assert add(1, 2) == 3'.",
        ),
    ],
    setup: Annotated[
        str | None, Field(max_length=CODE_CHARS, description="Python run before the code (imports, fixtures).")
    ] = None,
    timeout: Annotated[float, Field(gt=0, le=30, description="Seconds the code and all its tests may run.")] = 2.0,
    log: Annotated[
        bool, Field(description="Also log the run, with reward = passed / total and the outcome in its signals.")
    ] = False,
    role: Annotated[
        str | None, Field(max_length=LIMITS["role"], description="With log=true (required): the run's role.")
    ] = None,
    instruction: Annotated[
        str, Field(max_length=LIMITS["instruction"], description="With log=true: the task as given.")
    ] = "",
    input: Annotated[
        str, Field(max_length=LIMITS["input"], description="With log=true: extra input the agent had.")
    ] = "",
    agent: Annotated[
        str, Field(max_length=LIMITS["agent"], description="With log=true: which agent ran it.")
    ] = "agent",
    task_type: Annotated[str | None, Field(max_length=LIMITS["task_type"], description="With log=true.")] = None,
    complexity: Annotated[str | None, Field(max_length=LIMITS["complexity"], description="With log=true.")] = None,
    task_key: Annotated[str | None, Field(max_length=LIMITS["task_key"], description="With log=true.")] = None,
    model: Annotated[str | None, Field(max_length=LIMITS["model"], description="With log=true.")] = None,
    adapter_id: Annotated[str | None, Field(max_length=LIMITS["adapter_id"], description="With log=true.")] = None,
    decision_id: Annotated[
        str | None, Field(max_length=LIMITS["decision_id"], description="With log=true: select_adapter's id.")
    ] = None,
) -> CodeScore:
    """Score code by executing it: run `setup`, then `code`, then each test statement in the
    sandbox (a bubblewrap jail: no network, no files, no environment of this machine; time,
    memory and process limits). Returns compiled, passed, total, each test's error, the duration
    and the sandbox mode. With log=true (and role, plus the run's other fields) it also logs the
    run with reward = passed / total and signals compiled, tests_passed and tests_total, and
    returns the run id: a measured reward instead of a guessed one."""
    problems = _problems(code, setup, tests)
    if log and not role:
        problems.append("role is required with log=true (e.g. 'coder').")
    check(problems, "Cannot run these tests:")
    result = sandbox.run_tests(code, tests, timeout=timeout, setup=setup or "")
    score = CodeScore(**result.as_dict())
    if not log:
        return score
    run = {
        "role": role,
        "output": code,
        "reward": score.score,
        "instruction": instruction,
        "input": input,
        "agent": agent,
        "task_type": task_type,
        "complexity": complexity,
        "task_key": task_key,
        "model": model,
        "adapter_id": adapter_id,
        "decision_id": decision_id,
        "signals": {
            "compiled": score.compiled,
            "tests_passed": score.passed,
            "tests_total": score.total,
            "sandbox": score.sandbox,
            "isolation": score.isolation,
        },
        "tests": tests,  # the run keeps the tests it was scored by: curation carries them to the gate
    }
    try:
        logged = log_run(store, run)
    except InvalidInput as exc:
        raise InvalidInput(
            f"The code ran ({score.passed}/{score.total} tests passed) but the run was not logged: {exc}"
        ) from exc
    return score.model_copy(update={"run_id": logged.run_id, "task_key": logged.task_key})
