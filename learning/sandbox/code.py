"""The code in an answer: the first fenced block, else the whole answer; and whether it is Python
worth running (it compiles and holds a statement)."""

from __future__ import annotations

import ast
import re

FENCE = re.compile(r"```([A-Za-z0-9_+-]*)[^\n]*\n(.*?)(?:```|\Z)", re.S)
PYTHON_TAGS = {"", "python", "py", "python3"}


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


def tested_code(answer: str) -> str | None:
    """The code of an answer to run against its row's tests; None when it has no Python code that
    compiles (a failure, not worth a process)."""
    lang, code = extract_code(answer)
    return code if lang in PYTHON_TAGS and compiles(code) else None
