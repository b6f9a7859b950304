"""Domain errors. Each says what went wrong and what to do next.

The MCP layer turns them into ToolError, the CLI into a message and a non-zero exit.
"""

from __future__ import annotations


class LearnloopError(Exception):
    """A problem the caller can fix. `problems` lists every issue found, not just the first."""

    def __init__(self, message: str, problems: list[str] | None = None):
        self.problems = list(problems or [])
        if self.problems and len(self.problems) > 1:
            message = message + "\n" + "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(message)

    @property
    def message(self) -> str:
        return str(self)


class NotFound(LearnloopError):
    """A named thing (run, dataset, adapter, job) does not exist."""


class InvalidInput(LearnloopError):
    """An argument or a record is malformed."""


class Conflict(LearnloopError):
    """The request is valid but the current state does not allow it."""


class Forbidden(LearnloopError):
    """The caller does not hold what the change needs (a run's reward token)."""


def shown(value: object, limit: int = 80) -> str:
    """A caller's value for an error message: its repr, cut to `limit` characters when longer."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(str(value))} characters)"


def check(problems: list[str], message: str = "Invalid input:") -> None:
    """Raise InvalidInput listing every problem, if there are any."""
    if problems:
        if len(problems) == 1:
            raise InvalidInput(f"{message} {problems[0]}" if message.endswith(":") else problems[0], problems)
        raise InvalidInput(message, problems)


class ConfirmationNeeded(LearnloopError):
    """The change would alter which adapter agents get, and nobody confirmed it.

    `summary` says what would change, with the metrics of the adapters involved; the caller
    shows it to a person and calls again with confirm=True once they agree."""

    def __init__(self, summary: str):
        self.summary = summary
        super().__init__(
            summary + "\n\nThis changes which adapter agents get: show this to the person and, once they "
            "agree, call again with confirm=true."
        )
