"""Per-role instruction templates.

A template turns a run into a prompt. Placeholders: {instruction}, {input}, {task_type},
{complexity}, {role}; nothing else. A template is split into blocks at blank lines; a block
whose placeholders are all empty for a run is left out (no empty "### Code" section when a
run has no input). Which template a role uses: the one passed to the call, else the file
`<home>/templates/<role>.txt`, else the built-in one (coder, fixer, judge). A new role needs
one of the first two.
"""

from __future__ import annotations

import string
from typing import Any

from learning.errors import InvalidInput
from learning.runs.stats import role_run_counts
from learning.store import Store

PLACEHOLDERS = ("instruction", "input", "task_type", "complexity", "role")

BUILTIN: dict[str, str] = {
    # spec -> code
    "coder": "Write code that meets the specification.\n\n### Specification\n{instruction}\n\n"
    "### Context\n{input}\n\n### Code\n",
    # diagnostics -> patch
    "fixer": "Fix the code so that the diagnostics are resolved. Reply with the patch.\n\n### Task\n{instruction}\n\n"
    "### Code and diagnostics\n{input}\n\n### Patch\n",
    # code -> verdict
    "judge": "Review the code against the task. Reply with a verdict (pass or fail) and the reasons.\n\n"
    "### Task\n{instruction}\n\n### Code\n{input}\n\n### Verdict\n",
}


def template_problems(text: str) -> list[str]:
    """Everything wrong with a template (empty list when it is fine)."""
    try:
        fields = [f for _, f, spec, conv in string.Formatter().parse(text) if f is not None]
        specs = [
            (f, spec, conv) for _, f, spec, conv in string.Formatter().parse(text) if f is not None and (spec or conv)
        ]
    except ValueError as exc:
        return [f"the template is malformed ({exc}); write literal braces as {{{{ and }}}}"]
    problems = []
    unknown = sorted({f for f in fields if f not in PLACEHOLDERS})
    if unknown:
        problems.append(
            f"unknown placeholder(s) {', '.join('{' + f + '}' for f in unknown)}; "
            f"use only {', '.join('{' + p + '}' for p in PLACEHOLDERS)}"
        )
    if specs:
        problems.append(
            "placeholders take no format spec or conversion (write {instruction}, not "
            f"{{{specs[0][0]}{'!' + specs[0][2] if specs[0][2] else ''}{':' + specs[0][1] if specs[0][1] else ''}}})"
        )
    if not {"instruction", "input"} & set(fields):
        problems.append("the template must use {instruction} or {input}, or every prompt would be the same")
    return problems


def resolve_template(store: Store, role: str, template: str | None) -> tuple[str, str]:
    """(template text, where it came from) for a role; InvalidInput names the roles that exist."""
    if template is not None:
        text, source = template, "argument"
    elif (path := store.home / "templates" / f"{role}.txt").is_file():
        text, source = path.read_text(encoding="utf-8"), str(path)
    elif role in BUILTIN:
        text, source = BUILTIN[role], "builtin"
    else:
        custom = sorted(p.stem for p in (store.home / "templates").glob("*.txt"))
        with_runs = role_run_counts(store)
        raise InvalidInput(
            f"Unknown role {role!r}: it has no instruction template. Roles with templates: "
            f"{', '.join(sorted(set(BUILTIN) | set(custom)))}. Roles with runs: "
            f"{', '.join(f'{r} ({n})' for r, n in with_runs.items()) or 'none'}. For a new role pass a template "
            f"(placeholders {', '.join('{' + p + '}' for p in PLACEHOLDERS)}) or write {store.home / 'templates' / (role + '.txt')}."
        )
    problems = template_problems(text)
    if problems:
        raise InvalidInput(f"Template for role {role!r} ({source}): " + "; ".join(problems) + ".", problems)
    return text, source


class Compiled:
    """A template parsed once: its blocks, each with the placeholders it uses."""

    def __init__(self, text: str):
        self.text = text
        self.blocks = [
            (block, [f for _, f, _, _ in string.Formatter().parse(block) if f]) for block in text.split("\n\n")
        ]

    def render(self, fields: dict[str, Any]) -> str:
        """The prompt for one run: blocks whose placeholders are all empty are dropped."""
        out = []
        for block, names in self.blocks:
            if not names:
                out.append(block)
            elif any(fields[n] for n in names):
                out.append(block.format_map(fields))
        return "\n\n".join(out)


def render(template: str, fields: dict[str, Any]) -> str:
    return Compiled(template).render({n: fields.get(n) or "" for n in PLACEHOLDERS})


def template_stops(template: str) -> list[str]:
    """Where an answer to this template's prompt has ended: a new line that starts one of the
    template's own sections again (each block's first line when it holds no placeholder, such as
    "### Specification" or "### Code"). A model that runs on past its answer tends to start the
    next prompt; evaluation cuts it there as serving would."""
    stops = []
    for block, _ in Compiled(template).blocks:
        parts = list(string.Formatter().parse(block.strip("\n").split("\n", 1)[0]))
        first = "".join(literal for literal, _, _, _ in parts).strip()  # "{{" written as "{"
        if first and all(field is None for _, field, _, _ in parts):
            stops.append("\n" + first)
    return list(dict.fromkeys(stops))
