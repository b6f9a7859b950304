"""Several processes logging and importing into one home at once lose no run."""

from __future__ import annotations

import subprocess
import sys

from learning.store import Store
from tests.conftest import ROOT, subprocess_env
from tests.support.store_helpers import count_runs

WRITER = r"""
import io, json, sys
from learning.store import Store
from learning.runs.record import log_run, import_runs
store = Store(sys.argv[1]); worker = int(sys.argv[2]); n = int(sys.argv[3])
for i in range(n):
    log_run(store, {"role": "coder", "output": f"w{worker}-{i}", "reward": 0.5, "agent": f"w{worker}"})
lines = "\n".join(json.dumps({"role": "coder", "output": f"w{worker}-imp{i}", "reward": 1.0, "agent": f"w{worker}"})
                  for i in range(n * 5))
import_runs(store, io.StringIO(lines), batch_size=50)
print("ok")
"""


def test_concurrent_writers_lose_nothing(home):
    workers, per_worker = 4, 150
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, str(home), str(w), str(per_worker)],
            env=subprocess_env(),
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for w in range(workers)
    ]
    outputs = [p.communicate(timeout=240) for p in procs]
    for proc, (_out, err) in zip(procs, outputs):
        assert proc.returncode == 0, err
        assert "database is locked" not in err
    store = Store(home)
    assert count_runs(store) == workers * per_worker * 6
    with store.read() as conn:
        per_agent = dict(conn.execute("SELECT agent, count(*) FROM runs GROUP BY agent").fetchall())
        distinct = conn.execute("SELECT count(DISTINCT output) FROM runs").fetchone()[0]
    assert per_agent == {f"w{w}": per_worker * 6 for w in range(workers)}
    assert distinct == workers * per_worker * 6
