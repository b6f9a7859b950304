"""Preference datasets: good-versus-bad rows from attempts at the same task that earned
different rewards, as DPO pairs (prompt, chosen, rejected) or KTO labels (prompt, completion,
label). Same filters, redaction, split and files as make_sft (learning/data/curate.py).
"""

from __future__ import annotations

import itertools
import time
from collections import Counter
from contextlib import closing
from typing import Annotated, Any, Literal, NamedTuple

from pydantic import Field

from learning.data import curation_args as arg
from learning.data.curation_result import CurationResult, write_curation
from learning.data.formats import PREF_FORMATS, pref_row, with_tests
from learning.data.prepare import RunRedactor, encode, loads_tests, norm_digest, render_prompt
from learning.data.run_filters import CurationRun, stream_curation_runs
from learning.data.templates import Compiled
from learning.store import Store


def make_preferences(
    store: Store,
    role: arg.CurationRole,
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
    ] = arg.DEFAULT_MIN_REWARD,
    low: Annotated[float, Field(ge=0, le=1, description="KTO: reward at or below this is undesirable.")] = 0.3,
    limit: arg.Limit = None,
    task_type: arg.TaskType = None,
    complexity: arg.Complexity = None,
    agent: arg.Agent = None,
    since: arg.Since = None,
    until: arg.Until = None,
    days: arg.Days = None,
    min_length: arg.MinLength = None,
    max_length: arg.MaxLength = None,
    max_per_task: arg.MaxPerTask = 3,
    format: Annotated[
        Literal["prompt_completion", "messages"],
        Field(description="prompt_completion (strings) or messages (chat turns)."),
    ] = "prompt_completion",
    template: arg.Template = None,
    test_fraction: arg.TestFraction = 0.1,
    seed: arg.Seed = 0,
    redact: arg.Redact = True,
    dedupe: arg.Dedupe = True,
    min_rows: arg.MinRows = 10,
    dry_run: arg.DryRun = False,
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
    problems = arg.check_curation(
        role, format, PREF_FORMATS, test_fraction, limit, max_per_task, min_length, max_length, None, min_rows
    )
    problems += _check_kind(kind, margin, min_chosen, high, low)
    tmpl = arg.curation_template(store, role, template, problems)
    filters = arg.curation_filters(None, None, task_type, complexity, agent, since, until, days, min_length, max_length)
    redactor, counts = RunRedactor(redact), Counter(matched=0, tasks=0, duplicates=0, over_task_cap=0)
    rows = _preference_rows(
        store,
        role,
        filters,
        tmpl,
        kind,
        format,
        counts,
        redactor,
        limit,
        dedupe,
        margin=margin,
        min_chosen=min_chosen,
        high=high,
        low=low,
        max_per_task=max_per_task,
    )
    settings: dict[str, Any] = (
        {"margin": margin, "min_chosen": min_chosen} if kind == "dpo" else {"high": high, "low": low}
    )
    settings.update(
        limit=limit,
        max_per_task=max_per_task,
        dedupe=dedupe,
        _extra=" (preference rows need attempts at the same task_key whose rewards differ enough)",
    )
    return write_curation(
        store,
        role,
        kind,
        format,
        rows,
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


def _check_kind(kind, margin, min_chosen, high, low) -> list[str]:
    """What is wrong with the kind and the settings of that kind."""
    problems = []
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
    return problems


def _preference_rows(store, role, filters, tmpl, kind, fmt, counts, redactor, limit, dedupe, **options):
    """make_preferences' rows, one task's attempts at a time; stops after `limit` rows. options:
    margin, min_chosen, high, low and max_per_task, for the builder of the kind's rows."""
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
                fmt,
                seen,
                counts,
                dedupe,
                **options,
            ):
                redactor.keep(found)
                yield task_key, encode(row), ids, rewards
                written += 1
                if limit is not None and written >= limit:
                    counts["stopped_at_limit"] = 1
                    return


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
                with_tests(pref_row(fmt, "dpo", c.prompt, c.output, r.output), loads_tests(c.run.tests or r.run.tests)),
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
        yield (
            with_tests(pref_row(fmt, "kto", prompt, output, label), loads_tests(run.tests)),
            [run.id],
            [run.reward],
            found,
        )
