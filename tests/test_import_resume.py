"""Importing is safe to repeat: a killed import, imported again, adds only the missing lines."""

from __future__ import annotations

import json
import signal
import subprocess
import time

import pytest

from learning.runs.record import import_runs, import_runs_from
from learning.store import Store
from tests.conftest import LEARNLOOP, ROOT, run_cli, subprocess_env
from tests.support.store_helpers import count_runs


def write_runs(path, n: int) -> None:
    path.write_text(
        "".join(
            json.dumps({"role": "coder", "instruction": f"t{i % 97}", "output": f"o{i}", "reward": 0.5}) + "\n"
            for i in range(n)
        )
    )


def test_importing_a_file_twice_adds_nothing_the_second_time(tmp_path):
    store = Store(tmp_path / "home")
    path = tmp_path / "runs.jsonl"
    write_runs(path, 30)
    assert import_runs(store, path, batch_size=7).imported == 30
    again = import_runs(store, str(path), batch_size=7)
    assert (again.imported, again.already_imported, count_runs(store)) == (0, 30, 30)
    # The same text given inline is the same content: its lines are known too.
    inline = import_runs_from(store, jsonl=path.read_text())
    assert (inline.imported, inline.already_imported) == (0, 30)
    # Another file (one line more) is other content: all of its lines are new.
    write_runs(path, 31)
    assert import_runs(store, path).imported == 31 and count_runs(store) == 61
    # Streams carry no key: the library's callers that import generated runs are unchanged.
    import io

    text = "".join(json.dumps({"role": "coder", "output": "x", "reward": 1}) + "\n" for _ in range(3))
    assert import_runs(store, io.StringIO(text)).imported == 3
    assert import_runs(store, io.StringIO(text)).imported == 3


@pytest.mark.slow
def test_an_import_killed_part_way_then_run_again_imports_every_line_once(tmp_path):
    home, path, lines = tmp_path / "home", tmp_path / "runs.jsonl", 60_000
    write_runs(path, lines)
    store = Store(home)
    assert count_runs(store) == 0  # the home exists (migrated) before the import starts
    proc = subprocess.Popen(
        [*LEARNLOOP, "import", str(path), "--batch-size", "500"],
        env=subprocess_env(home),
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 120
    while count_runs(store) == 0 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = count_runs(store)
    assert 0 < before < lines, f"the kill came too late: {before} of {lines} lines imported"
    done = run_cli("import", str(path), "--json", home=home, timeout=300)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["already_imported"] == before and result["imported"] == lines - before
    assert count_runs(store) == lines
    with store.read() as conn:
        assert conn.execute("SELECT count(DISTINCT output) AS n FROM runs").fetchone()["n"] == lines
