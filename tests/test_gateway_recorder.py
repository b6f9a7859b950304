"""The gateway's recorder: runs are given their ids at once and stored by one writer thread, many
per transaction; a reader or a reward that comes before the write waits for it; run ids stay
unique with other writers in between; log_run still stores before it returns."""

from __future__ import annotations

import sqlite3
import threading
from typing import Any

import pytest

from learning.gateway.recording import BLOCK, Recorder
from learning.routing.router import decide, select_adapter
from learning.runs.record import get_run, log_run
from learning.runs.rewards import log_reward
from learning.runs.tokens import new_token
from learning.store import Store
from tests.support.store_helpers import count_runs


def run(k: int, decision_id: str | None = None) -> dict:
    return {"agent": "gateway", "role": "coder", "output": f"x = {k}", "reward": None, "decision_id": decision_id}


def later(store: Store, go: threading.Event, results: dict[str, Any], name: str, call) -> threading.Thread:
    """A thread that connects to the store now and makes its call once `go` is set."""
    ready = threading.Event()

    def work() -> None:
        count_runs(store)  # its connection, opened before anyone holds the database
        ready.set()
        go.wait()
        results[name] = call()

    thread = threading.Thread(target=work)
    thread.start()
    ready.wait(10)
    return thread


def test_queued_runs_are_stored_together_and_waited_for_by_readers_and_rewards(store: Store):
    recorder = Recorder(store)
    assert recorder.flush()
    with recorder.cond:  # its first block of ids, reserved by the writer thread as it starts
        assert recorder.cond.wait_for(lambda: recorder.ids, 30)
    commits, go = recorder.commits, threading.Event()
    results: dict[str, Any] = {}
    tokens = [new_token() for _ in range(30)]  # each run's reward token, as the gateway hands them out
    reader = later(store, go, results, "run", lambda: get_run(store, 4))
    scorer = later(store, go, results, "reward", lambda: log_reward(store, 6, 1.0, reward_token=tokens[5]))
    lock = sqlite3.connect(store.path, isolation_level=None)
    lock.execute("BEGIN IMMEDIATE")  # another writer holds the database: nothing can be stored
    try:
        decisions = [decide(store, "coder", task_key=f"k{k}") for k in range(30)]
        ids = [recorder.record(row, run(k, row.id), tokens[k]) for k, (_, row) in enumerate(decisions)]
        assert ids == list(range(1, 31))
        go.set()
        reader.join(0.3)
        assert reader.is_alive() and count_runs(store) == 0  # waiting for the write, not "no such run"
    finally:
        lock.execute("ROLLBACK")
        lock.close()
    reader.join(10)
    scorer.join(10)
    assert recorder.flush() and count_runs(store) == 30
    assert recorder.commits - commits <= 2  # the queue went in one or two transactions, not thirty
    stored, reward = results["run"], results["reward"]
    assert stored.id == 4 and stored.decision_id == decisions[3][1].id
    assert get_run(store, 6).reward == 1.0 and reward.previous_reward is None
    with store.read() as conn:
        assert conn.execute("SELECT count(*) FROM decisions").fetchone()[0] == 30
    recorder.close()


def test_ids_stay_unique_with_other_writers_and_the_unused_ones_go_back(store: Store):
    first = Recorder(store)
    a = first.record(None, run(1))
    b = log_run(store, run(2)).run_id  # another writer, meanwhile: above the reserved block
    second = Recorder(store)  # another gateway on the same home: its own block
    c = second.record(None, run(3))
    d = first.record(None, run(4))
    assert len({a, b, c, d}) == 4 and a < d < b and c > b
    second.close()
    first.close()  # its block is not the last one reserved: its unused ids stay a gap
    assert sorted(r.id for r in map(lambda i: get_run(store, i), (a, b, c, d))) == sorted((a, b, c, d))
    assert log_run(store, run(5)).run_id == c + 1  # the second's unused ids went back
    assert b == BLOCK + 1


def test_select_adapter_and_log_run_still_store_before_they_return(store: Store):
    chosen = select_adapter(store, "coder")
    with store.read() as conn:
        assert conn.execute("SELECT id FROM decisions").fetchone()[0] == chosen.decision_id
    logged = log_run(store, {**run(1), "decision_id": chosen.decision_id, "reward": 0.5})
    assert get_run(store, logged.run_id).reward == 0.5


def test_a_closed_recorder_refuses_new_runs(store: Store):
    recorder = Recorder(store)
    recorder.close()
    with pytest.raises(RuntimeError, match="closed"):
        recorder.record(None, run(1))
