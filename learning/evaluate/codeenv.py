"""A small synthetic coding environment: tasks with hidden tests, scored by running the answer.

Task families (coder role): add a constant, multiply by a constant, reverse a list, upper-case a
string, sum a list. Each task names its function, its parameter and (where it has one) its
constant; its hidden tests are assert statements. Held-out tasks use function names, parameter
names and constants that training tasks never use, so passing them needs more than recall.

Two more roles reuse the families:
- fixer: a described bug and the buggy code -> the fixed code (scored by the same hidden tests);
- judge: a function and its specification -> the verdict "pass" or "fail", right when it agrees
  with what executing the function against the hidden tests shows.

Every reward comes from executing the answer in learning.sandbox.execute (isolated process, timeout, no
network). The reference solver's answers score 1.0; each family has deliberately broken
variants, among them a near miss that fails one test of five (0.8), which is why a curation
threshold below 1.0 lets wrong code into a training set.
"""

from __future__ import annotations

import random
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from learning.sandbox.execute import run_many

ROLES = ("coder", "fixer", "judge")
STOP = ("\n###", "\n\n", "\nassert", "\nprint(")
VERDICT_STOP = ("\n",)

# Names are made-up words of consonant-vowel syllables ("kamo_rive", "zuti"): a model can only
# write them by copying from the prompt, never by recalling a word it memorised. Every name
# belongs to exactly one split (by a hash), so held-out tasks use function and parameter names
# that training tasks never use; their constants come from a disjoint set too. Training constants
# span 2-99 (all but the held-out ones): with only a handful of them an adapter learns those values
# instead of copying the constant from the request, and writes 25 where 23 was asked.
_SYLLABLES = "ka lo mi ra ve zu ti po ne sa fe bo xi da lu ri ma ko pe gi ho wa ze nu".split()
_HELD_K = (11, 13, 14, 17, 19, 21, 23)
_TRAIN_K = tuple(k for k in range(2, 100) if k not in _HELD_K)


@dataclass(frozen=True)
class Family:
    """One kind of function: its spec, its correct body, its test inputs, and wrong bodies."""

    name: str
    spec: str  # what the function returns, with {p} and {k}
    body: str  # the correct return expression
    inputs: tuple  # five test inputs
    expected: Callable[[Any, int | None], Any]  # (value, k) -> expected output
    broken: tuple[tuple[str, str], ...]  # (wrong body, description of the bug); the first is a 0.8 near miss
    uses_k: bool = True


FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        Family(
            "add",
            "{p} plus {k}",
            "{p} + {k}",
            (1, 0, -3, 10, 57),
            lambda v, k: v + k,
            (
                ("abs({p}) + {k}", "it gives the wrong answer for negative numbers"),
                ("{p} - {k}", "it subtracts instead of adding"),
                ("{p} + {k1}", "it is off by one"),
            ),
        ),
        Family(
            "multiply",
            "{p} multiplied by {k}",
            "{p} * {k}",
            (1, 0, -3, 10, 57),
            lambda v, k: v * k,
            (
                ("abs({p}) * {k}", "it gives the wrong answer for negative numbers"),
                ("{p} + {k}", "it adds instead of multiplying"),
                ("{p} * {k1}", "it multiplies by the wrong number"),
            ),
        ),
        Family(
            "reverse",
            "the list {p} in reverse order",
            "{p}[::-1]",
            ([1, 2, 3], [5, 1, 4, 2], [], [7], ["a", "b"]),
            lambda v, k: v[::-1],
            (
                ("sorted({p}, reverse=True)", "it sorts the list instead of reversing it"),
                ("{p}", "it returns the list unchanged"),
                ("{p}[1:][::-1]", "it drops the first element"),
            ),
            uses_k=False,
        ),
        Family(
            "upper",
            "the string {p} in upper case",
            "{p}.upper()",
            ("hello", "Mixed Case", "", "abc1", " pad "),
            lambda v, k: v.upper(),
            (
                ("{p}.upper().strip()", "it also strips the surrounding spaces"),
                ("{p}.lower()", "it lower-cases instead of upper-casing"),
                ("{p}.title()", "it only capitalises the first letter of each word"),
            ),
            uses_k=False,
        ),
        Family(
            "sum",
            "the sum of the numbers in the list {p}",
            "sum({p})",
            ([1, 2, 3], [], [10], [-4, 4, 5], [0, 0]),
            lambda v, k: sum(v),
            (
                ("sum(v for v in {p} if v > 0)", "it ignores negative numbers"),
                ("len({p})", "it counts the numbers instead of adding them"),
                ("max({p})", "it returns the largest number instead of the sum"),
            ),
            uses_k=False,
        ),
    )
}


@dataclass(frozen=True)
class Task:
    key: str  # task_key: groups every attempt at this task
    role: str  # coder | fixer | judge
    family: str
    split: str  # train | heldout
    instruction: str
    input: str  # the code to fix or judge; "" for coder tasks
    func: str
    param: str
    k: int | None
    tests: tuple[str, ...] = field(repr=False)
    reference: str = field(repr=False)  # what the reference solver answers


class Score(BaseModel):
    """The outcome of executing one answer."""

    reward: float
    compiled: bool
    tests_passed: int
    tests_total: int
    timed_out: bool = False
    error: str | None = None
    verdict: str | None = None  # judge tasks: the verdict given
    truth: str | None = None  # judge tasks: what execution showed ('pass' / 'fail')
    executed: bool = True  # always True: every reward comes from a sandbox execution
    isolation: str = "isolated"  # how the verdict was decided (learning/sandbox/execute.py)


def _code(func: str, param: str, body: str) -> str:
    return f"def {func}({param}):\n    return {body}\n"


def _fill(text: str, param: str, k: int | None) -> str:
    return text.format(p=param, k=k, k1=(k or 0) + 1)


def tests_for(family: Family, func: str, k: int | None) -> tuple[str, ...]:
    return tuple(f"assert {func}({v!r}) == {family.expected(v, k)!r}" for v in family.inputs)


def make_task(
    family: str,
    role: str,
    func: str,
    param: str,
    k: int | None,
    split: str,
    variant: int = 0,
    judged_correct: bool = True,
) -> Task:
    """One task. variant picks the bug (fixer) or the wrong code (judge, when judged_correct is False)."""
    fam = FAMILIES[family]
    k = k if fam.uses_k else None
    spec = _fill(fam.spec, param, k)
    correct = _code(func, param, _fill(fam.body, param, k))
    wrong_body, bug = fam.broken[variant % len(fam.broken)]
    wrong = _code(func, param, _fill(wrong_body, param, k))
    tests = tests_for(fam, func, k)
    base_key = f"{family}:{func}:{param}:{k}"
    if role == "coder":
        return Task(
            f"coder:{base_key}",
            role,
            family,
            split,
            f"Write a Python function `{func}({param})` that returns {spec}.",
            "",
            func,
            param,
            k,
            tests,
            correct,
        )
    if role == "fixer":
        return Task(
            f"fixer:{base_key}:{variant}",
            role,
            family,
            split,
            f"Fix the bug in `{func}({param})`, which should return {spec}: {bug}.",
            wrong,
            func,
            param,
            k,
            tests,
            correct,
        )
    if role == "judge":
        code = correct if judged_correct else wrong
        return Task(
            f"judge:{base_key}:{'ok' if judged_correct else variant}",
            role,
            family,
            split,
            f"Does `{func}({param})` return {spec}? Answer pass or fail.",
            code,
            func,
            param,
            k,
            tests,
            "pass" if judged_correct else "fail",
        )
    raise ValueError(f"unknown role {role!r}; use one of {', '.join(ROLES)}")


def _word(rng: random.Random) -> str:
    return "".join(rng.choice(_SYLLABLES) for _ in range(2))


def split_of(name: str) -> str:
    """The split a name belongs to: about one name in four is held out."""
    return "heldout" if zlib.crc32(name.encode()) % 4 == 0 else "train"


def _name(rng: random.Random, split: str, kind: str) -> str:
    while True:
        name = f"{_word(rng)}_{_word(rng)}" if kind == "fn" else _word(rng)
        if split_of(name) == split:
            return name


def make_tasks(
    n: int, split: str = "train", role: str = "coder", families: Sequence[str] | None = None, seed: int = 0
) -> list[Task]:
    """`n` distinct tasks of one role, cycling through the families; deterministic for a seed.

    split 'train' draws names and constants from the training vocabulary, 'heldout' from the
    disjoint held-out one.
    """
    if split not in ("train", "heldout"):
        raise ValueError("split must be 'train' or 'heldout'")
    fams = list(families or FAMILIES)
    ks = _TRAIN_K if split == "train" else _HELD_K
    rng = random.Random(f"{seed}:{split}:{role}")
    tasks: list[Task] = []
    seen: set[str] = set()
    attempts = 0
    while len(tasks) < n and attempts < n * 50:
        attempts += 1
        family = fams[len(tasks) % len(fams)]
        func = _name(rng, split, "fn")
        param = _name(rng, split, "param")
        task = make_task(
            family,
            role,
            func,
            param,
            rng.choice(ks),
            split,
            variant=rng.randrange(3),
            judged_correct=rng.random() < 0.5,
        )
        if task.key not in seen:
            seen.add(task.key)
            tasks.append(task)
    return tasks


# The prompt of each role, in the placeholder syntax of make_sft's templates, so a dataset
# curated with `template=TEMPLATES[role]` trains on exactly the prompts the model is asked.
TEMPLATES = {
    "coder": "### Task:\n{instruction}\n### Solution:\n",
    "fixer": "### Task:\n{instruction}\n### Code:\n{input}### Solution:\n",
    "judge": "### Task:\n{instruction}\n### Code:\n{input}### Verdict:\n",
}


def prompt(task: Task) -> str:
    """The text a model completes: `### Task:` ... `### Solution:` (or `### Verdict:` for a judge)."""
    return TEMPLATES[task.role].format(instruction=task.instruction, input=task.input)


def stop_for(task: Task) -> tuple[str, ...]:
    return VERDICT_STOP if task.role == "judge" else STOP


def solve(task: Task) -> str:
    """The reference solver's answer (scores 1.0)."""
    return task.reference


def broken_answers(task: Task) -> list[str]:
    """Deliberately wrong answers: for code roles the family's broken bodies (the first a 0.8 near
    miss), for judges the opposite verdict."""
    if task.role == "judge":
        return ["fail" if task.reference == "pass" else "pass"]
    fam = FAMILIES[task.family]
    return [_code(task.func, task.param, _fill(body, task.param, task.k)) for body, _ in fam.broken]


def parse_verdict(answer: str) -> str | None:
    words = answer.strip().lower().split()
    word = words[0].strip(".:!,") if words else ""
    return word if word in ("pass", "fail") else None


def score_answers(tasks: Sequence[Task], answers: Sequence[str], timeout: float = 2.0, workers: int = 2) -> list[Score]:
    """Execute each answer against its task's hidden tests (judges: execute the judged code) and
    turn the outcome into a reward in [0, 1]."""
    if len(tasks) != len(answers):
        raise ValueError("one answer per task")
    jobs = [(t.input if t.role == "judge" else a, list(t.tests)) for t, a in zip(tasks, answers)]
    results = run_many(jobs, timeout=timeout, workers=workers)
    scores = []
    for task, answer, res in zip(tasks, answers, results):
        common: dict[str, Any] = dict(
            compiled=res.compiled,
            tests_passed=res.passed,
            tests_total=res.total,
            timed_out=res.timed_out,
            error=res.error,
            isolation=res.isolation,
        )
        if task.role == "judge":
            truth = "pass" if res.total and res.passed == res.total else "fail"
            verdict = parse_verdict(answer)
            scores.append(Score(reward=float(verdict == truth), verdict=verdict, truth=truth, **common))
        else:
            scores.append(Score(reward=round(res.score, 4), **common))
    return scores


def run_record(
    task: Task,
    answer: str,
    score: Score,
    *,
    agent: str,
    model: str | None = None,
    adapter_id: str | None = None,
    decision_id: str | None = None,
    source: str = "",
) -> dict:
    """A run in the shape log_run takes, with the reward and signals from execution."""
    signals = {
        "compiled": score.compiled,
        "tests_passed": score.tests_passed,
        "tests_total": score.tests_total,
        "timed_out": score.timed_out,
        "executed": score.executed,
        "isolation": score.isolation,
    }
    if score.verdict is not None or task.role == "judge":
        signals["verdict"] = score.verdict or "unparsed"
        signals["truth"] = score.truth
    return {
        "role": task.role,
        "output": answer if answer.strip() else "(empty answer)",
        "reward": score.reward,
        "instruction": task.instruction,
        "input": task.input,
        "agent": agent,
        "task_type": task.family,
        "task_key": task.key,
        "signals": signals,
        "model": model,
        "adapter_id": adapter_id,
        "decision_id": decision_id,
        "meta": {"source": source, "split": task.split, "error": score.error},
        "tests": list(task.tests),
    }
