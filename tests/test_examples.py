"""The examples work as shipped: the agent loop against the real server over stdio, the
configs parse, the weekly script chains the cycle, the presets are the library's presets."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import anyio
import pytest

from tests.conftest import ROOT, subprocess_env

EXAMPLES = ROOT / "examples"
sys.path.insert(0, str(EXAMPLES))


@pytest.mark.slow
def test_agent_loop_over_stdio_logs_executed_rewards_with_decisions(home):
    import random

    from agent_loop import reference_solver, run_agent

    from learning.registry import adapters as registry
    from learning.runs.record import get_run
    from learning.store import Store

    # Before any adapter: the route gives the base model, each run still carries its decision.
    lines = anyio.run(run_agent, str(home), "coder", 10, reference_solver(0.5, random.Random(1)))
    assert len(lines) == 10 and all(x["decision_id"] and x["adapter_id"] is None for x in lines)
    rewards = [x["reward"] for x in lines]
    assert 1.0 in rewards and any(r < 1.0 for r in rewards)

    # With a production adapter, select_adapter routes to it and log_run attributes the reward.
    store = Store(home)
    registry.create_adapter(
        store, "coder-example", "coder", "embedded:tiny", str(home / "adapters" / "x"), status="candidate"
    )
    registry.set_production(store, "coder-example", "test", "example")
    lines = anyio.run(run_agent, str(home), "coder", 4, reference_solver(0.0, random.Random(2)), "heldout")
    assert all(x["adapter_id"] == "coder-example" and x["reward"] == 1.0 for x in lines)
    run = get_run(store, lines[0]["run_id"])
    assert run.adapter_id == "coder-example" and run.decision_id == lines[0]["decision_id"]
    assert run.signals["executed"] is True and run.signals["tests_total"] == 5
    store.close()


def test_agent_loop_script_runs_as_documented(home):
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / "agent_loop.py"), "--home", str(home), "--tasks", "4", "--role", "judge"],
        capture_output=True,
        text=True,
        env=subprocess_env(),
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = [json.loads(x) for x in proc.stdout.splitlines()]
    assert len(lines) == 4 and "4 runs logged" in proc.stderr


def test_client_configs_start_the_server():
    desktop = json.loads((EXAMPLES / "claude_desktop_config.json").read_text())
    server = desktop["mcpServers"]["learnloop"]
    assert server["args"] == ["serve"] and server["command"].endswith("learnloop")
    text = (EXAMPLES / "claude_code.md").read_text()
    assert "claude mcp add --transport stdio --scope user" in text and "learnloop -- " in text and " serve" in text


def test_weekly_script_chains_a_cycle_per_role_and_reports_failure(home):
    script = EXAMPLES / "weekly_retrain.sh"
    assert os.access(script, os.X_OK)
    subprocess.run(["bash", "-n", str(script)], check=True)
    env = {**subprocess_env(home), "LEARNLOOP": f"{sys.executable} -m server", "ROLES": "coder judge"}
    # An empty home: each cycle refuses to start (no runs), and the script says so and exits 1.
    proc = subprocess.run(["bash", str(script)], capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
    assert proc.returncode == 1
    assert proc.stdout.count("cycle for role") == 2
    assert "no runs or adapters for role 'coder'" in proc.stderr


@pytest.mark.parametrize("name", ["light", "default", "heavy"])
def test_preset_files_are_the_library_presets(name):
    from learning.train.config import build_config, load_yaml

    preset, overrides = load_yaml(EXAMPLES / "presets" / f"{name}.yaml")
    assert preset == name
    assert build_config(preset, overrides) == build_config(name)
