"""The arguments both curation verbs take (make_sft in learning/data/curate.py, make_preferences
in learning/data/preferences.py): their declarations, from which the faces are built, and their
checks: every problem reported at once, then the role's template resolved. The verbs import this
module as `arg` and annotate each shared parameter with its type here (the time window's three
come from learning/params.py, which other verbs share too).
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import Field

from learning.data.templates import resolve_template
from learning.errors import InvalidInput, check, shown
from learning.params import Days as Days
from learning.params import Since as Since
from learning.params import Until as Until
from learning.runs.schema import ROLE_PATTERN
from learning.runs.stats import time_window
from learning.store import Store

DEFAULT_MIN_REWARD = 0.7

# The arguments both curation verbs take.
CurationRole = Annotated[
    str,
    Field(
        description="Whose runs: coder (spec -> code), fixer (diagnostics -> patch), "
        "judge (code -> verdict), or a role of your own with a template."
    ),
]
Limit = Annotated[int | None, Field(ge=1, description="At most this many rows (SFT keeps the highest rewards).")]
TaskType = Annotated[str | None, Field(description="Only runs of this task_type.")]
Complexity = Annotated[str | None, Field(description="Only runs of this complexity.")]
Agent = Annotated[str | None, Field(description="Only runs of this agent.")]
MinLength = Annotated[
    int | None,
    Field(ge=0, description="Only runs whose instruction + input + output have at least this many characters."),
]
MaxLength = Annotated[
    int | None,
    Field(ge=0, description="Only runs whose instruction + input + output have at most this many characters."),
]
MaxPerTask = Annotated[int, Field(ge=1, description="At most this many rows per task_key (attempts at one task).")]
Template = Annotated[
    str | None,
    Field(
        description="Prompt template for this call. Placeholders: {instruction}, {input}, "
        "{task_type}, {complexity}, {role}. Default: the role's template."
    ),
]
TestFraction = Annotated[
    float, Field(ge=0, le=0.5, description="Share of tasks held out for test (split by task_key).")
]
Seed = Annotated[int, Field(description="Seed of the train/test split.")]
Redact = Annotated[
    bool,
    Field(
        description="Replace secrets and personal data with typed placeholders. Keep true "
        "unless you know the runs hold none; false is recorded in the metadata."
    ),
]
Dedupe = Annotated[
    bool, Field(description="Drop exact and near-exact duplicates (same text ignoring case and white space).")
]
MinRows = Annotated[int, Field(ge=1, description="Fail (writing nothing) if fewer rows than this are left.")]
DryRun = Annotated[
    bool, Field(description="Report what would be written, with the runs left after each filter; write nothing.")
]


def curation_filters(min_reward, max_reward, task_type, complexity, agent, since, until, days, min_length, max_length):
    """The filters of a curation, its time window resolved to timestamps."""
    start, end = time_window(since, until, days)
    return {
        "min_reward": min_reward,
        "max_reward": max_reward,
        "task_type": task_type,
        "complexity": complexity,
        "agent": agent,
        "since": start,
        "until": end,
        "min_length": min_length,
        "max_length": max_length,
    }


def check_curation(
    role, fmt, formats, test_fraction, limit, max_per_task, min_length, max_length, min_reward, min_rows
) -> list[str]:
    """What is wrong with the arguments both verbs share, every problem at once."""
    problems = []
    if not isinstance(role, str) or not re.fullmatch(ROLE_PATTERN, role):
        problems.append(f"role {shown(role)} is not a role name (lower-case letters, digits, '_' or '-')")
    if fmt not in formats:
        problems.append(f"format {fmt!r} is not one of {', '.join(formats)}")
    if not 0 <= test_fraction <= 0.5:
        problems.append(f"test_fraction must be in [0, 0.5], got {test_fraction}")
    if limit is not None and limit < 1:
        problems.append(f"limit must be at least 1, got {limit}")
    if max_per_task is not None and max_per_task < 1:
        problems.append(f"max_per_task must be at least 1, got {max_per_task}")
    if min_length is not None and max_length is not None and min_length > max_length:
        problems.append(f"min_length ({min_length}) is above max_length ({max_length}): no run can pass both")
    if min_reward is not None and not 0 <= min_reward <= 1:
        problems.append(f"min_reward must be in [0, 1], got {min_reward}")
    if min_rows < 1:
        problems.append(f"min_rows must be at least 1, got {min_rows}")
    return problems


def curation_template(store: Store, role: str, template: str | None, problems: list[str]) -> tuple[str, str]:
    """Resolve the role's template; report its problems together with the others."""
    check(problems, "Cannot make the dataset:")
    try:
        return resolve_template(store, role, template)
    except InvalidInput as exc:
        if not exc.problems:  # an unknown role: its own message says what exists
            raise
        check(problems + exc.problems, "Cannot make the dataset:")
        raise
