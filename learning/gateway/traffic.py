"""The gateway's traffic over a window, read back from the runs it recorded (those whose meta
has a `gateway` object, learning/gateway/recording.py): requests per time bucket, latency
percentiles, the share scored, failed and aborted, and token totals, overall and per role,
backend and model. Read-only.

Percentiles are nearest-rank: the p-th of n sorted values is the ceil(p/100 * n)-th smallest
(always a latency that was measured, never one interpolated between two).
"""

from __future__ import annotations

import math
import time
from typing import Any, NamedTuple

from pydantic import BaseModel, Field

from learning.store import Store

MAX_HOURS = 720  # 30 days
MAX_POINTS = 240  # a chart's buckets at most
BUCKETS_S = (60, 120, 180, 300, 360, 600, 900, 1200, 1800, 3600, 7200, 10800, 14400, 21600, 28800, 43200, 86400)
NONE = "(none)"  # a role, backend or model the run's meta does not name

# The window's gateway runs: a range of the index on run time (runs_ts), and the meta JSON read
# only for runs inside it. A meta that is not valid JSON (NaN written by an older learnloop) is
# not a gateway run, instead of an error for the whole page.
WINDOW_SQL = """
SELECT ts, role, model, reward IS NOT NULL AS scored,
       json_extract(meta, '$.gateway.backend') AS backend,
       json_extract(meta, '$.gateway.latency_ms') AS latency_ms,
       json_extract(meta, '$.gateway.prompt_tokens') AS prompt_tokens,
       json_extract(meta, '$.gateway.completion_tokens') AS completion_tokens,
       json_extract(meta, '$.gateway.finish_reason') AS finish_reason
FROM runs
WHERE ts >= ? AND ts <= ? AND CASE WHEN json_valid(meta) THEN json_type(meta, '$.gateway') END = 'object'
"""


class Latency(BaseModel):
    """Latency (ms, from the request to the recorded answer) of the runs that carry one."""

    count: int = 0
    p50: float | None = None
    p95: float | None = None
    mean: float | None = None


class Group(BaseModel):
    """One slice of the window's gateway runs (all of them, or one role, backend or model)."""

    name: str
    requests: int = 0
    scored: int = 0  # with a reward (not pending); a failed run's 0.0 counts too
    errors: int = 0  # finish_reason "error": the backend failed (recorded with --record-failures)
    aborted: int = 0  # finish_reason "aborted": the client left mid-stream
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency: Latency = Field(default_factory=Latency)

    @property
    def scored_share(self) -> float | None:
        return self.scored / self.requests if self.requests else None

    @property
    def error_share(self) -> float | None:
        return self.errors / self.requests if self.requests else None

    @property
    def aborted_share(self) -> float | None:
        return self.aborted / self.requests if self.requests else None


class Bucket(BaseModel):
    start: float  # Unix time the bucket begins
    seconds: float  # its length inside the window: bucket_s, less for the oldest when the window is not whole buckets
    requests: int
    p50_ms: float | None  # None: no latency recorded in it

    @property
    def per_minute(self) -> float:
        return self.requests * 60 / self.seconds


class Traffic(BaseModel):
    hours: int
    since: float  # the window: since <= ts <= until (Unix times)
    until: float
    bucket_s: int
    total: Group
    by_role: list[Group]
    by_backend: list[Group]
    by_model: list[Group]
    buckets: list[Bucket]  # every bucket of the window, oldest first, empty ones included

    @property
    def per_minute(self) -> float:
        """Mean requests per minute over the whole window."""
        return self.total.requests / (self.hours * 60)

    @property
    def peak_per_minute(self) -> float:
        """Requests per minute in the busiest bucket."""
        return max((b.per_minute for b in self.buckets), default=0.0)


def percentile(ordered: list[float], p: float) -> float | None:
    """The nearest-rank p-th percentile of values sorted ascending (None for none)."""
    if not ordered:
        return None
    return ordered[max(1, math.ceil(p / 100 * len(ordered))) - 1]


def bucket_seconds(hours: int) -> int:
    """The smallest bucket that keeps a window of `hours` to at most MAX_POINTS buckets."""
    return next((b for b in BUCKETS_S if hours * 3600 / b <= MAX_POINTS), BUCKETS_S[-1])


def _number(value: Any) -> float | None:
    """A finite number from the meta (bool and text are not: a hand-logged run may hold anything)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def _count(value: Any) -> int:
    number = _number(value)
    return int(number) if number is not None and number >= 0 else 0


def _name(value: Any) -> str:
    return value if isinstance(value, str) and value else NONE


class Row(NamedTuple):
    """One gateway run of the window, its meta's figures checked."""

    ts: float
    role: str
    backend: str
    model: str
    scored: bool
    finish_reason: Any
    latency_ms: float | None  # None: the run carries no usable latency
    prompt_tokens: int
    completion_tokens: int


def read_rows(store: Store, since: float, until: float) -> list[Row]:
    """The gateway runs with since <= ts <= until."""
    with store.read() as conn:
        found = conn.execute(WINDOW_SQL, (since, until)).fetchall()
    return [
        Row(
            ts=r["ts"],
            role=_name(r["role"]),
            backend=_name(r["backend"]),
            model=_name(r["model"]),
            scored=bool(r["scored"]),
            finish_reason=r["finish_reason"],
            latency_ms=_number(r["latency_ms"]),
            prompt_tokens=_count(r["prompt_tokens"]),
            completion_tokens=_count(r["completion_tokens"]),
        )
        for r in found
    ]


def _latency(values: list[float]) -> Latency:
    ordered = sorted(values)
    if not ordered:
        return Latency()
    return Latency(
        count=len(ordered),
        p50=percentile(ordered, 50),
        p95=percentile(ordered, 95),
        mean=sum(ordered) / len(ordered),
    )


def summarize(name: str, rows: list[Row]) -> Group:
    """A group's figures from its rows."""
    finishes = [r.finish_reason for r in rows]
    return Group(
        name=name,
        requests=len(rows),
        scored=sum(r.scored for r in rows),
        errors=finishes.count("error"),
        aborted=finishes.count("aborted"),
        prompt_tokens=sum(r.prompt_tokens for r in rows),
        completion_tokens=sum(r.completion_tokens for r in rows),
        latency=_latency([r.latency_ms for r in rows if r.latency_ms is not None]),
    )


def _groups(rows: list[Row], field: str) -> list[Group]:
    """One group per value of a field (role, backend, model), the busiest first."""
    split: dict[str, list[Row]] = {}
    for r in rows:
        split.setdefault(getattr(r, field), []).append(r)
    groups = [summarize(name, part) for name, part in split.items()]
    return sorted(groups, key=lambda g: (-g.requests, g.name))


def _buckets(rows: list[Row], since: float, until: float, bucket_s: int, count: int) -> list[Bucket]:
    """Buckets counted back from `until`, so the newest is whole and only the oldest may be cut
    short by the window (its rate is over its own length)."""
    counts, latencies = [0] * count, [[] for _ in range(count)]
    for r in rows:
        i = max(0, count - 1 - int((until - r.ts) // bucket_s))
        counts[i] += 1
        if r.latency_ms is not None:
            latencies[i].append(r.latency_ms)
    out = []
    for i in range(count):
        start = max(since, until - (count - i) * bucket_s)
        end = until - (count - 1 - i) * bucket_s
        p50 = percentile(sorted(latencies[i]), 50)
        out.append(Bucket(start=start, seconds=end - start, requests=counts[i], p50_ms=p50))
    return out


def traffic(store: Store, hours: int = 24, now: float | None = None) -> Traffic:
    """The gateway's traffic over the `hours` (1..MAX_HOURS) up to `now` (default: this moment)."""
    if not 1 <= hours <= MAX_HOURS:
        raise ValueError(f"hours must be from 1 to {MAX_HOURS}, got {hours}")
    until = time.time() if now is None else now
    since = until - hours * 3600
    rows = read_rows(store, since, until)
    bucket_s = bucket_seconds(hours)
    return Traffic(
        hours=hours,
        since=since,
        until=until,
        bucket_s=bucket_s,
        total=summarize("all", rows),
        by_role=_groups(rows, "role"),
        by_backend=_groups(rows, "backend"),
        by_model=_groups(rows, "model"),
        buckets=_buckets(rows, since, until, bucket_s, math.ceil(hours * 3600 / bucket_s)),
    )
