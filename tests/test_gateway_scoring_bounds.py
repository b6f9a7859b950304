"""The gateway's scoring is bounded (learning/gateway/scoring.py): at most max_queued answers
wait, none longer than max_wait_s, and close keeps its deadline. A flood of answers that loop
cannot hold the scorer or the shutdown; what it did not score stays pending (no reward), marked
meta.unscored with the tests it was to be scored on, and is reported by run id, never by answer.
Honest answers are still scored with the share of tests passed. All in the real sandbox."""

from __future__ import annotations

import shutil
import time

import pytest

from learning.gateway.recording import Recorder
from learning.gateway.scoring import Scorer
from learning.runs.record import get_run, log_run
from learning.sandbox.execute import SANDBOX_ENV
from learning.store import Store

pytestmark = pytest.mark.skipif(
    shutil.which("bwrap") is None, reason="bubblewrap is not installed (apt-get install bubblewrap); CI installs it"
)

LOOP = "```python\ndef add(a, b):\n    while True:\n        pass\n\nadd(1, 2)\n```"
RIGHT = "Here it is:\n```python\ndef add(a, b):\n    return a + b\n```"
HALF = "def add(a, b):\n    return a + b if a > 0 else 1\n"
TESTS = ["assert add(1, 2) == 3", "assert add(-1, 1) == 0"]
TIMEOUT = 0.5  # each scoring's sandbox timeout here: a looping answer takes about that long
SLACK = 5.0  # jail starts on a busy machine; a behavioural bound, not a timing


@pytest.fixture(autouse=True)
def jailed(monkeypatch):
    monkeypatch.setenv(SANDBOX_ENV, "bwrap")


def pending(store: Store, answer: str, n: int = 1) -> list[int]:
    return [log_run(store, {"role": "coder", "output": answer, "reward": None}).run_id for _ in range(n)]


def recorded(recorder: Recorder, answer: str) -> int:
    """A pending run as the gateway records one: its id is handed out before it is written."""
    run_id = recorder.record(None, {"role": "coder", "output": answer, "reward": None})
    return run_id


def wait_started(scorer: Scorer) -> None:
    deadline = time.monotonic() + 30
    while scorer.queued and time.monotonic() < deadline:
        time.sleep(0.01)
    assert scorer.queued == 0


def assert_unscored(store: Store, run_id: int, why: str) -> None:
    run = get_run(store, run_id)
    assert run.reward is None, run_id
    mark = run.meta["unscored"]
    assert mark["by"] == "gateway" and why in mark["reason"], mark
    assert run.tests == TESTS  # what it was to be scored on, for whoever scores it later


def test_a_full_queue_takes_no_more_and_marks_the_runs_it_refused(tmp_path, capsys):
    store = Store(tmp_path)
    scorer = Scorer(store, timeout=TIMEOUT, max_queued=3)
    first, *waiting = pending(store, LOOP, 4)
    refused = pending(store, LOOP, 5)
    scorer.submit(first, LOOP, TESTS)
    wait_started(scorer)
    futures = [scorer.submit(i, LOOP, TESTS) for i in waiting]
    assert scorer.queued == 3
    started = time.monotonic()
    turned_away = [scorer.submit(i, LOOP, TESTS) for i in refused]
    assert time.monotonic() - started < 1.0  # submit never waits for the scorer
    assert all(f.done() and f.result() is None for f in turned_away)
    assert scorer.queued == 3 and set(scorer.unscored()) == set(refused) and scorer.unscored_total == 5
    scorer.close(deadline_s=60)  # time enough for the ones it took
    assert [f.result() for f in futures] == [0.0] * 3  # a loop times out: no test passes
    for run_id in [first, *waiting]:
        run = get_run(store, run_id)
        assert run.reward == 0.0 and run.signals["scored_by"] == "gateway" and "unscored" not in run.meta
    for run_id in refused:
        assert_unscored(store, run_id, "queue was full")
    err = capsys.readouterr().err
    assert err.count("queue was full") == 1  # one line for the streak, not one per answer
    assert "5 answers were not scored (0 dropped" in err and all(str(i) in err for i in refused)
    assert "while True" not in err and "def add" not in err


def test_close_keeps_its_deadline_under_a_flood_of_loops(tmp_path, capsys):
    store = Store(tmp_path)
    scorer = Scorer(store, timeout=TIMEOUT)
    ids = pending(store, LOOP, 30)  # about 30 * TIMEOUT = 15 s of scoring, were it all done
    for run_id in ids:
        scorer.submit(run_id, LOOP, TESTS)
    deadline_s = 1.0
    started = time.monotonic()
    scorer.close(deadline_s=deadline_s)
    took = time.monotonic() - started
    assert took < deadline_s + 2 * TIMEOUT + SLACK, took  # the deadline, then the scoring under way
    scored = [i for i in ids if get_run(store, i).reward is not None]
    left = [i for i in ids if i not in scored]
    assert 1 <= len(scored) <= 10 and len(left) >= 20, (len(scored), took)
    assert all(get_run(store, i).reward == 0.0 for i in scored)
    for run_id in left:
        assert_unscored(store, run_id, "shut down")
    assert set(scorer.unscored()) == set(left)
    err = capsys.readouterr().err
    assert f"{len(left)} answers were not scored ({len(left)} dropped at the shutdown deadline of 1 s)" in err
    assert all(str(i) in err for i in left) and "while True" not in err
    again = time.monotonic()
    scorer.close()  # once closed, closing again returns at once
    late = pending(store, RIGHT)[0]
    assert scorer.submit(late, RIGHT, TESTS).result(timeout=1) is None  # nothing is scored after close
    assert time.monotonic() - again < 1.0
    assert get_run(store, late).reward is None and scorer.unscored()[late].startswith("it came after")


def test_an_answer_that_waits_past_the_budget_is_dropped_and_the_scorer_recovers(tmp_path, capsys):
    store = Store(tmp_path)
    scorer = Scorer(store, timeout=TIMEOUT, max_wait_s=1.0)
    ids = pending(store, LOOP, 8)
    futures = [scorer.submit(i, LOOP, TESTS) for i in ids]
    assert futures[0].result(timeout=30) == 0.0  # the first started at once
    deadline = time.monotonic() + 30
    while scorer.queued and time.monotonic() < deadline:
        time.sleep(0.05)
    late = ids[3:]  # their turn came after two loops' TIMEOUT and jails: over 1 s of waiting
    assert all(f.result(timeout=30) is None for f in futures[3:])
    right = pending(store, RIGHT)[0]
    assert scorer.submit(right, RIGHT, TESTS).result(timeout=30) == 1.0  # the flood is over: scored again
    scorer.close()
    for run_id in late:
        assert_unscored(store, run_id, "waited over 1 s")
    assert get_run(store, right).reward == 1.0
    err = capsys.readouterr().err
    assert err.count("waited over 1 s") == 1 and "while True" not in err


def test_honest_answers_are_scored_and_a_refused_one_is_marked_once_recorded(tmp_path):
    store = Store(tmp_path)
    recorder = Recorder(store)  # runs are written a moment after their ids are handed out
    scorer = Scorer(store, recorder, timeout=5.0)
    answers = {RIGHT: 1.0, HALF: 0.5, "no code at all": 0.0}
    runs = {recorded(recorder, a): r for a, r in answers.items()}
    futures = {i: scorer.submit(i, a, TESTS) for i, a in zip(runs, answers)}
    assert {i: f.result(timeout=60) for i, f in futures.items()} == runs
    scorer.close()
    for run_id, reward in runs.items():
        run = get_run(store, run_id)
        assert run.reward == reward and run.signals["scored_by"] == "gateway" and run.tests == TESTS

    refusing = Scorer(store, recorder, max_queued=0)  # takes nothing: every answer is marked unscored
    run_id = recorded(recorder, RIGHT)
    assert refusing.submit(run_id, RIGHT, TESTS).result() is None
    refusing.close(deadline_s=0)  # writes the mark, after the recorder has stored the run
    recorder.close()
    assert_unscored(store, run_id, "queue was full (0 answers waiting)")
