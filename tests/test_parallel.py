"""Curation's worker processes (learning/data/parallel.py): results in order, errors reported, no
process left behind, and make_sft writing the same dataset with workers as without."""

from __future__ import annotations

import io
import json
import os
import time
from collections.abc import Generator

import pytest

from learning.data import curate as sft
from learning.data import parallel
from learning.runs import record as runs
from tests.conftest import live_processes
from tests.support.redact_corpus import planted_secrets


@pytest.fixture(autouse=True)
def importable_here(monkeypatch):
    """Workers import the functions they run by name: let them import this module too."""
    here = os.path.dirname(__file__)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in (here, os.environ.get("PYTHONPATH")) if p))


def square_all(offset: int, numbers: list[int]) -> list[int]:
    return [n * n + offset for n in numbers]


def fail_on_seven(_config: None, numbers: list[int]) -> list[int]:
    if 7 in numbers:
        raise ValueError("seven is not allowed")
    return numbers


def worker_pids() -> set[int]:
    return live_processes("learning.data.parallel")


def test_results_come_back_in_order_from_workers():
    chunks = ((i, list(range(i * 10, i * 10 + 10))) for i in range(25))
    out = list(parallel.map_chunks(square_all, 1, chunks, workers=2, serial_chunks=3))
    assert [meta for meta, _ in out] == list(range(25))
    assert [v for _, result in out for v in result] == [n * n + 1 for n in range(250)]


def test_a_worker_error_is_raised_with_its_traceback():
    chunks = ((i, [i]) for i in range(12))
    with pytest.raises(RuntimeError, match="seven is not allowed"):
        list(parallel.map_chunks(fail_on_seven, None, chunks, workers=2, serial_chunks=0))
    time.sleep(0.2)
    assert not worker_pids()


def test_closing_early_stops_the_workers():
    before = worker_pids()
    gen = parallel.map_chunks(square_all, 0, ((i, [i]) for i in range(1000)), workers=2, serial_chunks=0)
    assert isinstance(gen, Generator)  # map_chunks returns a generator, to be closed early
    assert [next(gen) for _ in range(3)][2] == (2, [4])
    assert worker_pids() - before  # they were running
    gen.close()
    time.sleep(0.2)
    assert not worker_pids() - before


def _many_runs() -> list[dict]:
    secrets = [p.text for p in planted_secrets()]
    out = []
    for k in range(120):
        for a in range(4):
            output = f"def f{k}(x):\n    return x * {a % 3}\n"
            if a == 1:  # a near-exact duplicate of attempt 0
                output = f"DEF  F{k}(x):\n\treturn x * 0\n"
            if (k + a) % 9 == 0:
                output += secrets[(k + a) % len(secrets)] + "\n"
            out.append(
                {
                    "role": "coder",
                    "instruction": f"Task {k}: write f{k}",
                    "output": output,
                    "reward": round(0.99 - 0.05 * a - 0.001 * k, 3),
                    "task_key": f"t{k}",
                }
            )
    return out


@pytest.mark.parametrize("kwargs", [{}, {"limit": 150}, {"max_per_task": 1, "format": "messages"}])
def test_make_sft_with_workers_writes_the_same_dataset(store, monkeypatch, kwargs):
    text = "\n".join(json.dumps(r) for r in _many_runs())
    runs.import_runs(store, io.StringIO(text))
    monkeypatch.setattr(sft, "CHUNK", 16)  # many small chunks: most of them go to the workers
    monkeypatch.setattr(parallel, "SERIAL_CHUNKS", 2)
    monkeypatch.setattr(sft, "SERIAL_LIMIT", 10)
    results = {}
    for workers in ("1", "2"):
        monkeypatch.setenv("LEARNLOOP_WORKERS", workers)
        results[workers] = sft.make_sft(store, "coder", min_reward=0.5, **kwargs)
    one, two = results["1"], results["2"]
    assert one.content_hash == two.content_hash
    assert one.counts == two.counts and one.redaction_counts == two.redaction_counts
    assert one.counts["over_task_cap" if "max_per_task" in kwargs else "duplicates"] > 0
    assert sum(one.redaction_counts.values()) > 0
    if "limit" in kwargs:
        assert one.train_rows + one.test_rows == 150
    assert not worker_pids()
