"""Time as learnloop writes it: UTC, to the second, ISO 8601 with a `Z`, and the stamps in ids."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import overload

EARLIEST = datetime(2000, 1, 1, tzinfo=timezone.utc)
LATEST = datetime(2100, 1, 1, tzinfo=timezone.utc)
RANGE_TEXT = "between 2000-01-01 and 2100-01-01 (UTC)"
MAX_DAYS = 36_525  # a century: the longest window a `days` argument may name


def in_range(when: datetime | float) -> bool:
    """Is a time (aware datetime or Unix time) within the years learnloop accepts, 2000 to 2099?"""
    ts = when.timestamp() if isinstance(when, datetime) else when
    return EARLIEST.timestamp() <= ts < LATEST.timestamp()


@overload
def iso(ts: float) -> str: ...
@overload
def iso(ts: None) -> None: ...
def iso(ts: float | None) -> str | None:
    """2026-11-30T05:21:46Z for a Unix time; None stays None."""
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, tz=timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def stamp() -> str:
    """20261130-052146: the current UTC time as it appears in ids and file names."""
    return datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
