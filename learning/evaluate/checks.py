"""Generation checks per role: does an answer do the role's job? No torch here.

- coder: the code in the answer (the first fenced block, else the whole answer) is Python
  that compiles (`compile()`) and is not empty (at least one statement); blocks fenced as another language are not checked (counted
  as unchecked, not as failures). When the test row carries tests (a list of Python
  statements, usually asserts, in `tests`, `signals.tests` or `meta.tests`), the code must
  also pass them, run by learning.evaluate.sandbox in a subprocess with a timeout and no network.
- fixer: the answer must have the form of the reference: a unified diff when the reference
  is one (`--- `/`+++ ` headers, `@@ -a,b +c,d @@` hunks whose line counts add up), otherwise
  fixed code, checked like the coder's (compiles, and passes the row's tests if any).
- judge: the verdict parses (JSON {"verdict": ...}, a `verdict: X` line, or a leading
  pass/fail-like word) and agrees with the logged verdict (`signals.verdict`, else the
  verdict parsed from the reference).
- other roles: no check (pass rate None); similarity only.
Similarity is difflib's ratio between the answer and the reference, averaged.
"""

from __future__ import annotations

import ast
import difflib
import json
import re
from typing import Any

from learning.data.formats import to_example
from learning.evaluate import sandbox

FENCE = re.compile(r"```([A-Za-z0-9_+-]*)[^\n]*\n(.*?)(?:```|\Z)", re.S)
PYTHON_TAGS = {"", "python", "py", "python3"}
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


def extract_code(answer: str) -> tuple[str, str]:
    """(language tag, code) of the first fenced block, else ('', the whole answer)."""
    match = FENCE.search(answer)
    if match:
        return match.group(1).lower(), match.group(2)
    return "", answer


def compiles(code: str) -> bool:
    """Python that compiles and holds at least one statement (an empty or comment-only answer
    compiles too, but is no code)."""
    try:
        return bool(ast.parse(code).body) and compile(code, "<answer>", "exec") is not None
    except (SyntaxError, ValueError):
        return False


def row_tests(row: dict[str, Any]) -> list[str]:
    for holder in (row, row.get("signals") or {}, row.get("meta") or {}):
        tests = holder.get("tests") if isinstance(holder, dict) else None
        if isinstance(tests, list) and tests and all(isinstance(t, str) for t in tests):
            return tests
    return []


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


def check_code(answer: str, tests: list[str]) -> tuple[bool | None, str]:
    lang, code = extract_code(answer)
    if lang not in PYTHON_TAGS:
        return None, f"{lang} code is not checked"
    if not compiles(code):
        return False, "no code" if not code.strip() or compiles(code + "\npass") else "does not compile"
    if not tests:
        return True, "compiles"
    result = sandbox.run_tests(code, tests)
    return result.passed == result.total, f"{result.passed}/{result.total} tests passed" + (
        f" ({result.error})" if result.error else ""
    )


def check_one(role: str, row: dict[str, Any], reference: str, answer: str) -> tuple[bool | None, str]:
    """(passed, why); passed is None when the role or the answer's language has no check."""
    if role == "coder":
        return check_code(answer, row_tests(row))
    if role == "fixer":
        if is_unified_diff(reference):
            problem = diff_problem(extract_code(answer)[1] if "```" in answer else answer)
            return problem is None, problem or "well-formed unified diff"
        return check_code(answer, row_tests(row))
    if role == "judge":
        got = parse_verdict(answer)
        logged = (row.get("signals") or {}).get("verdict") or parse_verdict(reference)
        if got is None:
            return False, "no verdict found"
        if logged is None:
            return True, f"verdict {got!r} (nothing logged to compare)"
        return got == str(logged).strip().lower(), f"verdict {got!r}, logged {str(logged).lower()!r}"
    return None, f"no check for role {role}"


def score(role: str, rows: list[dict[str, Any]], answers: list[str]) -> dict[str, Any]:
    """Pass rate over the checked answers, and mean similarity to the references."""
    details, passed, checked, sims = [], 0, 0, []
    for row, answer in zip(rows, answers):
        reference = to_example(row)["completion"]
        ok, why = check_one(role, row, reference, answer)
        if ok is not None:
            checked += 1
            passed += bool(ok)
        sims.append(difflib.SequenceMatcher(None, answer, reference).ratio())
        details.append({"passed": ok, "why": why})
    return {
        "pass_rate": passed / checked if checked else None,
        "checked": checked,
        "passed": passed,
        "similarity": sum(sims) / len(sims) if sims else None,
        "checks": details,
    }
