"""The demo never touches a home it did not create: with $LEARNLOOP_HOME set it runs in that home's
`demo/` folder, and a home named with --home that holds production adapters is refused unless
--allow-production-home. Its progress reaches an output that is not a terminal, line by line.

The CLI, the home resolution and run_demo are real; the demo's stages are replaced by one that
logs a run and reports progress, so each run takes seconds, not minutes.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from learning.demo import demo
from learning.errors import Conflict
from learning.registry import adapters as registry
from learning.runs.record import log_runs
from learning.store import Store
from server.cli import app
from tests.conftest import ROOT, subprocess_env
from tests.support.store_helpers import count_runs

runner = CliRunner()


def one_run_stage(store: Store, cfg, state: dict, report) -> dict:
    report("base", "pretrain step 1/1200 loss 5.000")
    report("base", "pretrain step 201/1200 loss 2.000")  # the same message, new numbers: not printed again at once
    report("base", "writing the base")
    logged = log_runs(store, [{"agent": "learnloop-demo", "role": "coder", "output": "x = 1", "reward": 1.0}])
    return {"runs_logged": len(logged)}


@pytest.fixture
def cheap_stages(monkeypatch):
    monkeypatch.setattr(demo, "STAGES", [("base", one_run_stage)])


def production_home(path: Path, actor: str = "a person") -> Path:
    """A learnloop home whose coder route has a production adapter someone put there."""
    store = Store(path)
    registry.create_adapter(store, "coder-mine", "coder", "some/base", str(path / "adapters" / "x"), status="candidate")
    registry.set_production(store, "coder-mine", actor, "promoted by hand")
    store.close()
    return path


def snapshot(home: Path) -> dict[str, str]:
    """Every file under the home but the demo's own folders, with a hash of its bytes."""
    return {
        str(p.relative_to(home)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(home.rglob("*"))
        if p.is_file() and p.relative_to(home).parts[0] not in ("demo", "demo-gateway")
    }


def production_ids(home: Path) -> list[str]:
    store = Store(home)
    try:
        return [a.id for a in registry.list_adapters(store, status="production")]
    finally:
        store.close()


def test_with_learnloop_home_set_the_demo_runs_in_its_own_folder(home, monkeypatch, cheap_stages):
    production_home(home)
    before = snapshot(home)
    monkeypatch.setenv("LEARNLOOP_HOME", str(home))
    result = runner.invoke(app, ["demo", "--quick"])
    assert result.exit_code == 0, (result.output, result.exception)
    assert snapshot(home) == before and production_ids(home) == ["coder-mine"]
    assert count_runs(Store(home)) == 0
    assert count_runs(Store(home / "demo")) == 1 and (home / "demo" / "demo" / "summary.json").is_file()
    # not a terminal: plain progress lines, the home first
    assert f"learnloop demo in {home / 'demo'}" in result.stderr
    lines = result.stderr.splitlines()
    assert "1. base model: pretrain step 1/1200 loss 5.000" in lines
    assert "1. base model: writing the base" in lines
    assert not any("201/1200" in line for line in lines)  # within seconds of the last: left out
    assert any(line.startswith("1. base model: done (") for line in lines)


def test_a_home_named_with_production_adapters_is_refused_unless_allowed(home, cheap_stages):
    production_home(home)
    before = snapshot(home)
    refused = runner.invoke(app, ["demo", "--quick", "--json", "--home", str(home)])
    assert isinstance(refused.exception, Conflict), (refused.output, refused.exception)
    message = str(refused.exception)
    assert "coder-mine" in message and "--allow-production-home" in message and "--home" in message
    assert snapshot(home) == before and not (home / "demo").exists()

    allowed = runner.invoke(app, ["demo", "--quick", "--json", "--home", str(home), "--allow-production-home"])
    assert allowed.exit_code == 0, (allowed.output, allowed.exception)
    assert count_runs(Store(home)) == 1


def test_a_home_named_that_a_demo_promoted_in_or_that_is_new_is_used(tmp_path, cheap_stages):
    demos = production_home(tmp_path / "an-earlier-demo", actor="learnloop-demo")
    fresh = tmp_path / "fresh"
    for target in (demos, fresh):
        result = runner.invoke(app, ["demo", "--quick", "--json", "--home", str(target)])
        assert result.exit_code == 0, (target, result.output, result.exception)
        assert count_runs(Store(target)) == 1


def test_the_library_default_is_the_demos_own_folder(home, monkeypatch, cheap_stages):
    monkeypatch.setenv("LEARNLOOP_HOME", str(home))
    summary = demo.run_demo(quick=True)
    assert summary.home == str(home / "demo") and not (home / "learnloop.db").exists()
    production_home(home / "elsewhere")
    with pytest.raises(Conflict, match="coder-mine"):
        demo.run_demo(home / "elsewhere", quick=True)


PROGRESS = """
import sys
from rich.console import Console
from server.demo import StageProgress
with StageProgress(Console()) as progress:  # stdout, a file here
    progress("base", "building or reusing the small base model")
    progress("base", "pretrain step 1/1200 loss 5.000")
    sys.stdin.readline()  # the parent reads the file meanwhile
    progress("base", "done", final=True)
"""


def test_progress_lines_reach_a_redirected_output_as_they_happen(tmp_path):
    """stdout to a file (block-buffered): each line is flushed when printed, not when the run ends."""
    out = tmp_path / "out.txt"
    with open(out, "w") as handle:
        proc = subprocess.Popen(
            [sys.executable, "-c", PROGRESS],
            stdout=handle,
            stdin=subprocess.PIPE,
            text=True,
            env=subprocess_env(),
            cwd=ROOT,
        )
        try:
            deadline = time.monotonic() + 60
            while "pretrain step 1/1200" not in out.read_text() and time.monotonic() < deadline:
                time.sleep(0.05)
            assert proc.poll() is None, "the child ended early"
            assert out.read_text().splitlines() == [
                "1. base model: building or reusing the small base model",
                "1. base model: pretrain step 1/1200 loss 5.000",
            ]
            proc.communicate("\n", timeout=60)
        finally:
            proc.kill()
    assert proc.returncode == 0 and out.read_text().splitlines()[-1].startswith("1. base model: done (")
