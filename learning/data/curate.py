"""Curation: turn logged runs into per-role datasets.

make_sft keeps the best runs of a role (supervised fine-tuning); make_preferences builds
good-versus-bad rows from attempts at the same task (DPO pairs, KTO labels). Both stream runs
from SQLite through one cursor (best first for SFT, so `limit` and the per-task cap cost
nothing; grouped by task for preferences), redact each run, drop exact and near-exact
duplicates (same text after lower-casing and collapsing white space), split by task_key and
write the files as they go: memory holds one digest per kept row and a counter per task, never
the runs. Nothing is recorded until the files are complete (learning/data/datasets.py).
"""

from __future__ import annotations

import itertools
import re
import shutil
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import closing
from typing import Any, Literal

from pydantic import BaseModel, Field

from learning import __version__
from learning.clock import iso
from learning.data.datasets import (DatasetInfo, SplitWriter, content_hash, get_dataset, list_datasets,
                               new_dataset_id, publish, temp_folder)
from learning.errors import InvalidInput, check
from learning.data.parallel import map_chunks
from learning.data.prepare import RunRedactor, encode, norm_digest, prepare_sft_chunk, render_prompt
from learning.runs.record import ROLE_PATTERN, time_window
from learning.store import Store
from learning.data.formats import PREF_FORMATS, SFT_FORMATS, pref_row
from learning.data.templates import Compiled, resolve_template

__all__ = ["make_sft", "make_preferences", "get_dataset", "list_datasets", "DatasetInfo", "CurationResult"]

DEFAULT_MIN_REWARD = 0.7
CHUNK = 1_000  # runs prepared together (in a worker process for large curations)
SERIAL_LIMIT = 20_000  # make_sft with a limit up to this stays in one process


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
    counts: dict[str, int] = Field(description="matched (runs read that passed the filters), duplicates, "
                                               "over_task_cap, kept, train, test, ...")
    mean_reward: float | None
    redacted: bool
    redaction_counts: dict[str, int] = Field(description="What redaction replaced, by placeholder type.")
    content_hash: str | None
    funnel: list[FunnelStep] = Field(default_factory=list, description="Runs left after each filter (dry run).")
    template_source: str
    seconds: float


def _filters(min_reward, max_reward, task_type, complexity, agent, since, until, days, min_length, max_length):
    start, end = time_window(since, until, days)
    return {"min_reward": min_reward, "max_reward": max_reward, "task_type": task_type, "complexity": complexity,
            "agent": agent, "since": start, "until": end, "min_length": min_length, "max_length": max_length}


def _check(role, fmt, formats, test_fraction, limit, max_per_task, min_length, max_length, min_reward, min_rows) -> list[str]:

    problems = []
    if not isinstance(role, str) or not re.match(ROLE_PATTERN, role):
        problems.append(f"role {role!r} is not a role name (lower-case letters, digits, '_' or '-')")
    if fmt not in formats:
        problems.append(f"format {fmt!r} is not one of {', '.join(formats)}")
    if not 0 <= test_fraction <= 0.5:
        problems.append(f"test_fraction must be in [0, 0.5], got {test_fraction}")
    if limit is not None and limit < 1:
        problems.append(f"limit must be at least 1, got {limit}")
    if max_per_task is not None and max_per_task < 1:
        problems.append(f"max_per_task must be at least 1, got {max_per_task}")
    if min_length is not None and max_length is not None and min_length > max_length:
        problems.append(f"min_length ({min_length}) is above max_length ({max_length}): no run can pass both")
    if min_reward is not None and not 0 <= min_reward <= 1:
        problems.append(f"min_reward must be in [0, 1], got {min_reward}")
    if min_rows < 1:
        problems.append(f"min_rows must be at least 1, got {min_rows}")
    return problems


def _template(store: Store, role: str, template: str | None, problems: list[str]) -> tuple[str, str]:
    """Resolve the role's template; report its problems together with the others."""
    check(problems, "Cannot make the dataset:")
    try:
        return resolve_template(store, role, template)
    except InvalidInput as exc:
        if not exc.problems:  # an unknown role: its own message says what exists
            raise
        check(problems + exc.problems, "Cannot make the dataset:")
        raise


def _too_few(store: Store, role: str, filters: dict, kept: int, min_rows: int, counts: dict, extra: str) -> InvalidInput:
    funnel = store.curation_funnel(role, filters)
    if funnel[0][1] == 0:
        with_runs = store.role_run_counts()
        return InvalidInput(f"No runs of role {role!r}. Roles with runs: "
                            f"{', '.join(f'{r} ({n})' for r, n in with_runs.items()) or 'none'}. Log runs with log_run first.")
    steps = [f"{name} {_show(filters.get(name))}: {n}" if name != "role" else f"role {role}: {n}" for name, n in funnel]
    first_short = next((name for name, n in funnel if n < min_rows), None)
    return InvalidInput(
        f"Too few rows for role {role!r}: {kept} kept, at least {min_rows} needed. Runs left after each filter: "
        + " -> ".join(steps)
        + f"; then {counts.get('duplicates', 0)} duplicates and {counts.get('over_task_cap', 0)} over the per-task cap "
        f"were dropped{extra}. "
        + (f"Fewer than {min_rows} runs are left after {first_short!r}: loosen that filter, " if first_short else "Loosen the filters, ")
        + "log more runs, or lower min_rows.")


def _show(value: Any) -> str:
    return iso(value) if isinstance(value, float) and value > 1e8 else repr(value)


def _finish(store, writer, tmp, record, meta, dry_run, result_fields) -> CurationResult:
    writer.close()
    if dry_run:
        result_fields["seconds"] = round(time.perf_counter() - result_fields.pop("started"), 3)
        return CurationResult(dataset_id=None, dry_run=True, path=None, files={}, content_hash=None,
                              train_rows=writer.rows[False], test_rows=writer.rows[True], **result_fields)
    meta["counts"].update(train=writer.rows[False], test=writer.rows[True])
    meta["content_hash"] = content_hash(tmp)
    record.update(train_rows=writer.rows[False], test_rows=writer.rows[True], content_hash=meta["content_hash"])
    final = publish(store, tmp, record, meta)
    files = {"train": str(final / "train.jsonl"), "test": str(final / "test.jsonl"), "metadata": str(final / "metadata.json")}
    result_fields["counts"].update(train=writer.rows[False], test=writer.rows[True])
    result_fields["seconds"] = round(time.perf_counter() - result_fields.pop("started"), 3)
    return CurationResult(dataset_id=record["id"], dry_run=False, path=str(final), files=files,
                          content_hash=meta["content_hash"], train_rows=writer.rows[False],
                          test_rows=writer.rows[True], **result_fields)


def _run(store, role, kind, fmt, rows: Iterator[tuple[str, str, list[int], list[float]]], counts: Counter,
         redactor: RunRedactor, filters: dict, settings: dict, template: tuple[str, str], seed: int,
         test_fraction: float, min_rows: int, dry_run: bool, started: float) -> CurationResult:
    """Write the rows a curation yields (task_key, JSON line, run ids, rewards), then publish."""
    dataset_id = new_dataset_id(role, kind)
    tmp = None if dry_run else temp_folder(store, dataset_id)
    try:
        writer = SplitWriter(tmp, seed, test_fraction)
        run_ids, reward_sum, reward_n = [], 0.0, 0
        for task_key, line, ids, rewards in rows:
            writer.add(task_key, line)
            run_ids.extend(ids)
            reward_sum += sum(rewards)
            reward_n += len(rewards)
        kept = writer.rows[False] + writer.rows[True]
        if kind == "sft":
            counts["after_dedupe"] = counts["matched"] - counts["duplicates"]
        counts["kept"] = kept
        if kept < min_rows:
            writer.close()
            raise _too_few(store, role, filters, kept, min_rows, counts, settings.get("_extra", ""))
        mean = round(reward_sum / reward_n, 4) if reward_n else None
        settings.pop("_extra", None)
        shown_filters = {k: (iso(v) if k in ("since", "until") and v is not None else v) for k, v in filters.items()}
        meta = {"id": dataset_id, "role": role, "kind": kind, "format": fmt, "created": iso(time.time()),
                "filters": {**shown_filters, **settings}, "counts": dict(counts), "mean_reward": mean,
                "redaction": {"enabled": redactor.enabled, "counts": dict(redactor.kept)},
                "template": {"source": template[1], "text": template[0]}, "seed": seed,
                "test_fraction": test_fraction, "learnloop_version": __version__,
                "run_ids": sorted(set(run_ids))}
        record = {"id": dataset_id, "role": role, "kind": kind, "format": fmt, "created": time.time()}
        funnel = []
        if dry_run:
            funnel = [FunnelStep(step=n, value=(role if n == "role" else filters.get(n)), runs_left=c)
                      for n, c in store.curation_funnel(role, filters)]
        return _finish(store, writer, tmp, record, meta, dry_run, dict(
            role=role, kind=kind, format=fmt, counts=dict(counts), mean_reward=mean, redacted=redactor.enabled,
            redaction_counts=dict(redactor.kept), funnel=funnel, template_source=template[1], started=started))
    except BaseException:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        raise


def make_sft(
    store: Store, role: str, *, min_reward: float = DEFAULT_MIN_REWARD, limit: int | None = None,
    task_type: str | None = None, complexity: str | None = None, agent: str | None = None,
    since: str | None = None, until: str | None = None, days: float | None = None,
    min_length: int | None = None, max_length: int | None = None, max_per_task: int = 3,
    format: str = "prompt_completion", template: str | None = None, test_fraction: float = 0.1,
    seed: int = 0, redact: bool = True, dedupe: bool = True, min_rows: int = 10, dry_run: bool = False,
) -> CurationResult:
    """A supervised fine-tuning dataset of a role's best runs.

    Runs with reward >= min_reward pass the filters (length = characters of instruction + input +
    output); read best first, each kept unless it duplicates a kept row or its task already has
    max_per_task rows; stops after `limit` rows.
    """
    started = time.perf_counter()
    problems = _check(role, format, SFT_FORMATS, test_fraction, limit, max_per_task, min_length, max_length,
                      min_reward, min_rows)
    tmpl = _template(store, role, template, problems)
    filters = _filters(min_reward, None, task_type, complexity, agent, since, until, days, min_length, max_length)
    redactor, counts = RunRedactor(redact), Counter(matched=0, duplicates=0, over_task_cap=0)
    config = (redact, tmpl[0], role, format, dedupe)
    # A small limit is reached before worker processes would pay for starting.
    workers = 1 if limit is not None and limit <= SERIAL_LIMIT else None

    def rows():
        seen: set[int] = set()
        per_task: Counter = Counter()

        def chunks():
            """Chunks of runs; a run whose task is already capped is not prepared at all."""
            with closing(store.stream_curation_runs(role, filters, order="reward")) as stream:
                while batch := list(itertools.islice(stream, CHUNK)):
                    todo = [per_task[run[1]] < max_per_task for run in batch]
                    yield (batch, todo), [run[3:8] for run, do in zip(batch, todo) if do]

        with closing(map_chunks(prepare_sft_chunk, config, chunks(), workers)) as prepared:
            for (batch, todo), results in prepared:
                results = iter(results)
                for run, do in zip(batch, todo):
                    counts["matched"] += 1
                    # Checked again here: rows kept since the chunk was built count too.
                    if not do or per_task[run[1]] >= max_per_task:
                        counts["over_task_cap"] += 1
                        if do:
                            next(results)
                        continue
                    digest, line, found = next(results)
                    if dedupe:
                        if digest in seen:
                            counts["duplicates"] += 1
                            continue
                        seen.add(digest)
                    per_task[run[1]] += 1
                    redactor.keep(found)
                    yield run[1], line, [run[0]], [run[2]]
                    if limit is not None and counts["matched"] - counts["duplicates"] - counts["over_task_cap"] >= limit:
                        counts["stopped_at_limit"] = 1
                        return

    settings = {"limit": limit, "max_per_task": max_per_task, "dedupe": dedupe}
    return _run(store, role, "sft", format, rows(), counts, redactor, filters, settings, tmpl, seed, test_fraction,
                min_rows, dry_run, started)


def make_preferences(
    store: Store, role: str, kind: Literal["dpo", "kto"] = "dpo", *, margin: float = 0.3,
    min_chosen: float = 0.5, high: float = DEFAULT_MIN_REWARD, low: float = 0.3, limit: int | None = None,
    task_type: str | None = None, complexity: str | None = None, agent: str | None = None,
    since: str | None = None, until: str | None = None, days: float | None = None,
    min_length: int | None = None, max_length: int | None = None, max_per_task: int = 3,
    format: str = "prompt_completion", template: str | None = None, test_fraction: float = 0.1,
    seed: int = 0, redact: bool = True, dedupe: bool = True, min_rows: int = 10, dry_run: bool = False,
) -> CurationResult:
    """Preference rows from attempts at the same task_key.

    dpo: (prompt, chosen, rejected) where chosen earned at least min_chosen and at least `margin`
    more than rejected; up to max_per_task pairs per task, best chosen and worst rejected first.
    kto: (prompt, completion, label) with label true for reward >= high and false for reward <= low;
    up to max_per_task of each label per task. Stops after `limit` rows.
    """
    started = time.perf_counter()
    problems = _check(role, format, PREF_FORMATS, test_fraction, limit, max_per_task, min_length, max_length,
                      None, min_rows)
    if kind not in ("dpo", "kto"):
        problems.append(f"kind must be dpo or kto, got {kind!r}")
    if kind == "dpo" and not 0 < margin <= 1:
        problems.append(f"margin must be in (0, 1], got {margin}")
    if kind == "dpo" and not 0 <= min_chosen <= 1:
        problems.append(f"min_chosen must be in [0, 1], got {min_chosen}")
    if kind == "kto" and not 0 <= low < high <= 1:
        problems.append(f"need 0 <= low < high <= 1 (undesirable below low, desirable above high), got low={low}, high={high}")
    tmpl = _template(store, role, template, problems)
    filters = _filters(None, None, task_type, complexity, agent, since, until, days, min_length, max_length)
    redactor, counts = RunRedactor(redact), Counter(matched=0, tasks=0, duplicates=0, over_task_cap=0)

    def rows():
        seen: set[int] = set()
        written = 0
        with closing(store.stream_curation_runs(role, filters, order="task_key")) as stream:
            for task_key, group in itertools.groupby(stream, key=lambda r: r[1]):
                attempts = list(group)  # one task's attempts, best first
                counts["matched"] += len(attempts)
                counts["tasks"] += 1
                make = _dpo_rows if kind == "dpo" else _kto_rows
                for row, ids, rewards, found in make(attempts, redactor, Compiled(tmpl[0]), role, format, seen, counts, dedupe,
                                                     margin=margin, min_chosen=min_chosen, high=high, low=low,
                                                     max_per_task=max_per_task):
                    redactor.keep(found)
                    yield task_key, encode(row), ids, rewards
                    written += 1
                    if limit is not None and written >= limit:
                        counts["stopped_at_limit"] = 1
                        return

    settings = ({"margin": margin, "min_chosen": min_chosen} if kind == "dpo" else {"high": high, "low": low})
    settings.update(limit=limit, max_per_task=max_per_task, dedupe=dedupe,
                    _extra=" (preference rows need attempts at the same task_key whose rewards differ enough)")
    return _run(store, role, kind, format, rows(), counts, redactor, filters, settings, tmpl, seed, test_fraction,
                min_rows, dry_run, started)


def _redacted(attempts, redactor, template, role):
    """Each attempt redacted once: (run, prompt, output, found)."""
    out = []
    for run in attempts:
        (instruction, input_, output), found = redactor(run[3], run[4], run[5])
        out.append((run, render_prompt(template, role, run[6], run[7], instruction, input_)[0], output, found))
    return out


def _dpo_rows(attempts, redactor, template, role, fmt, seen, counts, dedupe, *, margin, min_chosen, max_per_task, **_):
    if len(attempts) < 2 or attempts[0][2] - attempts[-1][2] < margin or attempts[0][2] < min_chosen:
        return
    done = 0
    red = _redacted(attempts, redactor, template, role)
    for c in red:
        for r in reversed(red):
            if c[0][2] < min_chosen or c[0][2] - r[0][2] < margin:
                break
            if " ".join(c[2].split()) == " ".join(r[2].split()):
                continue
            if dedupe:
                digest = norm_digest(c[1], c[2], r[2])
                if digest in seen:
                    counts["duplicates"] += 1
                    continue
                seen.add(digest)
            if done >= max_per_task:
                counts["over_task_cap"] += 1
                return
            done += 1
            yield pref_row(fmt, "dpo", c[1], c[2], r[2]), [c[0][0], r[0][0]], [c[0][2], r[0][2]], {k: c[3].get(k, 0) + r[3].get(k, 0) for k in {*c[3], *r[3]}}


def _kto_rows(attempts, redactor, template, role, fmt, seen, counts, dedupe, *, high, low, max_per_task, **_):
    per_label = Counter()
    chosen = [a for a in attempts if a[2] >= high or a[2] <= low]
    for run, prompt, output, found in _redacted(chosen, redactor, template, role):
        label = run[2] >= high
        if dedupe:
            digest = norm_digest(prompt, output, str(label))
            if digest in seen:
                counts["duplicates"] += 1
                continue
            seen.add(digest)
        if per_label[label] >= max_per_task:
            counts["over_task_cap"] += 1
            continue
        per_label[label] += 1
        counts["desirable" if label else "undesirable"] += 1
        yield pref_row(fmt, "kto", prompt, output, label), [run[0]], [run[2]], found
