"""Scoring throughput of the sandbox, on the same answers in the same run:
- isolated (the default): each answer in its own process in one jail, its tests in another
  process in a second jail, calls crossing as plain data (learning/sandbox/verdicts.py);
- in-process: answer and tests in one process in one jail, as learnloop scored before
  (run_many(in_process=True), the mode kept for tests that cannot cross);
- both unjailed (LEARNLOOP_SANDBOX=none), as the floor.

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

RUNS = {  # name: (sandbox mode, in_process)
    "isolated, jailed": ("bwrap", False),
    "in-process, jailed (before)": ("bwrap", True),
    "isolated, unjailed": ("none", False),
    "in-process, unjailed": ("none", True),
}


def timed(jobs: list[tuple[str, list[str]]], mode: str, in_process: bool) -> tuple[float, list[float]]:
    os.environ[SANDBOX_ENV] = mode
    t0 = time.perf_counter()
    results = run_many(jobs, timeout=2.0, workers=2, in_process=in_process)
    elapsed = time.perf_counter() - t0
    assert {r.sandbox for r in results} == {mode}
    return elapsed, [r.score for r in results]


def main(n: int = 300, rounds: int = 3) -> None:
    tasks = codeenv.make_tasks(n, "train", "coder")
    jobs = [(codeenv.solve(t) if i % 2 else codeenv.broken_answers(t)[0], list(t.tests)) for i, t in enumerate(tasks)]
    best = dict.fromkeys(RUNS, float("inf"))
    scores = {}
    for _ in range(rounds):  # interleaved, best of each: the machine's noise hits all alike
        for name, (mode, in_process) in RUNS.items():
            elapsed, scores[name] = timed(jobs, mode, in_process)
            best[name] = min(best[name], elapsed)
    assert len({tuple(s) for s in scores.values()}) == 1, "the modes disagree on honest answers"
    print(f"{n} answers ({sum(len(t) for _, t in jobs)} tests), 2 workers, best of {rounds} rounds")
    for name, seconds in best.items():
        print(f"  {name:30s} {n / seconds:7.1f} answers/s")
    ratio = best["isolated, jailed"] / best["in-process, jailed (before)"]
    print(f"  time isolated / in-process, jailed: {ratio:5.2f}x  (target: under 2x)")
    print(f"  time jailed / unjailed, isolated:   {best['isolated, jailed'] / best['isolated, unjailed']:5.2f}x")


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:3]))
