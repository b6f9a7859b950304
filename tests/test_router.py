"""Routing: route levels, cache invalidation across processes, decisions and attribution,
canary and Thompson experiments, the MCP tools and the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import anyio
import numpy as np
import pytest
from mcp import Client

from learning.errors import Conflict, InvalidInput, NotFound
from learning.registry import adapters as registry
from learning.routing import experiments, router
from learning.runs import record as runs
from learning.store import Store
from server.mcp import build_server
from tests.conftest import ROOT, annotations_of, run_cli, subprocess_env


def adapter(
    store,
    adapter_id,
    role="coder",
    task_type=None,
    complexity=None,
    status: registry.Status = "candidate",
    promote=False,
):
    registry.create_adapter(
        store,
        adapter_id,
        role,
        "tiny-llama",
        f"/adapters/{adapter_id}",
        status=status,
        task_type=task_type,
        complexity=complexity,
    )
    if promote:
        registry.set_production(store, adapter_id, "test", "test")


def log(store, selection, reward, role="coder"):
    return runs.log_run(store, {"role": role, "output": "x", "reward": reward, "decision_id": selection.decision_id})


def test_base_model_when_nothing_is_promoted(store):
    s = router.select_adapter(store, "coder")
    assert s.adapter_id is None and s.route == "base" and s.adapter_path is None and s.decision_id.startswith("d-")
    adapter(store, "c1")  # a candidate only: still the base, but now the base model is known
    s = router.select_adapter(store, "coder")
    assert s.adapter_id is None and s.base_model == "tiny-llama"


def test_most_specific_route_wins(store):
    adapter(store, "role", promote=True)
    adapter(store, "tt", task_type="refactor", promote=True)
    adapter(store, "cx", complexity="hard", promote=True)
    adapter(store, "exact", task_type="refactor", complexity="hard", promote=True)
    adapter(store, "judge", role="judge", promote=True)
    cases = [
        (dict(task_type="refactor", complexity="hard"), "exact", "exact"),
        (dict(task_type="refactor", complexity="easy"), "tt", "task_type"),
        (dict(task_type="scaffold", complexity="hard"), "cx", "complexity"),
        (dict(task_type="scaffold"), "role", "role"),
        (dict(complexity="hard"), "cx", "complexity"),
        (dict(), "role", "role"),
    ]
    for kwargs, expected, level in cases:
        s = router.select_adapter(store, "coder", **kwargs)
        assert (s.adapter_id, s.route) == (expected, level), kwargs
    assert router.select_adapter(store, "judge", task_type="refactor").adapter_id == "judge"
    assert router.select_adapter(store, "fixer").route == "base"


def test_selection_follows_promote_and_rollback_at_once_across_stores(home):
    writer, reader = Store(home), Store(home)  # two connections, as two processes would have
    adapter(writer, "a1", promote=True)
    assert router.select_adapter(reader, "coder").adapter_id == "a1"
    adapter(writer, "a2")
    registry.set_production(writer, "a2", "test", "better")
    assert router.select_adapter(reader, "coder").adapter_id == "a2"
    registry.rollback_route(writer, "coder")
    assert router.select_adapter(reader, "coder").adapter_id == "a1"
    # The same store (same connection) writing and reading sees it too.
    registry.set_production(reader, "a2", "test", "again")
    assert router.select_adapter(reader, "coder").adapter_id == "a2"
    # A promotion in another process.
    code = (
        "from learning.store import Store; from learning.registry import adapters as registry; "
        f"registry.rollback_route(Store({str(home)!r}), 'coder')"
    )
    subprocess.run([sys.executable, "-c", code], check=True, env=subprocess_env(home), cwd=ROOT)
    assert router.select_adapter(reader, "coder").adapter_id == "a1"


def test_decision_is_recorded_and_attributes_the_run(store):
    adapter(store, "a1", promote=True)
    s = router.select_adapter(store, "coder", task_key="t1")
    stored = runs.get_run(store, log(store, s, 0.7).run_id)
    assert stored.adapter_id == "a1" and stored.decision_id == s.decision_id
    row = runs.decision_row(store, s.decision_id)
    assert row is not None
    assert row["adapter_id"] == "a1" and row["route"] == "role" and row["task_key"] == "t1"
    base = router.select_adapter(store, "fixer")
    assert runs.get_run(store, log(store, base, 0.5, role="fixer").run_id).adapter_id is None
    with pytest.raises(InvalidInput, match="Unknown decision_id"):
        runs.log_run(store, {"role": "coder", "output": "x", "reward": 1, "decision_id": "d-nope"})
    with pytest.raises(InvalidInput, match="made for role"):
        runs.log_run(store, {"role": "judge", "output": "x", "reward": 1, "decision_id": s.decision_id})
    adapter(store, "other")
    with pytest.raises(InvalidInput, match="differs"):
        runs.log_run(
            store, {"role": "coder", "output": "x", "reward": 1, "decision_id": s.decision_id, "adapter_id": "other"}
        )


def test_served_name_comes_from_the_latest_deployment(store):
    adapter(store, "a1", promote=True)
    with store.write() as conn:
        conn.execute(
            "INSERT INTO deployments (id, adapter_id, target, url, served_name, created, status) "
            "VALUES ('dep1', 'a1', 'vllm', 'http://127.0.0.1:8000/v1', 'coder-a1', ?, 'active')",
            (time.time(),),
        )
    s = router.select_adapter(store, "coder")
    assert s.deployment_url is not None
    assert s.served_name == "coder-a1" and s.deployment_url.endswith("/v1")


def test_bad_selection_input(store):
    with pytest.raises(InvalidInput, match="role"):
        router.select_adapter(store, "Not A Role")
    with pytest.raises(InvalidInput, match="task_key"):
        router.select_adapter(store, "coder", task_key="")


def test_canary_is_deterministic_and_sends_the_fraction(store):
    adapter(store, "prod", promote=True)
    adapter(store, "cand")
    exp = experiments.start_experiment(store, "coder", "cand", "canary", fraction=0.2, seed=7)
    assert exp.control_id == "prod" and exp.status == "running"
    arms = [router.select_adapter(store, "coder", task_key=f"task-{i}", record=False).arm for i in range(2000)]
    share = arms.count("candidate") / len(arms)
    assert 0.17 < share < 0.23  # binomial sd 0.009
    again = [router.select_adapter(store, "coder", task_key=f"task-{i}", record=False).arm for i in range(200)]
    assert again == arms[:200]
    reseeded = [
        router.select_adapter(store, "coder", task_key=f"task-{i}", seed=8, record=False).arm for i in range(200)
    ]
    assert reseeded != arms[:200] and 0.1 < reseeded.count("candidate") / 200 < 0.3
    picked = router.select_adapter(store, "coder", task_key="task-0")
    assert picked.experiment_id == exp.id and picked.adapter_id == ("cand" if arms[0] == "candidate" else "prod")
    stopped = experiments.stop_experiment(store, role="coder", reason="done")
    assert stopped.status == "stopped"
    assert {router.select_adapter(store, "coder", task_key=f"task-{i}").adapter_id for i in range(50)} == {"prod"}


def test_thompson_draws_favour_the_better_arm():
    better = {"control": (100, 50.0), "candidate": (100, 80.0)}
    arms = [router.thompson_arm(better, 0, "e", f"k{i}") for i in range(1000)]
    assert arms.count("candidate") > 950
    assert arms == [router.thompson_arm(better, 0, "e", f"k{i}") for i in range(1000)]  # deterministic


def test_thompson_sends_most_traffic_to_the_better_arm(store, monkeypatch):
    monkeypatch.setattr(router, "STATS_TTL_S", 0.0)
    adapter(store, "prod", promote=True)
    adapter(store, "cand")
    exp = experiments.start_experiment(store, "coder", "cand", "thompson", seed=3)
    rng = np.random.default_rng(0)
    means = {"prod": 0.45, "cand": 0.75}  # Bernoulli rewards
    chosen = []
    for i in range(300):
        s = router.select_adapter(store, "coder", task_key=f"t{i}")
        chosen.append(s.adapter_id)
        assert s.adapter_id is not None
        log(store, s, float(rng.random() < means[s.adapter_id]))
    assert chosen[150:].count("cand") / 150 > 0.8
    arms = {a.arm: a for a in experiments.list_experiments(store, "coder")[0].arms}
    assert arms["candidate"].runs + arms["control"].runs == 300 and arms["candidate"].runs > 200
    assert exp.id == experiments.list_experiments(store)[0].id


def test_experiment_rules(store):
    adapter(store, "prod", promote=True)
    adapter(store, "cand")
    adapter(store, "judge1", role="judge")
    with pytest.raises(InvalidInput, match="role"):
        experiments.start_experiment(store, "coder", "judge1")
    with pytest.raises(Conflict, match="production"):
        experiments.start_experiment(store, "coder", "prod")
    with pytest.raises(NotFound):
        experiments.start_experiment(store, "coder", "nope")
    with pytest.raises(InvalidInput, match="fraction"):
        experiments.start_experiment(store, "coder", "cand", "canary", fraction=1.5)
    exp = experiments.start_experiment(store, "coder", "cand", "canary", fraction=0.5)
    with pytest.raises(Conflict, match="already runs"):
        experiments.start_experiment(store, "coder", "cand", "thompson")
    experiments.stop_experiment(store, exp.id)
    with pytest.raises(Conflict, match="already stopped"):
        experiments.stop_experiment(store, exp.id)
    # A candidate promoted while its experiment runs simply serves everyone.
    experiments.start_experiment(store, "coder", "cand", "canary", fraction=0.5)
    registry.set_production(store, "cand", "test", "won")
    assert {router.select_adapter(store, "coder", task_key=f"k{i}").arm for i in range(20)} == {None}


def test_mcp_tools(home):
    async def main():
        store = Store(home)
        adapter(store, "prod", promote=True)
        adapter(store, "cand")
        async with Client(build_server(str(home))) as client:
            tools = {t.name: t for t in (await client.list_tools()).tools}
            assert annotations_of(tools["select_adapter"]).read_only_hint is True
            assert annotations_of(tools["detect_drift"]).destructive_hint is True
            sel = (await client.call_tool("select_adapter", {"role": "coder", "task_key": "k"})).structured_content
            assert sel["adapter_id"] == "prod" and sel["route"] == "role"
            logged = await client.call_tool(
                "log_run", {"role": "coder", "output": "x", "reward": 0.9, "decision_id": sel["decision_id"]}
            )
            assert not logged.is_error
            assert runs.get_run(store, logged.structured_content["run_id"]).adapter_id == "prod"
            started = (
                await client.call_tool(
                    "start_experiment", {"role": "coder", "candidate_id": "cand", "mode": "canary", "fraction": 0.3}
                )
            ).structured_content
            assert started["status"] == "running"
            listed = (await client.call_tool("list_experiments", {})).structured_content
            assert listed["result"][0]["id"] == started["id"]
            stopped = (await client.call_tool("stop_experiment", {"experiment_id": started["id"]})).structured_content
            assert stopped["status"] == "stopped"
            bad = await client.call_tool("select_adapter", {"role": "coder", "surprise": 1})
            assert bad.is_error

    anyio.run(main)


def test_cli_select_and_experiment(home):
    out = run_cli("select", "--role", "coder", "--json", home=home)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["adapter_id"] is None
    store = Store(home)
    adapter(store, "prod", promote=True)
    adapter(store, "cand")
    out = run_cli(
        "experiment",
        "start",
        "--role",
        "coder",
        "--candidate",
        "cand",
        "--mode",
        "canary",
        "--fraction",
        "0.5",
        "--json",
        home=home,
    )
    assert out.returncode == 0, out.stderr
    exp = json.loads(out.stdout)
    sel = json.loads(run_cli("select", "--role", "coder", "--task-key", "k1", "--json", home=home).stdout)
    assert sel["adapter_id"] in ("prod", "cand") and sel["experiment_id"] == exp["id"]
    # The decision written by that (finished) process is there for log_run.
    assert runs.log_run(store, {"role": "coder", "output": "x", "reward": 1, "decision_id": sel["decision_id"]})
    out = run_cli("experiment", "stop", "--role", "coder", "--json", home=home)
    assert json.loads(out.stdout)["status"] == "stopped"
    out = run_cli("experiment", "start", "--role", "coder", "--candidate", "missing", home=home)
    assert out.returncode != 0 and "missing" in out.stderr
