"""What a curation returns, and the step both curation verbs end with: write the rows they yield
into the train/test files, stop with the funnel when too few were kept, then publish the dataset
with its metadata (or, on a dry run, report what would have been written).
"""

from __future__ import annotations

import shutil
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any, Literal

from pydantic import BaseModel, Field

from learning import __version__
from learning.clock import iso
from learning.data.datasets import SplitWriter, content_hash, new_dataset_id, publish, temp_folder
from learning.data.prepare import RunRedactor
from learning.data.run_filters import curation_funnel
from learning.errors import InvalidInput
from learning.runs.stats import role_run_counts
from learning.store import Store


class FunnelStep(BaseModel):
    step: str = Field(description="The filter applied (role first, then each filter in turn).")
    value: Any = None
    runs_left: int


class CurationResult(BaseModel):
    dataset_id: str | None = Field(description="Id of the dataset written; null on a dry run.")
    dry_run: bool
    role: str
    kind: Literal["sft", "dpo", "kto"]
    format: str
    path: str | None = Field(description="Absolute path of the dataset folder; null on a dry run.")
    files: dict[str, str] = Field(description="Absolute paths written: train, test, metadata.")
    train_rows: int
    test_rows: int
    counts: dict[str, int] = Field(
        description="matched (runs read that passed the filters), duplicates, over_task_cap, kept, train, test, ..."
    )
    mean_reward: float | None
    redacted: bool
    redaction_counts: dict[str, int] = Field(description="What redaction replaced, by placeholder type.")
    content_hash: str | None
    funnel: list[FunnelStep] = Field(default_factory=list, description="Runs left after each filter (dry run).")
    template_source: str
    seconds: float


def write_curation(
    store,
    role,
    kind,
    fmt,
    rows: Iterator[tuple[str, str, list[int], list[float]]],
    counts: Counter,
    redactor: RunRedactor,
    filters: dict,
    settings: dict,
    template: tuple[str, str],
    seed: int,
    test_fraction: float,
    min_rows: int,
    dry_run: bool,
    started: float,
) -> CurationResult:
    """Write the rows a curation yields (task_key, JSON line, run ids, rewards), then publish."""
    dataset_id = new_dataset_id(role, kind)
    tmp = None if dry_run else temp_folder(store, dataset_id)
    try:
        writer = SplitWriter(tmp, seed, test_fraction)
        run_ids, mean = _write(writer, rows)
        kept = writer.rows[False] + writer.rows[True]
        if kind == "sft":
            counts["after_dedupe"] = counts["matched"] - counts["duplicates"]
        counts["kept"] = kept
        if kept < min_rows:
            writer.close()
            raise _too_few(store, role, filters, kept, min_rows, counts, settings.get("_extra", ""))
        settings.pop("_extra", None)
        meta = _metadata(
            dataset_id,
            role,
            kind,
            fmt,
            filters,
            settings,
            counts,
            mean,
            redactor,
            template,
            seed,
            test_fraction,
            run_ids,
        )
        record = {"id": dataset_id, "role": role, "kind": kind, "format": fmt, "created": time.time()}
        funnel = _funnel(store, role, filters) if dry_run else []
        return _finish(
            store,
            writer,
            tmp,
            record,
            meta,
            dry_run,
            dict(
                role=role,
                kind=kind,
                format=fmt,
                counts=dict(counts),
                mean_reward=mean,
                redacted=redactor.enabled,
                redaction_counts=dict(redactor.kept),
                funnel=funnel,
                template_source=template[1],
                started=started,
            ),
        )
    except BaseException:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        raise


def _write(
    writer: SplitWriter, rows: Iterator[tuple[str, str, list[int], list[float]]]
) -> tuple[list[int], float | None]:
    """Add each row to its split; returns the run ids the rows came from and their mean reward."""
    run_ids, reward_sum, reward_n = [], 0.0, 0
    for task_key, line, ids, rewards in rows:
        writer.add(task_key, line)
        run_ids.extend(ids)
        reward_sum += sum(rewards)
        reward_n += len(rewards)
    return run_ids, (round(reward_sum / reward_n, 4) if reward_n else None)


def _metadata(
    dataset_id, role, kind, fmt, filters, settings, counts, mean, redactor, template, seed, test_fraction, run_ids
) -> dict[str, Any]:
    """The dataset's metadata.json: how it was made, from which runs."""
    shown_filters = {k: (iso(v) if k in ("since", "until") and v is not None else v) for k, v in filters.items()}
    return {
        "id": dataset_id,
        "role": role,
        "kind": kind,
        "format": fmt,
        "created": iso(time.time()),
        "filters": {**shown_filters, **settings},
        "counts": dict(counts),
        "mean_reward": mean,
        "redaction": {"enabled": redactor.enabled, "counts": dict(redactor.kept)},
        "template": {"source": template[1], "text": template[0]},
        "seed": seed,
        "test_fraction": test_fraction,
        "learnloop_version": __version__,
        "run_ids": sorted(set(run_ids)),
    }


def _funnel(store: Store, role: str, filters: dict) -> list[FunnelStep]:
    """Runs left after each filter, for a dry run's report."""
    return [
        FunnelStep(step=f.step, value=(role if f.step == "role" else filters.get(f.step)), runs_left=f.runs_left)
        for f in curation_funnel(store, role, filters)
    ]


def _finish(store, writer, tmp, record, meta, dry_run, result_fields) -> CurationResult:
    writer.close()
    if dry_run:
        result_fields["seconds"] = round(time.perf_counter() - result_fields.pop("started"), 3)
        return CurationResult(
            dataset_id=None,
            dry_run=True,
            path=None,
            files={},
            content_hash=None,
            train_rows=writer.rows[False],
            test_rows=writer.rows[True],
            **result_fields,
        )
    meta["counts"].update(train=writer.rows[False], test=writer.rows[True])
    meta["content_hash"] = content_hash(tmp)
    record.update(train_rows=writer.rows[False], test_rows=writer.rows[True], content_hash=meta["content_hash"])
    final = publish(store, tmp, record, meta)
    files = {
        "train": str(final / "train.jsonl"),
        "test": str(final / "test.jsonl"),
        "metadata": str(final / "metadata.json"),
    }
    result_fields["counts"].update(train=writer.rows[False], test=writer.rows[True])
    result_fields["seconds"] = round(time.perf_counter() - result_fields.pop("started"), 3)
    return CurationResult(
        dataset_id=record["id"],
        dry_run=False,
        path=str(final),
        files=files,
        content_hash=meta["content_hash"],
        train_rows=writer.rows[False],
        test_rows=writer.rows[True],
        **result_fields,
    )


def _too_few(
    store: Store, role: str, filters: dict, kept: int, min_rows: int, counts: dict, extra: str
) -> InvalidInput:
    funnel = curation_funnel(store, role, filters)
    if funnel[0].runs_left == 0:
        with_runs = role_run_counts(store)
        return InvalidInput(
            f"No runs of role {role!r}. Roles with runs: "
            f"{', '.join(f'{r} ({n})' for r, n in with_runs.items()) or 'none'}. Log runs with log_run first."
        )
    named = {"role": f"role {role}", "scored": "scored (pending runs left out)"}
    steps = [f"{named.get(f.step) or f'{f.step} {_show(filters.get(f.step))}'}: {f.runs_left}" for f in funnel]
    first_short = next((f.step for f in funnel if f.runs_left < min_rows), None)
    if first_short == "scored":
        extra += "; score pending runs with log_reward and each run's reward_token (learnloop reward RUN_ID REWARD --reward-token TOKEN)"
    return InvalidInput(
        f"Too few rows for role {role!r}: {kept} kept, at least {min_rows} needed. Runs left after each filter: "
        + " -> ".join(steps)
        + f"; then {counts.get('duplicates', 0)} duplicates and {counts.get('over_task_cap', 0)} over the per-task cap "
        f"were dropped{extra}. "
        + (
            f"Fewer than {min_rows} runs are left after {first_short!r}: loosen that filter, "
            if first_short
            else "Loosen the filters, "
        )
        + "log more runs, or lower min_rows."
    )


def _show(value: Any) -> str:
    return iso(value) if isinstance(value, float) and value > 1e8 else repr(value)
