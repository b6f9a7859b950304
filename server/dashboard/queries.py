"""The dashboard's query strings, checked: a refused one is BadRequest (the 400 page) naming every
problem and what to change."""

from __future__ import annotations

import math
from typing import Any

from learning.gateway.traffic import MAX_HOURS

TEXT_FILTERS = ("role", "agent", "adapter_id", "scored_by")
MAX_FILTER_CHARS = 200
DEFAULT_HOURS = 24


class BadRequest(Exception):
    """A query the dashboard refuses, with what to change (answered 400)."""


def run_filters(query: Any) -> tuple[dict[str, Any], int]:
    """The /runs filters from the query string, checked: every problem named at once."""
    problems, filters = [], {}
    for name in TEXT_FILTERS:
        value = query.get(name) or None
        if value is not None and len(value) > MAX_FILTER_CHARS:
            problems.append(f"{name} must be at most {MAX_FILTER_CHARS} characters.")
        filters[name] = value
    for name in ("min_reward", "max_reward"):
        text = query.get(name) or ""
        try:
            value = float(text) if text else None
        except ValueError:
            value = math.nan
        if value is not None and not 0.0 <= value <= 1.0:  # NaN fails too
            problems.append(f"{name} must be a number in [0, 1], got {text[:40]!r}.")
            value = None
        filters[name] = value
    low, high = filters["min_reward"], filters["max_reward"]
    if low is not None and high is not None and low > high:
        problems.append("min_reward must not be above max_reward.")
    text = query.get("limit") or "50"
    limit = int(text) if text.isascii() and text.isdigit() and len(text) <= 4 else 0
    if not 1 <= limit <= 500:
        problems.append(f"limit must be a whole number from 1 to 500, got {text[:40]!r}.")
    if problems:
        raise BadRequest(" ".join(problems))
    return filters, limit


def window_hours(query: Any) -> int:
    """The /traffic ?hours=, checked."""
    text = query.get("hours") or str(DEFAULT_HOURS)
    hours = int(text) if text.isascii() and text.isdigit() and len(text) <= 4 else 0
    if not 1 <= hours <= MAX_HOURS:
        raise BadRequest(f"hours must be a whole number from 1 to {MAX_HOURS}, got {text[:40]!r}.")
    return hours
