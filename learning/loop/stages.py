"""Timed stages, run in order until one fails: the shape of a cycle and of the demo."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any, Literal

from pydantic import BaseModel, Field

from learning.jobs.manage import JobCancelled


class Stage(BaseModel):
    name: str
    status: Literal["done", "skipped", "failed"]
    seconds: float
    detail: dict[str, Any] = Field(default_factory=dict)


def run_stages(
    steps: Iterable[tuple[str, Callable[[], dict]]],
    stages: list[Stage],
    error_text: Callable[[Exception], str] = str,
    on_event: Callable[[str, str], None] | None = None,
) -> Stage | None:
    """Run each step in order, appending its timed Stage to `stages`; returns the stage that failed, if any.

    A step returns its detail (a detail with `skipped` true marks the stage skipped); an exception
    ends the run as a failed stage whose detail holds `error_text(exc)`. A cancelled job's
    JobCancelled passes through. `on_event(name, status)` hears "starting", then the outcome.
    """
    for name, fn in steps:
        if on_event is not None:
            on_event(name, "starting")
        t0 = time.perf_counter()
        try:
            detail = fn()
            status = "skipped" if detail.get("skipped") else "done"
        except JobCancelled:
            raise
        except Exception as exc:  # a failed stage ends the run, with what it learnt so far
            detail, status = {"error": error_text(exc)}, "failed"
        stage = Stage(name=name, status=status, seconds=round(time.perf_counter() - t0, 2), detail=detail)
        stages.append(stage)
        if on_event is not None:
            on_event(name, status)
        if status == "failed":
            return stage
    return None
