"""The adapter lifecycle: promote, rollback, history, confirmation over MCP and the CLI, bad input,
and the one-production-per-route invariant under concurrent promotions and kill -9."""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import signal
import subprocess
import sys
import time
from typing import Any, cast

import anyio
import pytest
from mcp import Client
from mcp import types as mt

from learning.errors import Conflict, InvalidInput, NotFound
from learning.registry import adapters as registry
from learning.registry import folders
from learning.routing import lifecycle
from learning.store import Store
from server.mcp import build_server
from tests.conftest import ROOT, run_cli, subprocess_env, text_of


def make(
    store, adapter_id, status: registry.Status = "candidate", base="base-a", loss=1.0, pass_rate=0.5, role="coder", **kw
):
    registry.create_adapter(
        store, adapter_id, role, base, str(store.home / "adapters" / adapter_id), status=status, **kw
    )
    registry.set_metrics(
        store,
        adapter_id,
        {"eval_loss": loss, "base_eval_loss": 2.0, "pass_rate": pass_rate, "base_pass_rate": 0.1, "gate_passed": True},
    )


def snapshot(store):
    """Everything the registry holds, to prove a refused request changed nothing."""
    with store.read() as conn:
        return (
            [tuple(r) for r in conn.execute("SELECT id, status, updated, metrics FROM adapters ORDER BY id")],
            conn.execute("SELECT count(*) FROM adapter_events").fetchone()[0],
        )


def production(store, role="coder"):
    return [a.id for a in registry.list_adapters(store, role, "production")]


def test_promote_promote_rollback_and_history(store):
    make(store, "a", loss=0.9)
    make(store, "b", loss=0.7)
    first = lifecycle.promote(store, "a", "production", reason="first", confirm=True)
    assert first.replaced is None and first.adapter.status == "production"
    plan = lifecycle.plan_promote(store, "b", "production")
    assert plan.replaces is not None
    assert plan.replaces.adapter_id == "a" and "eval loss 0.7" in plan.summary and "eval loss 0.9" in plan.summary
    second = lifecycle.promote(store, "b", "production", reason="better loss", confirm=True)
    assert second.replaced is not None
    assert (
        second.replaced.adapter_id == "a" and second.replaced.status == "archived" and second.replaced.eval_loss == 0.9
    )
    assert production(store) == ["b"]
    back = lifecycle.rollback(store, "coder", reason="b misbehaves", confirm=True)
    assert back.archived is not None
    assert back.restored.adapter_id == "a" and back.archived.adapter_id == "b"
    assert production(store) == ["a"] and registry.get_adapter(store, "b").status == "archived"
    moves = [(e.adapter_id, e.from_status, e.to_status) for e in registry.adapter_history(store)]
    assert moves == [
        ("a", None, "candidate"),
        ("b", None, "candidate"),
        ("a", "candidate", "production"),
        ("a", "production", "archived"),
        ("b", "candidate", "production"),
        ("b", "production", "archived"),
        ("a", "archived", "production"),
    ]
    reasons = [e.reason for e in registry.adapter_history(store, "b")]
    assert "better loss" in reasons and any("b misbehaves" in r for r in reasons)


def test_promotion_prompt_shows_the_pass_rates_from_tests_and_the_interval(store):
    make(store, "tested")
    registry.set_metrics(
        store,
        "tested",
        {
            "eval_loss": 0.5,
            "base_eval_loss": 2.0,
            "pass_rate": 17 / 18,
            "base_pass_rate": 12 / 18,
            "pass_rate_basis": "tests",
            "tested_rows": 18,
            "tests_difference_interval": [0.0556, 0.5],
            "tests_confidence": 0.95,
            "gate_passed": True,
        },
    )
    summary = lifecycle.plan_promote(store, "tested").summary
    assert "pass rate from tests 0.9444 on 18 tasks (base 0.6667)" in summary
    assert "difference 95% interval [+0.056, +0.500]" in summary
    make(store, "compiled")
    registry.set_metrics(store, "compiled", {"eval_loss": 0.5, "pass_rate": 1.0, "pass_rate_basis": "compile-only"})
    assert "pass rate 1 (base n/a) (compile-only)" in lifecycle.plan_promote(store, "compiled").summary


def test_routes_are_independent_and_archive_moves(store):
    make(store, "a")
    make(store, "r", task_type="refactor")
    lifecycle.promote(store, "a", "production", confirm=True)
    lifecycle.promote(store, "r", "production", confirm=True)
    assert sorted(production(store)) == ["a", "r"]
    archived = lifecycle.promote(store, "a", "archived", reason="retire", confirm=True)
    assert archived.to_status == "archived" and production(store) == ["r"]
    assert (
        lifecycle.rollback(store, "coder", confirm=True).restored.adapter_id == "a"
    )  # archiving production is undoable too


def test_bad_input_leaves_the_registry_unchanged(store):
    make(store, "good")
    make(store, "dead", status="failed")
    make(store, "fresh", status="trained")
    make(store, "other", base="base-b")
    lifecycle.promote(store, "good", "production", confirm=True)
    before = snapshot(store)
    cases = [
        (lambda: lifecycle.promote(store, "nope", "production", confirm=True), NotFound, "list_adapters"),
        (lambda: lifecycle.promote(store, "dead", "production", force=True, confirm=True), Conflict, "failed"),
        (lambda: lifecycle.promote(store, "other", "production", confirm=True), Conflict, "base"),
        (lambda: lifecycle.promote(store, "fresh", "production", confirm=True), Conflict, "only a candidate"),
        (lambda: lifecycle.promote(store, "good", "production", confirm=True), Conflict, "already production"),
        (
            lambda: lifecycle.promote(store, "good", cast(Any, "bogus"), confirm=True),
            InvalidInput,
            "candidate, production or archived",
        ),
        (lambda: lifecycle.rollback(store, "coder", confirm=True), Conflict, "Nothing to roll back"),
        (lambda: lifecycle.rollback(store, "judge", confirm=True), Conflict, "Nothing to roll back"),
    ]
    for call, error, words in cases:
        with pytest.raises(error, match=words):
            call()
    assert snapshot(store) == before
    # force overrides the base and the candidate-only rules
    forced = lifecycle.promote(store, "other", "production", force=True, confirm=True)
    assert forced.replaced is not None
    assert forced.replaced.adapter_id == "good"


def test_register_rejects_missing_and_corrupt_folders(store, tmp_path):
    before = snapshot(store)
    with pytest.raises(NotFound):
        folders.register_adapter(store, tmp_path / "missing", "coder", "base")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "adapter_config.json").write_text("{not json")
    (bad / "adapter_model.safetensors").write_bytes(b"\xff" * 64)
    with pytest.raises(InvalidInput) as err:
        folders.register_adapter(store, bad, "coder", "base")
    assert "not valid JSON" in str(err.value) and "corrupt" in str(err.value)  # both problems reported together
    assert snapshot(store) == before and not (store.home / "adapters").exists()


# ---- MCP: confirmation through elicitation, or confirm=true -------------------------------


def _answer(action, confirm=True):
    async def callback(context, params: mt.ElicitRequestParams):
        seen.append(params.message)
        if action == "accept":
            return mt.ElicitResult(action="accept", content={"confirm": confirm})
        return mt.ElicitResult(action=action)

    seen: list[str] = []
    return callback, seen


@pytest.mark.parametrize(
    "action, outcome, mode",
    [
        ("accept", "done", "auto"),
        ("decline", "declined", "auto"),
        ("cancel", "cancelled", "auto"),
        ("accept", "done", "legacy"),
        ("decline", "declined", "legacy"),  # 2025 protocol: elicitation/create mid-call
    ],
)
def test_mcp_promote_asks_the_person(home, action, outcome, mode):
    store = Store(home)
    make(store, "a", loss=0.9)
    make(store, "b", loss=0.7)
    lifecycle.promote(store, "a", "production", confirm=True)
    callback, seen = _answer(action)

    async def main():
        async with Client(build_server(str(home)), elicitation_callback=callback, mode=mode) as client:
            return await client.call_tool("promote", {"adapter_id": "b", "reason": "test"})

    result = anyio.run(main)
    assert not result.is_error, result.content
    assert result.structured_content["outcome"] == outcome
    assert "It replaces a" in seen[0] and "eval loss 0.9" in seen[0] and "eval loss 0.7" in seen[0]
    assert production(store) == (["b"] if action == "accept" else ["a"])


def test_mcp_without_elicitation_requires_confirm(home):
    store = Store(home)
    make(store, "a")
    make(store, "b")
    lifecycle.promote(store, "a", "production", confirm=True)

    async def main():
        async with Client(build_server(str(home))) as client:
            refused = await client.call_tool("promote", {"adapter_id": "b"})
            after_refusal = production(store)
            done = await client.call_tool("promote", {"adapter_id": "b", "confirm": True})
            no_rb = await client.call_tool("rollback", {"role": "coder"})
            rb = await client.call_tool("rollback", {"role": "coder", "confirm": True})
            listed = await client.call_tool("list_adapters", {"status": "production"})
            hist = await client.call_tool("adapter_history", {"adapter_id": "b"})
            res = await client.read_resource("learnloop://adapters/a")
            return refused, after_refusal, done, no_rb, rb, listed, hist, res

    refused, after_refusal, done, no_rb, rb, listed, hist, res = anyio.run(main)
    assert (
        refused.is_error
        and "confirm=true" in text_of(refused.content[0])
        and "It replaces a" in text_of(refused.content[0])
    )
    assert after_refusal == ["a"]
    assert done.structured_content["promoted"]["replaced"]["adapter_id"] == "a"
    assert no_rb.is_error and rb.structured_content["rolled_back"]["restored"]["adapter_id"] == "a"
    assert [a["id"] for a in listed.structured_content["result"]] == ["a"]
    assert [e["to_status"] for e in hist.structured_content["result"]] == ["candidate", "production", "archived"]
    body = json.loads(text_of(res.contents[0]))
    assert body["adapter"]["status"] == "production" and len(body["history"]) == 4


# ---- CLI -----------------------------------------------------------------------------------


def test_cli_promote_rollback_list_history(home):
    store = Store(home)
    make(store, "a", loss=0.9)
    make(store, "b", loss=0.7)
    out = run_cli("promote", "a", "--to", "production", home=home)  # no terminal, no --yes
    assert out.returncode != 0 and "--yes" in out.stderr and production(store) == []
    out = run_cli("promote", "a", "--yes", "--json", home=home)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["promoted"]["to_status"] == "production"
    out = run_cli("promote", "b", "--yes", "--reason", "lower loss", "--json", home=home)
    assert json.loads(out.stdout)["promoted"]["replaced"]["adapter_id"] == "a"
    table = run_cli("list", home=home).stdout
    assert "*" in table and "0.700" in table and "production" in table
    out = run_cli("rollback", "--role", "coder", "--yes", "--json", home=home)
    assert json.loads(out.stdout)["rolled_back"]["restored"]["adapter_id"] == "a"
    hist = json.loads(run_cli("history", "b", "--json", home=home).stdout)
    assert [e["to_status"] for e in hist] == ["candidate", "production", "archived"]
    out = run_cli("promote", "nope", "--yes", home=home)
    assert out.returncode != 0 and "No adapter 'nope'" in out.stderr


# ---- the one-production invariant ------------------------------------------------------------


def _promoter(home, ids, rounds, seed):
    store = Store(home)
    rng = random.Random(seed)
    for _ in range(rounds):
        target = rng.choice(ids)
        try:
            if rng.random() < 0.2:
                lifecycle.rollback(store, "coder", reason=f"p{seed}", confirm=True)
            else:
                status = registry.get_adapter(store, target).status
                lifecycle.promote(
                    store, target, "production", force=status != "candidate", reason=f"p{seed}", confirm=True
                )
        except Conflict:
            pass  # another process got there first, or nothing to roll back


def check_consistent(store):
    """Exactly one production adapter; each adapter's events chain (from = previous to) and end at its status."""
    assert len(production(store)) == 1
    for adapter in registry.list_adapters(store):
        events = registry.adapter_history(store, adapter.id)
        for prev, nxt in zip(events, events[1:]):
            assert nxt.from_status == prev.to_status, (adapter.id, prev, nxt)
        assert events[-1].to_status == adapter.status
    # every move into production after the first archived the one before it
    to_prod = [
        e for e in registry.adapter_history(store) if e.to_status == "production" and e.from_status != "production"
    ]
    from_prod = [e for e in registry.adapter_history(store) if e.from_status == "production"]
    assert len(to_prod) == len(from_prod) + 1


@pytest.mark.slow
def test_concurrent_promotions_keep_one_production(home):
    store = Store(home)
    ids = [f"c{i}" for i in range(4)]
    for i in ids:
        make(store, i)
    lifecycle.promote(store, "c0", "production", confirm=True)
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_promoter, args=(str(home), ids, 25, seed)) for seed in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    check_consistent(store)
    assert len(registry.adapter_history(store)) > 20


KILL_LOOP = """
import sys, random
from learning.routing import lifecycle
from learning.store import Store
store = Store(sys.argv[1])
ids = ["k0", "k1", "k2"]
print("ready", flush=True)
while True:
    target = random.choice(ids)
    try:
        lifecycle.promote(store, target, "production", force=True, reason="loop", confirm=True)
    except Exception:
        pass
"""

HALF_DONE = """
import os, signal, sys
from learning.registry.queries import set_adapter_status
from learning.store import Store
store = Store(sys.argv[1])
with store.write() as conn:  # set_production's statements, then death before COMMIT
    set_adapter_status(conn, "k0", "production", "archived", "test", "half")
    set_adapter_status(conn, "k1", "archived", "production", "test", "half")
    print("inside", flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.mark.slow
def test_kill_9_during_promotions_leaves_one_production(home):
    store = Store(home)
    for i in ("k0", "k1", "k2"):
        make(store, i)
    lifecycle.promote(store, "k0", "production", confirm=True)
    half = subprocess.run(
        [sys.executable, "-c", HALF_DONE, str(home)],
        env=subprocess_env(),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert half.returncode == -signal.SIGKILL and "inside" in half.stdout
    assert production(store) == ["k0"]
    for _ in range(2):
        proc = subprocess.Popen(
            [sys.executable, "-c", KILL_LOOP, str(home)],
            env=subprocess_env(),
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(random.uniform(0.3, 1.0))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        check_consistent(Store(home))
