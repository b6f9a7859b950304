"""Scoring throughput of the sandbox: batched (one interpreter per batch, a fork per answer)
versus one fresh interpreter per answer, on the same answers in the same run.

    python bench/sandbox_batch.py [N]
"""

from __future__ import annotations

import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from learning.evaluate import codeenv  # noqa: E402
from learning.evaluate.sandbox import run_many, run_tests  # noqa: E402


def main(n: int = 300) -> None:
    tasks = codeenv.make_tasks(n, "train", "coder")
    jobs = [(codeenv.solve(t) if i % 2 else codeenv.broken_answers(t)[0], list(t.tests)) for i, t in enumerate(tasks)]
    t0 = time.perf_counter()
    batched = run_many(jobs, timeout=2.0, workers=2)
    t_batched = time.perf_counter() - t0
    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=2) as pool:
        single = list(pool.map(lambda j: run_tests(j[0], j[1], 2.0), jobs))
    t_single = time.perf_counter() - t0
    assert [r.score for r in batched] == [r.score for r in single]
    print(f"{n} answers, 2 workers")
    print(f"  batched (fork per answer):       {n / t_batched:7.1f} answers/s")
    print(f"  one interpreter per answer:      {n / t_single:7.1f} answers/s")
    print(f"  ratio batched / per-interpreter: {t_single / t_batched:7.2f}x")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 300)
