"""Parameters that several verbs share, declared once with their description and limits.

A verb is a library function whose parameters are annotated `Annotated[type, Field(...)]`;
the MCP server and the CLI both build their tool and command from that signature
(server/verbs.py), so the two faces cannot disagree. Parameters without a Field (a Store,
an actor, a callback) are for Python callers only.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

# Marks an argument only the CLI takes, because a person at a terminal names it (a destination
# or a file outside the home, a runtime's URL): `Field(..., json_schema_extra=CLI_ONLY)`. The MCP
# tool leaves it out, so no agent can pass it; it must have a default (server/verbs.py).
CLI_ONLY: dict = {"cli_only": True}

Role = Annotated[str, Field(description="The agent role, e.g. coder, fixer, judge.")]
RoleFilter = Annotated[str | None, Field(description="Only this role.")]
TaskType = Annotated[
    str | None, Field(description="The route's task type, e.g. 'refactor' (more specific routes win).")
]
Complexity = Annotated[str | None, Field(description="The route's complexity: easy, medium, hard, or free text.")]
Reason = Annotated[str, Field(description="Why, kept in the record.")]
Since = Annotated[str | None, Field(description="Only runs at or after this time (ISO 8601).")]
Until = Annotated[str | None, Field(description="Only runs before this time (ISO 8601).")]
# The cap, MAX_DAYS (a century), is checked with the rest of the window (runs/stats.time_window).
Days = Annotated[float | None, Field(gt=0, description="Only runs of the last N days (instead of since).")]
Confirm = Annotated[
    bool,
    Field(
        description="A person agreed to this change of production (the CLI asks, or takes "
        "--yes; an MCP client is asked through elicitation when it can be)."
    ),
]
