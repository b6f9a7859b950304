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
from typing import Annotated, Any, Literal, NamedTuple

from pydantic import BaseModel, Field

from learning import __version__
from learning.clock import iso
from learning.data.datasets import (
    DatasetInfo,
    SplitWriter,
    content_hash,
    get_dataset,
    list_datasets,
    new_dataset_id,
    publish,
    temp_folder,
)
from learning.data.formats import PREF_FORMATS, SFT_FORMATS, pref_row
from learning.data.parallel import map_chunks
from learning.data.prepare import RunRedactor, SftInputs, encode, norm_digest, prepare_sft_chunk, render_prompt
from learning.data.run_filters import CurationRun, curation_funnel, stream_curation_runs
from learning.data.templates import Compiled, resolve_template
from learning.errors import InvalidInput, check
from learning.runs.record import ROLE_PATTERN
from learning.runs.stats import role_run_counts, time_window
from learning.store import Store

__all__ = ["make_sft", "make_preferences", "get_dataset", "list_datasets", "DatasetInfo", "CurationResult"]

DEFAULT_MIN_REWARD = 0.7

# The arguments both curation verbs take.
CurationRole = Annotated[
    str,
    Field(
        description="Whose runs: coder (spec -> code), fixer (diagnostics -> patch), "
        "judge (code -> verdict), or a role of your own with a template."
    ),
]
Limit = Annotated[int | None, Field(ge=1, description="At most this many rows (SFT keeps the highest rewards).")]
TaskType = Annotated[str | None, Field(description="Only runs of this task_type.")]
Complexity = Annotated[str | None, Field(description="Only runs of this complexity.")]
Agent = Annotated[str | None, Field(description="Only runs of this agent.")]
Since = Annotated[str | None, Field(description="Only runs at or after this time (ISO 8601).")]
Until = Annotated[str | None, Field(description="Only runs before this time (ISO 8601).")]
Days = Annotated[float | None, Field(gt=0, description="Only runs of the last N days (instead of since).")]
MinLength = Annotated[
    int | None,
    Field(ge=0, description="Only runs whose instruction + input + output have at least this many characters."),
]
MaxLength = Annotated[
    int | None,
    Field(ge=0, description="Only runs whose instruction + input + output have at most this many characters."),
]
MaxPerTask = Annotated[int, Field(ge=1, description="At most this many rows per task_key (attempts at one task).")]
Template = Annotated[
    str | None,
    Field(
        description="Prompt template for this call. Placeholders: {instruction}, {input}, "
        "{task_type}, {complexity}, {role}. Default: the role's template."
    ),
]
TestFraction = Annotated[
    float, Field(ge=0, le=0.5, description="Share of tasks held out for test (split by task_key).")
]
Seed = Annotated[int, Field(description="Seed of the train/test split.")]
Redact = Annotated[
    bool,
    Field(
        description="Replace secrets and personal data with typed placeholders. Keep true "
        "unless you know the runs hold none; false is recorded in the metadata."
    ),
]
Dedupe = Annotated[
    bool, Field(description="Drop exact and near-exact duplicates (same text ignoring case and white space).")
]
MinRows = Annotated[int, Field(ge=1, description="Fail (writing nothing) if fewer rows than this are left.")]
DryRun = Annotated[
    bool, Field(description="Report what would be written, with the runs left after each filter; write nothing.")
]
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


def _filters(min_reward, max_reward, task_type, complexity, agent, since, until, days, min_length, max_length):
    start, end = time_window(since, until, days)
    return {
        "min_reward": min_reward,
        "max_reward": max_reward,
        "task_type": task_type,
        "complexity": complexity,
        "agent": agent,
        "since": start,
        "until": end,
        "min_length": min_length,
        "max_length": max_length,
    }


def _check(
    role, fmt, formats, test_fraction, limit, max_per_task, min_length, max_length, min_reward, min_rows
) -> list[str]:

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
    steps = [
        f"{f.step} {_show(filters.get(f.step))}: {f.runs_left}" if f.step != "role" else f"role {role}: {f.runs_left}"
        for f in funnel
    ]
    first_short = next((f.step for f in funnel if f.runs_left < min_rows), None)
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


def _run(
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
        meta = {
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
        record = {"id": dataset_id, "role": role, "kind": kind, "format": fmt, "created": time.time()}
        funnel = []
        if dry_run:
            funnel = [
                FunnelStep(
                    step=f.step, value=(role if f.step == "role" else filters.get(f.step)), runs_left=f.runs_left
                )
                for f in curation_funnel(store, role, filters)
            ]
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


def make_sft(
    store: Store,
    role: CurationRole,
    *,
    min_reward: Annotated[
        float, Field(ge=0, le=1, description="Only runs with at least this reward.")
    ] = DEFAULT_MIN_REWARD,
    limit: Limit = None,
    task_type: TaskType = None,
    complexity: Complexity = None,
    agent: Agent = None,
    since: Since = None,
    until: Until = None,
    days: Days = None,
    min_length: MinLength = None,
    max_length: MaxLength = None,
    max_per_task: MaxPerTask = 3,
    format: Annotated[
        Literal["prompt_completion", "messages", "alpaca", "sharegpt"],
        Field(
            description="prompt_completion (TRL, loss on the completion only), messages (chat), "
            "alpaca (instruction/input/output) or sharegpt."
        ),
    ] = "prompt_completion",
    template: Template = None,
    test_fraction: TestFraction = 0.1,
    seed: Seed = 0,
    redact: Redact = True,
    dedupe: Dedupe = True,
    min_rows: MinRows = 10,
    dry_run: DryRun = False,
) -> CurationResult:
    """Make a supervised fine-tuning dataset from a role's best runs: filter, drop duplicates, cap
    attempts per task, redact secrets, split train/test by task_key, write
    datasets/<id>/{train,test}.jsonl + metadata.json. Returns dataset_id and the paths; pass the
    id to train_adapter. Use dry_run first to see how many runs each filter leaves.

    Runs with reward >= min_reward pass the filters (length = characters of instruction + input +
    output); read best first, each kept unless it duplicates a kept row or its task already has
    max_per_task rows; stops after `limit` rows.
    """
    started = time.perf_counter()
    problems = _check(
        role, format, SFT_FORMATS, test_fraction, limit, max_per_task, min_length, max_length, min_reward, min_rows
    )
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
            with closing(stream_curation_runs(store, role, filters, order="reward")) as stream:
                while batch := list(itertools.islice(stream, CHUNK)):
                    todo = [per_task[run.task_key] < max_per_task for run in batch]
                    yield (batch, todo), SftInputs.of([run for run, do in zip(batch, todo) if do])

        with closing(map_chunks(prepare_sft_chunk, config, chunks(), workers)) as prepared:
            for (batch, todo), results in prepared:
                results = iter(results)
                for run, do in zip(batch, todo):
                    counts["matched"] += 1
                    # Checked again here: rows kept since the chunk was built count too.
                    if not do or per_task[run.task_key] >= max_per_task:
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
                    per_task[run.task_key] += 1
                    redactor.keep(found)
                    yield run.task_key, line, [run.id], [run.reward]
                    if (
                        limit is not None
                        and counts["matched"] - counts["duplicates"] - counts["over_task_cap"] >= limit
                    ):
                        counts["stopped_at_limit"] = 1
                        return

    settings = {"limit": limit, "max_per_task": max_per_task, "dedupe": dedupe}
    return _run(
        store,
        role,
        "sft",
        format,
        rows(),
        counts,
        redactor,
        filters,
        settings,
        tmpl,
        seed,
        test_fraction,
        min_rows,
        dry_run,
        started,
    )


def make_preferences(
    store: Store,
    role: CurationRole,
    kind: Annotated[
        Literal["dpo", "kto"],
        Field(description="dpo: (prompt, chosen, rejected) pairs; kto: (prompt, completion, label) rows."),
    ] = "dpo",
    *,
    margin: Annotated[
        float, Field(gt=0, le=1, description="DPO: chosen must earn at least this much more than rejected.")
    ] = 0.3,
    min_chosen: Annotated[float, Field(ge=0, le=1, description="DPO: the chosen answer's minimum reward.")] = 0.5,
    high: Annotated[
        float, Field(ge=0, le=1, description="KTO: reward at or above this is desirable.")
    ] = DEFAULT_MIN_REWARD,
    low: Annotated[float, Field(ge=0, le=1, description="KTO: reward at or below this is undesirable.")] = 0.3,
    limit: Limit = None,
    task_type: TaskType = None,
    complexity: Complexity = None,
    agent: Agent = None,
    since: Since = None,
    until: Until = None,
    days: Days = None,
    min_length: MinLength = None,
    max_length: MaxLength = None,
    max_per_task: MaxPerTask = 3,
    format: Annotated[
        Literal["prompt_completion", "messages"],
        Field(description="prompt_completion (strings) or messages (chat turns)."),
    ] = "prompt_completion",
    template: Template = None,
    test_fraction: TestFraction = 0.1,
    seed: Seed = 0,
    redact: Redact = True,
    dedupe: Dedupe = True,
    min_rows: MinRows = 10,
    dry_run: DryRun = False,
) -> CurationResult:
    """Make a preference dataset (DPO or KTO) from attempts at the same task_key that earned
    different rewards: the contrast between good and bad answers. Same filters, split,
    redaction and files as make_sft.

    dpo: (prompt, chosen, rejected) where chosen earned at least min_chosen and at least `margin`
    more than rejected; up to max_per_task pairs per task, best chosen and worst rejected first.
    kto: (prompt, completion, label) with label true for reward >= high and false for reward <= low;
    up to max_per_task of each label per task. Stops after `limit` rows.
    """
    started = time.perf_counter()
    problems = _check(
        role, format, PREF_FORMATS, test_fraction, limit, max_per_task, min_length, max_length, None, min_rows
    )
    if kind not in ("dpo", "kto"):
        problems.append(f"kind must be dpo or kto, got {kind!r}")
    if kind == "dpo" and not 0 < margin <= 1:
        problems.append(f"margin must be in (0, 1], got {margin}")
    if kind == "dpo" and not 0 <= min_chosen <= 1:
        problems.append(f"min_chosen must be in [0, 1], got {min_chosen}")
    if kind == "kto" and not 0 <= low < high <= 1:
        problems.append(
            f"need 0 <= low < high <= 1 (undesirable below low, desirable above high), got low={low}, high={high}"
        )
    tmpl = _template(store, role, template, problems)
    filters = _filters(None, None, task_type, complexity, agent, since, until, days, min_length, max_length)
    redactor, counts = RunRedactor(redact), Counter(matched=0, tasks=0, duplicates=0, over_task_cap=0)

    def rows():
        seen: set[int] = set()
        written = 0
        with closing(stream_curation_runs(store, role, filters, order="task_key")) as stream:
            for task_key, group in itertools.groupby(stream, key=lambda r: r.task_key):
                attempts = list(group)  # one task's attempts, best first
                counts["matched"] += len(attempts)
                counts["tasks"] += 1
                make = _dpo_rows if kind == "dpo" else _kto_rows
                for row, ids, rewards, found in make(
                    attempts,
                    redactor,
                    Compiled(tmpl[0]),
                    role,
                    format,
                    seen,
                    counts,
                    dedupe,
                    margin=margin,
                    min_chosen=min_chosen,
                    high=high,
                    low=low,
                    max_per_task=max_per_task,
                ):
                    redactor.keep(found)
                    yield task_key, encode(row), ids, rewards
                    written += 1
                    if limit is not None and written >= limit:
                        counts["stopped_at_limit"] = 1
                        return

    settings: dict[str, Any] = (
        {"margin": margin, "min_chosen": min_chosen} if kind == "dpo" else {"high": high, "low": low}
    )
    settings.update(
        limit=limit,
        max_per_task=max_per_task,
        dedupe=dedupe,
        _extra=" (preference rows need attempts at the same task_key whose rewards differ enough)",
    )
    return _run(
        store,
        role,
        kind,
        format,
        rows(),
        counts,
        redactor,
        filters,
        settings,
        tmpl,
        seed,
        test_fraction,
        min_rows,
        dry_run,
        started,
    )


class _Redacted(NamedTuple):
    run: CurationRun
    prompt: str
    output: str
    found: dict[str, int]


def _redacted(attempts: list[CurationRun], redactor, template, role) -> list[_Redacted]:
    """Each attempt redacted once."""
    out = []
    for run in attempts:
        (instruction, input_, output), found = redactor(run.instruction, run.input, run.output)
        prompt = render_prompt(template, role, run.task_type, run.complexity, instruction, input_)[0]
        out.append(_Redacted(run, prompt, output, found))
    return out


def _dpo_rows(attempts, redactor, template, role, fmt, seen, counts, dedupe, *, margin, min_chosen, max_per_task, **_):
    if len(attempts) < 2 or attempts[0].reward - attempts[-1].reward < margin or attempts[0].reward < min_chosen:
        return
    done = 0
    red = _redacted(attempts, redactor, template, role)
    for c in red:
        for r in reversed(red):
            if c.run.reward < min_chosen or c.run.reward - r.run.reward < margin:
                break
            if " ".join(c.output.split()) == " ".join(r.output.split()):
                continue
            if dedupe:
                digest = norm_digest(c.prompt, c.output, r.output)
                if digest in seen:
                    counts["duplicates"] += 1
                    continue
                seen.add(digest)
            if done >= max_per_task:
                counts["over_task_cap"] += 1
                return
            done += 1
            found = {k: c.found.get(k, 0) + r.found.get(k, 0) for k in {*c.found, *r.found}}
            yield (
                pref_row(fmt, "dpo", c.prompt, c.output, r.output),
                [c.run.id, r.run.id],
                [c.run.reward, r.run.reward],
                found,
            )


def _kto_rows(attempts, redactor, template, role, fmt, seen, counts, dedupe, *, high, low, max_per_task, **_):
    per_label = Counter()
    chosen = [a for a in attempts if a.reward >= high or a.reward <= low]
    for run, prompt, output, found in _redacted(chosen, redactor, template, role):
        label = run.reward >= high
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
        yield pref_row(fmt, "kto", prompt, output, label), [run.id], [run.reward], found
