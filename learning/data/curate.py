"""Curation: turn logged runs into per-role datasets.

make_sft keeps the best runs of a role (supervised fine-tuning); make_preferences
(learning/data/preferences.py) builds good-versus-bad rows from attempts at the same task (DPO
pairs, KTO labels). Both stream runs from SQLite through one cursor (best first for SFT, so
`limit` and the per-task cap cost nothing; grouped by task for preferences), redact each run,
drop exact and near-exact duplicates (same text after lower-casing and collapsing white space),
split by task_key and write the files as they go: memory holds one digest per kept row and a
counter per task, never the runs. Nothing is recorded until the files are complete
(learning/data/curation_result.py, learning/data/datasets.py); the arguments both verbs take and
their checks: learning/data/curation_args.py.
"""

from __future__ import annotations

import itertools
import time
from collections import Counter
from contextlib import closing
from typing import Annotated, Literal

from pydantic import Field

from learning.data import curation_args as arg
from learning.data.curation_result import CurationResult, write_curation
from learning.data.datasets import DatasetInfo, get_dataset, list_datasets
from learning.data.formats import SFT_FORMATS
from learning.data.parallel import map_chunks
from learning.data.prepare import RunRedactor, SftInputs, prepare_sft_chunk
from learning.data.run_filters import stream_curation_runs
from learning.store import Store

__all__ = ["make_sft", "get_dataset", "list_datasets", "DatasetInfo", "CurationResult"]

CHUNK = 1_000  # runs prepared together (in a worker process for large curations)
SERIAL_LIMIT = 20_000  # make_sft with a limit up to this stays in one process


def make_sft(
    store: Store,
    role: arg.CurationRole,
    *,
    min_reward: Annotated[
        float, Field(ge=0, le=1, description="Only runs with at least this reward.")
    ] = arg.DEFAULT_MIN_REWARD,
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
        Literal["prompt_completion", "messages", "alpaca", "sharegpt"],
        Field(
            description="prompt_completion (TRL, loss on the completion only), messages (chat), "
            "alpaca (instruction/input/output) or sharegpt."
        ),
    ] = "prompt_completion",
    template: arg.Template = None,
    test_fraction: arg.TestFraction = 0.1,
    seed: arg.Seed = 0,
    redact: arg.Redact = True,
    dedupe: arg.Dedupe = True,
    min_rows: arg.MinRows = 10,
    dry_run: arg.DryRun = False,
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
    problems = arg.check_curation(
        role, format, SFT_FORMATS, test_fraction, limit, max_per_task, min_length, max_length, min_reward, min_rows
    )
    tmpl = arg.curation_template(store, role, template, problems)
    filters = arg.curation_filters(
        min_reward, None, task_type, complexity, agent, since, until, days, min_length, max_length
    )
    redactor, counts = RunRedactor(redact), Counter(matched=0, duplicates=0, over_task_cap=0)
    config = (redact, tmpl[0], role, format, dedupe)
    # A small limit is reached before worker processes would pay for starting.
    workers = 1 if limit is not None and limit <= SERIAL_LIMIT else None
    rows = _sft_rows(
        store, role, filters, config, workers, counts, redactor, limit=limit, max_per_task=max_per_task, dedupe=dedupe
    )
    settings = {"limit": limit, "max_per_task": max_per_task, "dedupe": dedupe}
    return write_curation(
        store,
        role,
        "sft",
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


def _sft_rows(store, role, filters, config, workers, counts, redactor, *, limit, max_per_task, dedupe):
    """make_sft's rows, best runs first: each prepared run kept unless it duplicates a kept row
    or its task already has max_per_task rows; stops after `limit` rows."""
    seen: set[int] = set()
    per_task: Counter = Counter()

    def chunks():
        """Chunks of runs; a run whose task is already capped is not prepared at all."""
        exchange = config[3] == "messages"  # chat rows are made of the recorded exchange, when a run has one
        with closing(stream_curation_runs(store, role, filters, order="reward", exchange=exchange)) as stream:
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
                if limit is not None and counts["matched"] - counts["duplicates"] - counts["over_task_cap"] >= limit:
                    counts["stopped_at_limit"] = 1
                    return
