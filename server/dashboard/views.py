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
from learning.routing.experiments import list_experiments
from learning.runs.browse import latest_runs, scorers
from learning.store import Store
from server.dashboard.charts import interval_chart, line_chart
from server.dashboard.figures import RunFigures

ACTIVE = ("queued", "running")


def overview(store: Store, figures: RunFigures) -> dict[str, Any]:
    stats = figures.stats
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


MAX_ADAPTER_LINES = 8  # the adapters with the most scored runs get a line each


def _daily_series(daily: dict[str, list[Any]]) -> dict[str, list[tuple[float, float]]]:
    return {
        key: [(float(date.fromisoformat(d.day).toordinal()), d.mean_reward) for d in days]
        for key, days in daily.items()
    }


def runs_page(store: Store, figures: RunFigures, filters: dict[str, Any], limit: int) -> dict[str, Any]:
    by_adapter = figures.daily_by_adapter
    busiest = sorted(by_adapter, key=lambda k: -sum(d.runs for d in by_adapter[k]))[:MAX_ADAPTER_LINES]
    runs = latest_runs(store, **filters, limit=limit)
    adapter_title = "Daily mean reward per adapter" + (
        f" (the {MAX_ADAPTER_LINES} with most scored runs)" if len(by_adapter) > MAX_ADAPTER_LINES else ""
    )
    return {
        "stats": figures.stats,
        "chart": line_chart(
            _daily_series(figures.daily_by_role), "Daily mean reward per role", y_range=(0.0, 1.0), x_text=_day_text
        ),
        "adapter_chart": line_chart(
            _daily_series({k: by_adapter[k] for k in sorted(busiest)}), adapter_title, (0.0, 1.0), _day_text
        ),
        "runs": runs,
        "scored_by": scorers(store, runs),
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


def _outcome(task: dict[str, Any]) -> str:
    if not task.get("tested"):
        return "not tested"
    a, b = task["adapter"].get("passed"), task["base"].get("passed")
    if a is None or b is None:
        return "unknown"
    return {(True, True): "both pass", (True, False): "adapter only", (False, True): "base only"}.get(
        (bool(a), bool(b)), "both fail"
    )


def _task(task: Any) -> dict[str, Any] | None:
    """A recorded task outcome with both models' parts as dicts (None: not an outcome)."""
    if not isinstance(task, dict):
        return None
    parts = {k: task.get(k) if isinstance(task.get(k), dict) else {} for k in ("adapter", "base")}
    task = task | parts
    return task | {"outcome": _outcome(task)}


COMPARISON_KEYS = ("tasks", "adapter_passed", "base_passed", "difference", "interval", "confidence", "tolerance")


def _comparison(conditions: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The paired comparison on tested rows, when the record holds all of it."""
    cmp = next((c["comparison"] for c in conditions if isinstance(c.get("comparison"), dict)), None)
    if cmp is None or not all(k in cmp for k in COMPARISON_KEYS) or not isinstance(cmp.get("mcnemar"), dict):
        return None
    interval = cmp["interval"]
    numbers = [
        cmp["difference"],
        cmp["tolerance"],
        cmp["confidence"],
        *(interval if isinstance(interval, list) else []),
    ]
    if not (isinstance(interval, list) and len(interval) == 2 and all(type(v) in (int, float) for v in numbers)):
        return None
    return cmp


def gate_evidence(metrics: dict[str, Any] | None) -> dict[str, Any] | None:
    """What the gate decided from: each condition with its numbers, the paired comparison on the
    tested rows (pass rates, interval, McNemar) and each task's outcome for both models."""
    gate = (metrics or {}).get("gate")
    if not isinstance(gate, dict) or not isinstance(gate.get("conditions"), list):
        return None
    conditions = [c for c in gate["conditions"] if isinstance(c, dict)]
    cmp = _comparison(conditions)
    chart = None
    if cmp is not None:
        low, high = cmp["interval"]
        chart = interval_chart(cmp["difference"], low, high, -cmp["tolerance"], cmp["confidence"])
    tasks = [t for t in map(_task, (metrics or {}).get("tasks") or []) if t is not None]
    return {"passed": gate.get("passed"), "conditions": conditions, "comparison": cmp, "chart": chart, "tasks": tasks}


def adapter_page(store: Store, adapter_id: str) -> dict[str, Any]:
    """One adapter's lineage: its dataset, itself, every event (evaluations with their metrics)."""
    adapter = get_adapter(store, adapter_id)  # NotFound: the page answers 404
    row = dataset_row(store, adapter.dataset_id) if adapter.dataset_id else None
    return {
        "adapter": adapter,
        "dataset": to_info(row) if row is not None else None,
        "events": adapter_history(store, adapter_id),
        "gate": gate_evidence(adapter.metrics),
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


LIVE_FIELDS = ("step", "total_steps", "loss", "steps_per_s", "eta_s", "stage", "message")
GRPO_FIELDS = ("reward", "reward_std", "dropped_share", "answers_per_s")
MAX_CURVE_POINTS = 1000


def curve_points(value: Any) -> list[list[float]]:
    """A progress curve as finite [step, value] pairs (anything else in the job row is left out)."""
    points = []
    for point in value if isinstance(value, list) else []:
        if isinstance(point, list) and len(point) == 2 and all(type(v) in (int, float) for v in point):
            if all(math.isfinite(v) for v in point):
                points.append([float(point[0]), float(point[1])])
    return points[-MAX_CURVE_POINTS:]


def job_json(store: Store, job_id: str) -> dict[str, Any]:
    """What the jobs page's script polls: status, progress and the curves so far, as recorded."""
    row = job_row(store, job_id)
    if row is None:
        raise NotFound(f"No job {job_id[:80]!r}.")
    job = status_of(row, 0)
    p = job.progress
    curves = {name: curve_points(p.get(name)) for name in ("loss_curve", "reward_curve")}
    fields = {k: p.get(k) for k in LIVE_FIELDS + GRPO_FIELDS}
    return {"job_id": job.job_id, "status": job.status, "elapsed_s": job.elapsed_s} | fields | curves
