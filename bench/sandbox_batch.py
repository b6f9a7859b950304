"""Scoring throughput of the sandbox: answers scored in the bubblewrap jail (one jail per batch,
a fork per answer) versus the unjailed batch executor (LEARNLOOP_SANDBOX=none: the same
supervisor in a plain interpreter), on the same answers in the same run.

    python bench/sandbox_batch.py [N] [ROUNDS]
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from learning.evaluate import codeenv  # noqa: E402
from learning.sandbox.execute import SANDBOX_ENV, run_many  # noqa: E402


def timed(jobs: list[tuple[str, list[str]]], mode: str) -> tuple[float, list[float]]:
    os.environ[SANDBOX_ENV] = mode
    t0 = time.perf_counter()
    results = run_many(jobs, timeout=2.0, workers=2)
    elapsed = time.perf_counter() - t0
    assert {r.sandbox for r in results} == {mode}
    return elapsed, [r.score for r in results]


def main(n: int = 300, rounds: int = 3) -> None:
    tasks = codeenv.make_tasks(n, "train", "coder")
    jobs = [(codeenv.solve(t) if i % 2 else codeenv.broken_answers(t)[0], list(t.tests)) for i, t in enumerate(tasks)]
    best = {"bwrap": float("inf"), "none": float("inf")}
    scores = {}
    for _ in range(rounds):  # interleaved, best of each: the machine's noise hits both alike
        for mode in ("none", "bwrap"):
            elapsed, scores[mode] = timed(jobs, mode)
            best[mode] = min(best[mode], elapsed)
    assert scores["bwrap"] == scores["none"]
    print(f"{n} answers, 2 workers, best of {rounds} rounds")
    print(f"  jailed (bwrap, one jail per batch): {n / best['bwrap']:7.1f} answers/s")
    print(f"  unjailed (LEARNLOOP_SANDBOX=none):  {n / best['none']:7.1f} answers/s")
    print(f"  time jailed / unjailed:             {best['bwrap'] / best['none']:7.2f}x  (target: under 2x)")


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:3]))
