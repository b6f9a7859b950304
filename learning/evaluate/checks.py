"""Generation checks per role: does an answer do the role's job? No torch here.

- coder: when the test row carries tests (its run's Python statements, usually asserts, in
  `tests`), the code in the answer (the first fenced block, else the whole answer) must pass
  every one, run by learning.sandbox.execute.run_many (the whole batch at once); an answer with
  no Python code, or code that does not compile, fails them. A row without tests gets the
  compile-only check: the code compiles (`compile()`) and is not empty (at least one statement);
  blocks fenced as another language are not checked (counted as unchecked, not as failures).
- fixer: the answer must have the form of the reference: a unified diff when the reference
  is one (`--- `/`+++ ` headers, `@@ -a,b +c,d @@` hunks whose line counts add up), otherwise
  fixed code, checked like the coder's (the row's tests when it has some, else compile-only).
- judge: the verdict parses (JSON {"verdict": ...}, a `verdict: X` line, or a leading
  pass/fail-like word) and agrees with the logged verdict (`signals.verdict`, else the
  verdict parsed from the reference).
- other roles: no check (pass rate None); similarity only.
Similarity is difflib's ratio between the answer and the reference, averaged.
The reward-hacking monitor (learning.sandbox.monitor) reads the code of every coder and fixer
answer: `suspicious_answers`, `suspicious_share` and `suspicious_reasons` count what it flagged,
and each flagged row's outcome names its reasons under `suspicious`. It decides nothing.

`score` keeps the two kinds of figure apart: `pass_rate_tests` over the rows whose tests ran
(`tested_rows`) and `pass_rate_checks` over the other checked rows (`checks_basis` says what was
checked, e.g. "compile-only"); `pass_rate` is the first when any row was tested, else the second,
never a mix, and `pass_rate_basis` says which. `checks` keeps each row's outcome.
"""

from __future__ import annotations

import difflib
import json
import re
from collections import Counter
from typing import Any

from learning.data.formats import to_example
from learning.sandbox import execute as sandbox
from learning.sandbox.code import PYTHON_TAGS, compiles, extract_code, tested_code
from learning.sandbox.monitor import suspicious

HUNK = re.compile(r"^@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@")
VERDICT_WORDS = ("pass", "fail", "accept", "reject", "approve", "correct", "incorrect", "good", "bad", "yes", "no")

SANITY_PROMPTS: dict[str, list[str]] = {
    "coder": [
        "Write a Python function is_prime(n) that returns True when n is a prime number.",
        "Write a Python function that reverses the words of a sentence.",
        "Write a Python function that returns the n-th Fibonacci number iteratively.",
    ],
    "fixer": [
        "Fix the bug:\ndef mean(xs):\n    return sum(xs) / len(x)\n",
        "Fix the bug:\ndef last(items):\n    return items[len(items)]\n",
        "Fix the bug:\ndef greet(name)\n    print('hello ' + name)\n",
    ],
    "judge": [
        "Task: add two numbers.\nAnswer:\ndef add(a, b):\n    return a + b\nGive your verdict.",
        "Task: return the maximum of a list.\nAnswer:\ndef mx(xs):\n    return min(xs)\nGive your verdict.",
        "Task: check if a string is empty.\nAnswer:\ndef empty(s):\n    return len(s) == 0\nGive your verdict.",
    ],
}
GENERIC_SANITY = [
    "Say in one sentence what you can help with.",
    "Write a Python function that adds two numbers.",
    "Summarize: the build failed because a test timed out.",
]


def sanity_prompts(role: str) -> list[str]:
    return SANITY_PROMPTS.get(role, GENERIC_SANITY)


def is_unified_diff(text: str) -> bool:
    return bool(re.search(r"^--- .*\n\+\+\+ .*\n@@ ", text, re.M))


def diff_problem(text: str) -> str | None:
    """Why text is not a well-formed unified diff (None when it is)."""
    lines = text.strip("\n").splitlines()
    i, hunks = 0, 0
    while i < len(lines) and not lines[i].startswith("--- "):
        i += 1
    if i >= len(lines):
        return "no '--- ' header"
    while i < len(lines):
        if lines[i].startswith("--- "):
            if i + 1 >= len(lines) or not lines[i + 1].startswith("+++ "):
                return f"line {i + 2}: '+++ ' header expected"
            i += 2
            continue
        m = HUNK.match(lines[i])
        if not m:
            return f"line {i + 1}: hunk header '@@ -a,b +c,d @@' expected"
        old, new = int(m.group(2) or 1), int(m.group(4) or 1)
        hunks += 1
        i += 1
        while i < len(lines) and (old > 0 or new > 0):
            tag = lines[i][:1]
            if tag == "\\":
                i += 1
                continue
            if tag in (" ", ""):
                old, new = old - 1, new - 1
            elif tag == "-":
                old -= 1
            elif tag == "+":
                new -= 1
            else:
                return f"line {i + 1}: hunk body line must start with ' ', '-' or '+'"
            i += 1
        if old != 0 or new != 0:
            return f"hunk {hunks}: line counts do not match its header"
    return None if hunks else "no hunks"


def parse_verdict(text: str) -> str | None:
    text = text.strip()
    try:
        value = json.loads(extract_code(text)[1] if text.startswith("```") else text)
        if isinstance(value, dict) and isinstance(value.get("verdict"), (str, bool)):
            return str(value["verdict"]).strip().lower()
    except (json.JSONDecodeError, ValueError):
        pass
    m = re.search(r"verdict\s*[:=]\s*\"?([A-Za-z_-]+)", text, re.I)
    if m:
        return m.group(1).lower()
    m = re.match(r"\W*([A-Za-z]+)", text)
    if m and m.group(1).lower() in VERDICT_WORDS:
        return m.group(1).lower()
    return None


def check_compiles(answer: str) -> tuple[bool | None, str]:
    """The compile-only check of an answer's code."""
    lang, code = extract_code(answer)
    if lang not in PYTHON_TAGS:
        return None, f"{lang} code is not checked"
    if not compiles(code):
        return False, "no code" if not code.strip() or compiles(code + "\npass") else "does not compile"
    return True, "compiles"


def check_one(role: str, row: dict[str, Any], reference: str, answer: str) -> tuple[bool | None, str]:
    """(passed, why) of the role's check without running tests; passed is None when the role or
    the answer's language has no check."""
    if role == "coder":
        return check_compiles(answer)
    if role == "fixer":
        if is_unified_diff(reference):
            problem = diff_problem(extract_code(answer)[1] if "```" in answer else answer)
            return problem is None, problem or "well-formed unified diff"
        return check_compiles(answer)
    if role == "judge":
        got = parse_verdict(answer)
        logged = (row.get("signals") or {}).get("verdict") or parse_verdict(reference)
        if got is None:
            return False, "no verdict found"
        if logged is None:
            return True, f"verdict {got!r} (nothing logged to compare)"
        return got == str(logged).strip().lower(), f"verdict {got!r}, logged {str(logged).lower()!r}"
    return None, f"no check for role {role}"


CHECK_BASIS = {"coder": "compile-only", "judge": "verdict agrees", "fixer": "diff form or compile-only"}


def runs_tests(role: str, row: dict[str, Any], reference: str) -> bool:
    """Whether the row's answer is checked by running the row's tests."""
    return role == "coder" or (role == "fixer" and not is_unified_diff(reference))


def _tested_outcomes(answers: list[str], tests: list[list[str]]) -> list[dict[str, Any]]:
    """Each answer run against its tests in the sandbox (one batch): passed when every test passed."""
    codes = {i: code for i, a in enumerate(answers) if (code := tested_code(a)) is not None}
    results = dict(zip(codes, sandbox.run_many([(code, tests[i]) for i, code in codes.items()]))) if codes else {}
    out = []
    for i, t in enumerate(tests):
        res = results.get(i)
        if res is None:
            why = check_compiles(answers[i])[1]
            out.append({"passed": False, "tested": True, "tests_passed": 0, "tests_total": len(t), "why": why})
            continue
        ok = res.total > 0 and res.passed == res.total
        outcome = {
            "passed": ok,
            "tested": True,
            "tests_passed": res.passed,
            "tests_total": res.total,
            "why": f"{res.passed}/{res.total} tests passed" + (f" ({res.error})" if res.error else ""),
        }
        if (mode := getattr(res, "sandbox", None)) is not None:  # the sandbox's mode, where it reports one
            outcome["sandbox"] = mode
            outcome["isolation"] = res.isolation  # how the verdict was decided (learning/sandbox/execute.py)
        out.append(outcome)
    return out


def _rate(outcomes: list[dict[str, Any]]) -> tuple[float | None, int, int]:
    checked = [o for o in outcomes if o["passed"] is not None]
    passed = sum(bool(o["passed"]) for o in checked)
    return (passed / len(checked) if checked else None), len(checked), passed


MONITORED_ROLES = ("coder", "fixer")  # roles whose answers are code that runs


def monitor(role: str, answers: list[str]) -> dict[str, Any]:
    """What the reward-hacking monitor flags in the answers' Python code (for coder and fixer):
    each answer's reasons, how many answers it flagged and their share, and the reasons counted."""
    if role not in MONITORED_ROLES:
        return {"reasons": [[] for _ in answers], "suspicious_answers": 0, "suspicious_share": None}
    reasons, read = [], 0
    for answer in answers:
        lang, code = extract_code(answer)
        python = lang in PYTHON_TAGS  # a block fenced as another language is not read
        read += python
        reasons.append(suspicious(code) if python else [])
    flagged = sum(1 for r in reasons if r)
    return {
        "reasons": reasons,
        "suspicious_answers": flagged,
        "suspicious_share": round(flagged / read, 4) if read else None,  # of the answers read
        "suspicious_reasons": dict(Counter(r for rs in reasons for r in rs).most_common()),
    }


def score(role: str, rows: list[dict[str, Any]], answers: list[str]) -> dict[str, Any]:
    """Pass rates (from tests where rows carry them, else the role's check, never mixed), mean
    similarity to the references, each row's outcome, and what the reward-hacking monitor flagged
    (it changes no outcome)."""
    examples = [to_example(r) for r in rows]
    tested = [i for i, e in enumerate(examples) if e["tests"] and runs_tests(role, rows[i], e["completion"])]
    outcomes: list[dict[str, Any] | None] = [None] * len(rows)
    for i, outcome in zip(
        tested, _tested_outcomes([answers[i] for i in tested], [examples[i]["tests"] for i in tested])
    ):
        outcomes[i] = outcome
    for i, (row, example, answer) in enumerate(zip(rows, examples, answers)):
        if outcomes[i] is None:
            ok, why = check_one(role, row, example["completion"], answer)
            outcomes[i] = {"passed": ok, "tested": False, "why": why}
    sims = [difflib.SequenceMatcher(None, a, e["completion"]).ratio() for a, e in zip(answers, examples)]
    done = [o for o in outcomes if o is not None]
    flagged = monitor(role, answers)
    for outcome, reasons in zip(done, flagged.pop("reasons")):
        if reasons:
            outcome["suspicious"] = reasons
    tests_rate, tested_rows, tests_passed = _rate([o for o in done if o["tested"]])
    checks_rate, checked, checks_passed = _rate([o for o in done if not o["tested"]])
    return {
        "pass_rate": tests_rate if tested_rows else checks_rate,
        "pass_rate_basis": "tests" if tested_rows else (CHECK_BASIS.get(role) if checked else None),
        "pass_rate_tests": tests_rate,
        "tested_rows": tested_rows,
        "tests_passed_rows": tests_passed,
        "pass_rate_checks": checks_rate,
        "checks_basis": CHECK_BASIS.get(role),
        "checked": checked,
        "passed": checks_passed,
        "similarity": sum(sims) / len(sims) if sims else None,
        "checks": done,
        **flagged,
    }
