"""Curation figures: make_sft over 1,000,000 runs (seconds, peak memory), redaction throughput,
and redaction recall / false positives on the labelled corpus (tests/support/redact_corpus.py) and on
the held-out corpus of provider token formats and realistic ordinary text (tests/support/redact_heldout.py).

    python bench/curation.py [--runs 1000000] [--keep-db DIR] [--trace]

The database is generated with insert_runs (learning/runs/record.py) in large batches. make_sft runs in a fresh
subprocess so that its peak resident memory (ru_maxrss) and tracemalloc peak are its own.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from learning.data.parallel import default_workers  # noqa: E402
from learning.data.redact import Redactor  # noqa: E402
from learning.store import Store  # noqa: E402
from tests.support.redact_corpus import ORDINARY_CODE, planted_secrets  # noqa: E402
from tests.support.redact_heldout import heldout_secrets, realistic_code  # noqa: E402
from tests.support.store_helpers import count_runs  # noqa: E402

# Code-like text for the runs' outputs: the library's own source for storing and recording runs.
CODE = (ROOT / "learning" / "store.py").read_text() + (ROOT / "learning" / "runs" / "record.py").read_text()
TASK_TYPES = ("feature", "bugfix", "refactor", "test")


def generate(home: Path, n: int, attempts_per_task: int = 4, batch: int = 50_000) -> float:
    """n coder runs over n / attempts_per_task tasks; code-like outputs of 200-700 characters."""
    from learning.runs.record import RunRow, insert_runs  # here: a child's peak RSS starts at this process's

    rng = random.Random(0)
    store = Store(home)
    started = time.perf_counter()
    now = time.time()
    secrets = [p.text for p in planted_secrets()]
    rows = []
    for i in range(n):
        task = i // attempts_per_task
        start = rng.randrange(len(CODE) - 800)
        output = CODE[start : start + rng.randrange(200, 700)]
        if rng.random() < 0.01:
            output += "\n" + rng.choice(secrets)
        instruction = f"Task {task}: implement step {task % 97} of the {TASK_TYPES[task % 4]} for module m{task % 113}."
        reward = round(rng.betavariate(2, 2), 3)
        rows.append(
            RunRow(
                ts=now - rng.random() * 90 * 86400,
                agent="bench",
                role="coder",
                task_type=TASK_TYPES[task % 4],
                complexity="medium",
                task_key=f"k{task}",
                instruction=instruction,
                input="",
                output=output,
                reward=reward,
                signals="{}",
                model=None,
                adapter_id=None,
                decision_id=None,
                meta="{}",
            )
        )
        if len(rows) == batch:
            insert_runs(store, rows)
            rows = []
    if rows:
        insert_runs(store, rows)
    store.close()
    return time.perf_counter() - started


CHILD = """
import json, resource, sys, time, tracemalloc
sys.path.insert(0, {root!r})
from learning.store import Store
from learning.data.curate import make_sft
from tests.support.store_helpers import count_runs
kwargs = json.loads({kwargs!r})
trace = kwargs.pop("_trace")
store = Store({home!r})
count_runs(store)
if trace:
    tracemalloc.start()
t, cpu = time.perf_counter(), time.process_time()
r = make_sft(store, "coder", **kwargs)
seconds, cpu = time.perf_counter() - t, time.process_time() - cpu
peak = tracemalloc.get_traced_memory()[1] if trace else None
print(json.dumps({{"seconds": seconds, "cpu_seconds": cpu, "rows": r.train_rows + r.test_rows, "matched": r.counts["matched"],
                  "maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "worker_maxrss_mib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
                  "traced_peak_mib": peak / 2**20 if peak else None, "redaction": r.redaction_counts}}))
"""


def sft_in_child(home: Path, trace: bool = False, workers: int | None = None, **kwargs) -> dict:
    code = CHILD.format(root=str(ROOT), home=str(home), kwargs=json.dumps({**kwargs, "_trace": trace}))
    env = dict(os.environ)
    env.pop("LEARNLOOP_WORKERS", None)
    if workers is not None:
        env["LEARNLOOP_WORKERS"] = str(workers)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def baseline_rss() -> float:
    code = (
        f"import sys; sys.path.insert(0, {str(ROOT)!r}); import resource, learning.data.curate; "
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)"
    )
    return float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)


def redaction_throughput(mb: float = 20.0) -> dict:
    rng = random.Random(1)
    secrets = [p.text for p in planted_secrets()]
    texts, size = [], 0
    while size < mb * 1e6:
        start = rng.randrange(len(CODE) - 1500)
        text = CODE[start : start + rng.randrange(300, 1500)]
        if rng.random() < 0.02:
            text += "\n" + rng.choice(secrets)
        texts.append(text)
        size += len(text.encode())
    r = Redactor()
    started, cpu = time.perf_counter(), time.process_time()
    for text in texts:
        r(text)
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    started = time.perf_counter()
    for text in texts:
        text.lower()
        " ".join(text.split())
    reference = time.perf_counter() - started
    return {
        "mb": size / 1e6,
        "texts": len(texts),
        "mb_per_s": size / 1e6 / seconds,
        "mb_per_cpu_s": size / 1e6 / cpu,
        "vs_lower_and_split": seconds / reference,
    }


def corpus_quality(planted=None, ordinary=None) -> dict:
    planted = planted_secrets() if planted is None else planted
    ordinary = ORDINARY_CODE if ordinary is None else ordinary
    r = Redactor()
    found = sum(1 for p in planted if p.secret not in (out := r(p.text)) and f"[{p.placeholder}]" in out)
    missed = [p.name for p in planted if p.secret in r(p.text)]
    changed = [c for c in ordinary if r(c) != c]
    return {
        "planted": len(planted),
        "redacted": found,
        "recall": found / len(planted),
        "missed": missed,
        "ordinary_snippets": len(ordinary),
        "false_positives": len(changed),
        "types": sorted({p.placeholder for p in planted}),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=1_000_000)
    parser.add_argument("--keep-db", help="Reuse (or create) the database in this folder.")
    parser.add_argument("--trace", action="store_true", help="Also measure tracemalloc's peak (a slow run).")
    args = parser.parse_args()

    for label, quality in (
        ("redaction corpus", corpus_quality()),
        ("redaction held-out corpus", corpus_quality(heldout_secrets(), realistic_code())),
    ):
        print(
            f"{label}: {quality['redacted']}/{quality['planted']} planted secrets redacted "
            f"(recall {quality['recall']:.3f}; types {', '.join(quality['types'])}); "
            f"false positives {quality['false_positives']}/{quality['ordinary_snippets']} ordinary-code snippets"
            + (f"; missed {sorted(set(quality['missed']))}" if quality["missed"] else "")
        )
    tp = redaction_throughput()
    print(
        f"redaction throughput: {tp['mb_per_s']:.1f} MB/s wall, {tp['mb_per_cpu_s']:.1f} MB/s of CPU time, over {tp['mb']:.0f} MB of code-like text "
        f"({tp['texts']} texts); {tp['vs_lower_and_split']:.1f}x the time of lower() + split/join on the same texts"
    )

    home = Path(args.keep_db) if args.keep_db else Path(tempfile.mkdtemp(prefix="learnloop-bench-"))
    home.mkdir(parents=True, exist_ok=True)
    store = Store(home)
    if count_runs(store) < args.runs:
        seconds = generate(home, args.runs - count_runs(store))
        print(f"generated {args.runs:,} runs in {seconds:.1f}s ({args.runs / seconds:,.0f} runs/s)")
    db_mib = (home / "learnloop.db").stat().st_size / 2**20
    print(f"database: {count_runs(store):,} runs, {db_mib:,.0f} MiB")
    base = baseline_rss()
    print(f"worker processes for large curations: {default_workers()} (of {os.cpu_count()} CPUs)")
    cases: list[tuple[str, int | None, dict[str, Any]]] = [
        ("default filters (min_reward 0.7, max 3 per task)", None, {}),
        ("the same in one process (LEARNLOOP_WORKERS=1)", 1, {}),
        ("limit 10,000", None, {"limit": 10_000}),
        ("min_reward 0.9, no redaction", None, {"min_reward": 0.9, "redact": False}),
    ]
    for label, workers, kwargs in cases:
        r = sft_in_child(home, workers=workers, **kwargs)
        print(
            f"make_sft over {args.runs:,} runs, {label}: {r['seconds']:.2f}s wall ({r['cpu_seconds']:.2f}s CPU "
            "in the calling process), "
            f"{r['rows']:,} rows written "
            f"({r['matched']:,} runs read), peak RSS {r['maxrss_mib']:.0f} MiB (import baseline {base:.0f} MiB)"
            + (f", each worker process at most {r['worker_maxrss_mib']:.0f} MiB" if r["worker_maxrss_mib"] else "")
        )
    if args.trace:
        r = sft_in_child(home, trace=True)
        print(
            f"tracemalloc peak of make_sft with default filters: {r['traced_peak_mib']:.1f} MiB "
            f"(the database holds {db_mib:,.0f} MiB; traced run took {r['seconds']:.1f}s)"
        )
    print(
        f"peak RSS of this process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB; "
        f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs (wall time >> CPU time means a busy machine)"
    )


if __name__ == "__main__":
    main()
