"""What each dashboard page shows, read from the home's store through the library's own
readers. Nothing here writes: jobs are shown as recorded (`learnloop jobs` reconciles them)."""

from __future__ import annotations

import json
import math
from datetime import date
from pathlib import Path
from typing import Any

from learning.data.datasets import dataset_row, to_info
from learning.errors import NotFound
from learning.jobs.manage import JobStatus, status_of
from learning.jobs.queries import job_row, job_rows
from learning.registry.adapters import STATUSES, Adapter, adapter_history, get_adapter, list_adapters
from learning.registry.queries import known_roles
from learning.routing.drift import latest_drift
from learning.routing.experiments import list_experiments
from learning.runs.browse import daily_rewards, latest_runs
from learning.runs.stats import run_stats
from learning.store import Store
from server.dashboard.charts import line_chart

ACTIVE = ("queued", "running")


def overview(store: Store) -> dict[str, Any]:
    stats = run_stats(store, group_by="role")
    adapters = list_adapters(store)
    jobs = [status_of(r, 0) for r in job_rows(store, limit=200)]
    return {
        "stats": stats,
        "adapter_counts": {s: sum(a.status == s for a in adapters) for s in STATUSES},
        "active_jobs": sum(j.status in ACTIVE for j in jobs),
        "experiments": sum(e.status == "running" for e in list_experiments(store)),
    }


def _day_text(x: float) -> str:
    return date.fromordinal(int(x)).isoformat()


def runs_page(store: Store, filters: dict[str, Any], limit: int) -> dict[str, Any]:
    daily = daily_rewards(store)
    series = {
        role: [(float(date.fromisoformat(d.day).toordinal()), d.mean_reward) for d in days]
        for role, days in daily.items()
    }
    return {
        "stats": run_stats(store, group_by="role"),
        "chart": line_chart(series, "Daily mean reward per role", y_range=(0.0, 1.0), x_text=_day_text),
        "runs": latest_runs(store, **filters, limit=limit),
        "filters": filters,
        "limit": limit,
    }


def pretty(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True)


def adapters_by_role(store: Store) -> dict[str, list[Adapter]]:
    out: dict[str, list[Adapter]] = {}
    for a in list_adapters(store):
        out.setdefault(a.role, []).append(a)
    return dict(sorted(out.items()))


def loss_curve(adapter: Adapter) -> list[tuple[float, float]]:
    """(step, loss) from the adapter's metadata.json ("loss_curve"), when training wrote one."""
    try:
        data = json.loads((Path(adapter.path) / "metadata.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    points = []
    for point in data.get("loss_curve") or [] if isinstance(data, dict) else []:
        if isinstance(point, (list, tuple)) and len(point) == 2:
            try:
                step, loss = float(point[0]), float(point[1])
            except (TypeError, ValueError):
                continue
            if math.isfinite(step) and math.isfinite(loss):
                points.append((step, loss))
    return points


def loss_chart(adapter: Adapter | None) -> Any:
    points = loss_curve(adapter) if adapter is not None else []
    return line_chart({"loss": points}, "Training loss by step") if points else None


def adapter_page(store: Store, adapter_id: str) -> dict[str, Any]:
    """One adapter's lineage: its dataset, itself, every event (evaluations with their metrics)."""
    adapter = get_adapter(store, adapter_id)  # NotFound: the page answers 404
    row = dataset_row(store, adapter.dataset_id) if adapter.dataset_id else None
    return {
        "adapter": adapter,
        "dataset": to_info(row) if row is not None else None,
        "events": adapter_history(store, adapter_id),
        "loss_chart": loss_chart(adapter),
    }


def _job_adapter(store: Store, job: JobStatus) -> Adapter | None:
    adapter_id = (job.result or {}).get("adapter_id") or job.subject
    if not isinstance(adapter_id, str):
        return None
    try:
        return get_adapter(store, adapter_id)
    except NotFound:
        return None


def jobs_page(store: Store, limit: int = 50) -> dict[str, Any]:
    jobs = [status_of(r, 0) for r in job_rows(store, limit=limit)]
    finished = [j for j in jobs if j.status not in ACTIVE]
    return {
        "active": [j for j in jobs if j.status in ACTIVE],
        "finished": [(j, loss_chart(_job_adapter(store, j)) if j.kind == "train" else None) for j in finished],
    }


def job_json(store: Store, job_id: str) -> dict[str, Any]:
    """What the jobs page's script polls: status and progress, as recorded."""
    row = job_row(store, job_id)
    if row is None:
        raise NotFound(f"No job {job_id[:80]!r}.")
    job = status_of(row, 0)
    p = job.progress
    keys = ("step", "total_steps", "loss", "eta_s", "stage", "message")
    return {"job_id": job.job_id, "status": job.status, "elapsed_s": job.elapsed_s} | {k: p.get(k) for k in keys}


def routing_page(store: Store) -> dict[str, Any]:
    production = [a for a in list_adapters(store, status="production")]
    roles = sorted(set(known_roles(store)) | {a.role for a in production})
    return {
        "production": production,
        "experiments": list_experiments(store),
        "drift": {role: latest_drift(store, role) for role in roles},
    }
