"""Scoring an answer by its request's tests, after the answer has gone out.

A request whose `metadata.tests` holds Python statements is answered first; then, in a worker
thread of this process, the code of the answer (its first fenced block, else the whole text)
runs with those tests in the sandbox (learning.sandbox.execute: a bubblewrap jail), and the
run gets reward = share of tests passed, signals compiled / tests_passed / tests_total /
sandbox / scored_by = "gateway", and the tests themselves (so curation carries them to the
gate). The reward is measured: the gateway holds the run, so it needs no token, and no client
can replace it afterwards (such an answer carries no reward token). One scoring at a time; a
queue holds the rest. A scoring waits until the recorder has stored its run (it is queued there
a moment before). `close` finishes what is queued. Where the sandbox cannot run, the run stays
pending (the reason, never the answer, goes to stderr), to be scored later by the home's owner
(`learnloop reward RUN_ID REWARD --override --reason ...`).
"""

from __future__ import annotations

import sys
from concurrent.futures import Future, ThreadPoolExecutor

from learning.errors import LearnloopError
from learning.gateway.recording import Recorder
from learning.runs.rewards import give_reward
from learning.sandbox import execute as sandbox
from learning.sandbox.code import extract_code
from learning.store import Store

SCORED_BY = "gateway"
TIMEOUT_S = 5.0  # the code and all its tests


def score_answer(store: Store, run_id: int, answer: str, tests: list[str], timeout: float = TIMEOUT_S) -> float:
    """Run the answer's code with the tests in the sandbox and record the reward; returns it."""
    code = extract_code(answer)[1]
    result = sandbox.run_tests(code, tests, timeout=timeout)
    signals = {
        "compiled": result.compiled,
        "tests_passed": result.passed,
        "tests_total": result.total,
        "sandbox": result.sandbox,
        "isolation": result.isolation,
        "scored_by": SCORED_BY,
    }
    give_reward(
        store, run_id, {"reward": result.score, "signals": signals, "tests": tests}, measured=True, actor=SCORED_BY
    )
    return result.score


class Scorer:
    """Scores answers in the background: `submit` returns at once."""

    def __init__(self, store: Store, recorder: Recorder | None = None):
        self.store, self.recorder = store, recorder
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="learnloop-scorer")

    def submit(self, run_id: int, answer: str, tests: list[str]) -> Future:
        return self.pool.submit(self._score, run_id, answer, tests)

    def _score(self, run_id: int, answer: str, tests: list[str]) -> float | None:
        try:
            if self.recorder is not None:
                self.recorder.flush()
            return score_answer(self.store, run_id, answer, tests)
        except LearnloopError as exc:  # e.g. SandboxUnavailable: the run stays pending
            print(f"learnloop gateway: run {run_id} was not scored: {exc}", file=sys.stderr)
            return None

    def close(self) -> None:
        self.pool.shutdown(wait=True)
