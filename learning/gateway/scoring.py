"""Scoring an answer by its request's tests, after the answer has gone out.

A request whose `metadata.tests` holds Python statements is answered first; then, in a worker
thread of this process, the code of the answer (its first fenced block, else the whole text)
runs with those tests in the sandbox (learning.sandbox.execute: a bubblewrap jail), and the
run gets reward = share of tests passed, signals compiled / tests_passed / tests_total /
sandbox / scored_by = "gateway", and the tests themselves (so curation carries them to the
gate). The reward is measured: the gateway holds the run, so it needs no token, and no client
can replace it afterwards (such an answer carries no reward token). A scoring waits until the
recorder has stored its run (it is queued there a moment before).

One scoring at a time, each bounded by the sandbox's timeout (`timeout`, 5 s for the code and
all its tests). The answers waiting are bounded too, so a flood of answers that loop cannot hold
the scorer:
- at most `max_queued` (64) wait; an answer beyond them is not queued;
- none waits more than `max_wait_s` (60 s) for its turn; one that has not started by then is
  dropped. So the scorer is busy at most max_wait_s + one scoring after the last answer it took;
- `close(deadline_s)` (10 s) scores what it can until its deadline, then drops what still waits;
  it returns once the scoring under way ends (bounded by its sandbox timeout).
An answer not scored (dropped, or the sandbox could not run) leaves its run pending, with no
reward, marked in the database: `meta.unscored` = {by: "gateway", reason, time}, and the
request's tests stored as the run's tests, so the home's owner sees why and can score it later
(`learnloop reward RUN_ID REWARD --override --reason ...`). The reason goes to stderr with the
run id, never the answer; `close` lists every run left unscored; `Scorer.unscored()` returns them.
"""

from __future__ import annotations

import sys
import threading
import time
from collections import OrderedDict, deque
from concurrent.futures import Future
from dataclasses import dataclass, field

from learning.clock import iso
from learning.errors import LearnloopError
from learning.gateway.recording import Recorder
from learning.runs.rewards import give_reward
from learning.runs.schema import LIMITS
from learning.sandbox import execute as sandbox
from learning.sandbox.code import extract_code
from learning.store import Store, dumps, loads

SCORED_BY = "gateway"
TIMEOUT_S = 5.0  # the code and all its tests
MAX_QUEUED = 64  # answers waiting for their scoring (the one being scored is not counted)
MAX_WAIT_S = 60.0  # the longest an answer waits for its turn before it is dropped
CLOSE_DEADLINE_S = 10.0  # close: how long it goes on scoring what waits
FLUSH_S = 10.0  # the longest a scoring waits for the recorder to store its run
UNSCORED_KEPT = 10_000  # run ids unscored() remembers (the database marks every one)
LISTED = 50  # run ids close's stderr line names

QUEUE_FULL = "the scoring queue was full ({n} answers waiting)"
WAITED = "it waited over {s:g} s for its turn (a backlog of scorings)"
SHUT_DOWN = "the gateway shut down before its turn"
CLOSED = "it came after the scorer had closed"


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


def mark_unscored(store: Store, marks: list[tuple[int, str, list[str]]]) -> int:
    """Mark pending runs the gateway did not score, in one transaction: meta.unscored =
    {by, reason, time}, and the tests they were to be scored on (where the run has none). A run
    scored meanwhile, or not stored, is left as it is. Returns how many runs were marked."""
    now, marked = iso(time.time()), 0
    with store.write() as conn:
        for run_id, reason, tests in marks:
            row = conn.execute("SELECT meta FROM runs WHERE id = ? AND reward IS NULL", (run_id,)).fetchone()
            if row is None:
                continue
            meta = loads(row["meta"]) or {}
            text = dumps({**meta, "unscored": {"by": SCORED_BY, "reason": reason, "time": now}})
            if len(text) > LIMITS["meta"]:  # a run's meta has a size limit: keep it as it is
                text = row["meta"]
            tests_text = dumps(tests) if tests else None
            conn.execute(
                "UPDATE runs SET meta = ?, tests = ifnull(tests, ?) WHERE id = ? AND reward IS NULL",
                (text, tests_text, run_id),
            )
            marked += 1
    return marked


@dataclass
class _Job:
    run_id: int
    answer: str
    tests: list[str]
    queued: float  # time.monotonic() when submitted
    future: Future = field(default_factory=Future)


class Scorer:
    """Scores answers in the background: `submit` returns at once, with a Future of the reward
    (None when the answer is not scored). Bounded: see the module's docstring."""

    def __init__(
        self,
        store: Store,
        recorder: Recorder | None = None,
        timeout: float = TIMEOUT_S,
        max_queued: int = MAX_QUEUED,
        max_wait_s: float = MAX_WAIT_S,
    ):
        if timeout <= 0 or max_queued < 0 or max_wait_s < 0:
            raise ValueError("timeout must be > 0, max_queued and max_wait_s >= 0")
        self.store, self.recorder = store, recorder
        self.timeout, self.max_queued, self.max_wait_s = timeout, max_queued, max_wait_s
        self.unscored_total = 0  # answers not scored since the scorer started
        self._cond = threading.Condition()
        self._queue: deque[_Job] = deque()
        self._running: _Job | None = None
        self._marks: list[tuple[int, str, list[str]]] = []  # runs to mark unscored in the database
        self._unscored: OrderedDict[int, str] = OrderedDict()
        self._quiet: set[str] = set()  # kinds of drops already reported, until the scorer recovers
        self._closing = self._stop = False
        self._thread = threading.Thread(target=self._loop, name="learnloop-scorer", daemon=True)
        self._thread.start()

    # ---- what callers use ---------------------------------------------------------------------

    def submit(self, run_id: int, answer: str, tests: list[str]) -> Future:
        """Queue an answer for scoring; never blocks. Beyond max_queued (or after close) the answer
        is not queued: its run stays pending, marked, and the Future holds None."""
        job = _Job(run_id, answer, list(tests), time.monotonic())
        with self._cond:
            if self._closing:
                say = self._drop(job, CLOSED, "closed", mark=False)
            elif len(self._queue) >= self.max_queued:
                say = self._drop(job, QUEUE_FULL.format(n=self.max_queued), "full")
            else:
                self._quiet.discard("full")
                self._queue.append(job)
                say = None
            self._cond.notify_all()
        _say(say)
        return job.future

    @property
    def queued(self) -> int:
        """Answers waiting for their scoring (not counting the one being scored)."""
        with self._cond:
            return len(self._queue)

    def unscored(self) -> dict[int, str]:
        """The runs this scorer did not score, run id -> why, oldest first (the last
        UNSCORED_KEPT; `unscored_total` counts them all). They stay pending, marked meta.unscored."""
        with self._cond:
            return dict(self._unscored)

    def close(self, deadline_s: float = CLOSE_DEADLINE_S) -> None:
        """Score what waits until deadline_s has passed, then drop the rest (their runs stay
        pending, marked); return once the scoring under way has ended, which its sandbox timeout
        bounds. Reports on stderr every run left unscored (ids, never answers). Calling it again
        returns at once."""
        end = time.monotonic() + max(0.0, deadline_s)
        with self._cond:
            first = not self._closing
            self._closing = True
            self._cond.wait_for(lambda: not self._queue and self._running is None, max(0.0, end - time.monotonic()))
            dropped = list(self._queue)
            self._queue.clear()
            for job in dropped:
                self._drop(job, SHUT_DOWN, "shutdown")  # said all together below
            self._stop = True
            self._cond.notify_all()
        self._thread.join(timeout=2 * self.timeout + FLUSH_S + 30.0)  # the scoring under way, bounded by its sandbox
        still = self._running if self._thread.is_alive() else None
        self._write_marks()  # the worker wrote what it held before it stopped; this writes the rest
        if first:
            self._report(len(dropped), deadline_s, still)

    # ---- the worker ---------------------------------------------------------------------------

    def _loop(self) -> None:
        try:
            while True:
                says: list[str | None] = []
                with self._cond:
                    self._cond.wait_for(lambda: self._queue or self._marks or self._stop)
                    job = None
                    while self._queue and job is None:
                        head = self._queue.popleft()
                        if time.monotonic() - head.queued > self.max_wait_s:
                            says.append(self._drop(head, WAITED.format(s=self.max_wait_s), "waited"))
                        else:
                            self._quiet.discard("waited")
                            job = head
                    self._running = job
                    stop = job is None and not self._marks and self._stop
                    self._cond.notify_all()  # close waits for an empty queue
                for say in says:
                    _say(say)
                if stop:
                    return
                self._write_marks()
                if job is not None:
                    reward = self._score(job)
                    if not job.future.done():  # an answer not scored has its None already
                        job.future.set_result(reward)
                with self._cond:
                    self._running = None
                    self._cond.notify_all()
        finally:
            with self._cond:
                self._running = None
                self._cond.notify_all()
            self.store.close()  # this thread's connection

    def _score(self, job: _Job) -> float | None:
        try:
            if self.recorder is not None:
                self.recorder.flush(timeout=FLUSH_S)
            return score_answer(self.store, job.run_id, job.answer, job.tests, timeout=self.timeout)
        except LearnloopError as exc:  # e.g. SandboxUnavailable: the run stays pending
            reason = str(exc)[:500]
        except Exception as exc:  # the worker goes on with the next answer
            reason = f"{type(exc).__name__}: {str(exc)[:300]}"
        with self._cond:
            say = self._drop(job, reason, "error")
        _say(say)
        return None

    def _drop(self, job: _Job, reason: str, kind: str, mark: bool = True) -> str | None:
        """Note a run not scored (under the lock): kept for unscored(), queued to be marked in the
        database, its Future set to None. Returns the stderr line to print after the lock, if any:
        the first of a streak of drops of one kind (shutdown's are said together by close)."""
        self.unscored_total += 1
        self._unscored[job.run_id] = reason
        while len(self._unscored) > UNSCORED_KEPT:
            self._unscored.popitem(last=False)
        if mark:
            self._marks.append((job.run_id, reason, job.tests))
        if not job.future.done():
            job.future.set_result(None)
        if kind == "shutdown" or kind in self._quiet:
            return None
        if kind in ("full", "waited"):
            self._quiet.add(kind)
            more = " (the next ones dropped so are not reported one by one; close lists them)"
        else:
            more = ""
        where = " (meta.unscored)" if mark else ""
        return f"learnloop gateway: run {job.run_id} was not scored: {reason}; it stays pending{where}{more}"

    def _write_marks(self) -> None:
        """Mark in the database the runs dropped so far, once the recorder has stored them."""
        with self._cond:
            marks, self._marks = self._marks, []
        if not marks:
            return
        try:
            if self.recorder is not None:
                self.recorder.flush(timeout=FLUSH_S)
            mark_unscored(self.store, marks)
        except Exception as exc:  # the runs stay pending either way; stderr has their ids
            ids = ", ".join(str(m[0]) for m in marks[:LISTED])
            _say(
                f"learnloop gateway: could not mark {len(marks)} unscored runs in the database "
                f"({type(exc).__name__}: {str(exc)[:300]}): {ids}"
            )

    def _report(self, dropped: int, deadline_s: float, still: _Job | None) -> None:
        with self._cond:
            left, total = list(self._unscored), self.unscored_total
        if still is not None:
            _say(
                f"learnloop gateway: run {still.run_id} was still being scored when the scorer closed; "
                "it stays pending unless its scoring ends"
            )
        if not total:
            return
        ids = ", ".join(map(str, left[:LISTED])) + (f" and {len(left) - LISTED} more" if len(left) > LISTED else "")
        _say(
            f"learnloop gateway: {total} answers were not scored ({dropped} dropped at the shutdown deadline of "
            f"{deadline_s:g} s): runs {ids}. They stay pending, marked meta.unscored; the home's owner scores "
            "them with `learnloop reward RUN_ID REWARD --override --reason ...`."
        )


def _say(line: str | None) -> None:
    if line:
        print(line, file=sys.stderr, flush=True)
