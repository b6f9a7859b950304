"""Detection power and false-alarm rate of detect_drift's decision rule, by simulation.

For each reward distribution, relative drop and runs per arm: the share of seeded
repetitions declared a regression by
  - fixed:      the Welch test, one look at n runs per arm;
  - fixed x20:  the same test looked at every 20 runs up to n (what a naive cron job does);
  - sequential: the always-valid mSPRT looked at every 20 runs up to n.
Drop 0% rows are false-alarm rates (target <= 5%); the others are power.
Run: python bench/drift_sim.py [--reps 2000]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from learning.routing.drift_stats import runs_per_arm_needed  # noqa: E402
from tests.support.drift_simulation import simulate  # noqa: E402

KINDS = {"beta": "Beta, mean 0.65, sd 0.20", "bernoulli": "Bernoulli(0.65) pass/fail"}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--reps", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=2026)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    started = time.perf_counter()
    print(f"{args.reps} repetitions per cell, threshold 5%, alpha 0.05, seed {args.seed}\n")
    print("| rewards | drop | runs/arm | fixed | fixed x20 looks | sequential x20 looks |")
    print("|---|---:|---:|---:|---:|---:|")
    for kind, label in KINDS.items():
        for drop in (0.0, 0.05, 0.10, 0.20):
            for n in (100, 200, 400, 800):
                looks = list(range(20, n + 1, 20))
                cells = [
                    simulate(rng, args.reps, n, 0.65, drop, kind=kind),
                    simulate(rng, args.reps, n, 0.65, drop, kind=kind, looks=looks),
                    simulate(rng, args.reps, n, 0.65, drop, kind=kind, looks=looks, sequential=True),
                ]
                print(f"| {label} | {drop:.0%} | {n} | " + " | ".join(f"{c:.1%}" for c in cells) + " |")
    print("\nruns per arm for 80% power at a 10% drop (fixed horizon, from the formula detect_drift reports):")
    for kind, var in (("beta", 0.04), ("bernoulli", 0.65 * 0.35)):
        print(f"  {KINDS[kind]}: {runs_per_arm_needed(var, var, 0.65)}")
    print(f"\n({time.perf_counter() - started:.1f} s)")


if __name__ == "__main__":
    main()
