"""The /traffic page: the gateway's traffic over a window of hours (learning/gateway/traffic.py
reads it), as charts and tables. Read-only."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from learning.clock import iso
from learning.gateway.traffic import Traffic, traffic
from learning.store import Store
from server.dashboard.charts import line_chart

CHOICES = ((1, "1 h"), (6, "6 h"), (24, "24 h"), (168, "7 days"), (720, "30 days"))


def bucket_text(seconds: int) -> str:
    """60 -> "1-minute", 21600 -> "6-hour"."""
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds % size == 0:
            return f"{seconds // size}-{unit}"
    return f"{seconds}-second"


def _time_text(x: float) -> str:
    return datetime.fromtimestamp(x, tz=timezone.utc).strftime("%m-%d %H:%M")


def charts(t: Traffic) -> dict[str, Any]:
    """Requests per minute and p50 latency per bucket (None each when the window had no traffic)."""
    if not t.total.requests:
        return {"rate_chart": None, "latency_chart": None}
    every = bucket_text(t.bucket_s)
    rate = [(b.start, b.per_minute) for b in t.buckets]
    p50 = [(b.start, b.p50_ms) for b in t.buckets if b.p50_ms is not None]
    return {
        "rate_chart": line_chart(
            {"requests/min": rate}, f"Requests per minute ({every} buckets, UTC)", x_text=_time_text
        ),
        "latency_chart": line_chart({"p50 ms": p50}, f"p50 latency, ms ({every} buckets, UTC)", x_text=_time_text)
        if p50
        else None,
    }


def traffic_page(store: Store, hours: int) -> dict[str, Any]:
    t = traffic(store, hours)
    return {
        "traffic": t,
        "hours": hours,
        "choices": CHOICES,
        "bucket": bucket_text(t.bucket_s),
        "since": iso(t.since),
        "until": iso(t.until),
        "groups": (("role", t.by_role), ("backend", t.by_backend), ("model", t.by_model)),
        **charts(t),
    }
