"""Rewards are evidence, set once: a pending run is scored once, by whoever holds its reward token
(log_run's reward_token, the gateway's x-learnloop-reward-token); a run scored already (given,
filled, or measured by the gateway's own tests) is never replaced, and neither are its tests;
only the home's owner corrects a reward, on the CLI, as an attributed event that keeps the old
value. Each refusal changes nothing: counts and the run's reward, signals and tests are checked.
Real SQLite files, the real gateway over HTTP (forwarding to a stand-in runtime), a real MCP
client, the CLI as a subprocess."""

from __future__ import annotations

import json
import threading
from typing import Any

import anyio
import httpx
import pytest
from mcp import Client

from learning.data import curate
from learning.errors import Conflict, Forbidden, InvalidInput, LearnloopError, NotFound
from learning.gateway.app import build_app
from learning.gateway.forward import Forwarding
from learning.runs import record as runs
from learning.runs.rewards import log_reward
from learning.store import Store
from server.mcp import build_server
from tests.conftest import run_cli, text_of
from tests.support.servers import served
from tests.support.store_helpers import count_runs
from tests.test_gateway_forward import BASE, MESSAGES, StandIn

REWRITES = 12


def pending(store: Store, k: int = 0) -> Any:
    return runs.log_run(store, {"role": "coder", "instruction": f"task {k}", "output": f"x = {k}"})


def state(store: Store, run_id: int) -> tuple:
    """What a refused reward must leave as it was: the number of runs, the run's reward, signals,
    tests and reward history."""
    run = runs.get_run(store, run_id)
    return count_runs(store), run.reward, run.signals, run.tests, run.reward_history


def refused(store: Store, run_id: int, error: type[LearnloopError], match: str, **call: Any) -> None:
    before = state(store, run_id)
    with pytest.raises(error, match=match):
        log_reward(store, call.pop("target", run_id), call.pop("reward", 1.0), **call)
    assert state(store, run_id) == before


def keeps_none_over(store: Store, min_reward: float) -> None:
    """make_sft --min-reward keeps no run: none is left after that filter."""
    with pytest.raises(InvalidInput, match=f"min_reward {min_reward}: 0;"):
        curate.make_sft(store, "coder", min_reward=min_reward, min_rows=1, dry_run=True)


# ---- the library ------------------------------------------------------------------------------


def test_the_right_token_fills_a_pending_reward_once(store: Store):
    logged = pending(store)
    assert logged.reward_token and len(logged.reward_token) >= 32
    with store.read() as conn:  # only its hash is stored
        stored = conn.execute("SELECT reward_token_sha256 FROM runs WHERE id = ?", (logged.run_id,)).fetchone()[0]
    assert stored and logged.reward_token not in stored

    done = log_reward(store, logged.run_id, 0.5, tests=["assert x == 0"], reward_token=logged.reward_token)
    assert (done.reward, done.previous_reward) == (0.5, None)
    assert [(e.kind, e.reward, e.previous, e.actor) for e in done.history] == [("scored", 0.5, None, "python")]
    refused(store, logged.run_id, Conflict, "set once", reward_token=logged.reward_token)
    assert runs.get_run(store, logged.run_id).tests == ["assert x == 0"]
    assert runs.log_run(store, {"role": "coder", "output": "y", "reward": 0.3}).reward_token is None


def test_another_runs_token_a_missing_token_and_an_unknown_id_are_refused(store: Store):
    mine, theirs = pending(store, 1), pending(store, 2)
    refused(store, theirs.run_id, Forbidden, "not run", reward_token=mine.reward_token)
    refused(store, theirs.run_id, Forbidden, "needs its reward_token")
    refused(store, theirs.run_id, Forbidden, "needs its reward_token", reward_token="")
    refused(store, theirs.run_id, NotFound, "No run 999", target=999, reward_token=theirs.reward_token)
    assert runs.get_run(store, theirs.run_id).reward is None and runs.get_run(store, mine.run_id).reward is None
    assert log_reward(store, theirs.run_id, 0.0, reward_token=theirs.reward_token).reward == 0.0


def test_a_scored_run_is_never_rescored_and_its_tests_never_change(store: Store):
    given = runs.log_run(
        store,
        {"role": "coder", "output": "x = 1", "reward": 0.2, "signals": {"tests_total": 2}, "tests": ["assert x == 1"]},
    ).run_id
    token = pending(store).reward_token
    refused(store, given, Conflict, "scored already .*measured", reward_token=token)
    refused(store, given, Conflict, "scored already")
    refused(store, given, Conflict, "tests are fixed", tests=["assert True"], reward_token=token)
    correction = {"override": True, "reason": "re-checked"}
    refused(store, given, Conflict, "reward only", tests=["assert True"], **correction)
    refused(store, given, InvalidInput, "needs its reason", override=True)


def test_runs_recorded_without_a_token_are_scored_by_the_owner_only(store: Store):
    (run_id,) = runs.log_runs(store, [{"role": "coder", "output": "x"}])  # no token handed out
    refused(store, run_id, Forbidden, "without a reward token", reward_token="guess")
    done = log_reward(store, run_id, 0.7, override=True, reason="checked by hand", actor="cli")
    assert done.previous_reward is None and done.history[0].kind == "correction"


def test_twelve_rewrites_are_refused_and_curation_keeps_none_of_them(store: Store):
    """Twelve runs another agent logged with low rewards, each rewritten to 1.0 by someone holding
    a token of their own: every rewrite is refused, and make_sft --min-reward 0.8 keeps none."""
    logged = [
        runs.log_run(
            store, {"role": "coder", "instruction": f"write f{k}", "output": f"def f{k}(): pass", "reward": 0.1}
        )
        for k in range(REWRITES)
    ]
    own = pending(store, 99)  # a token the rewriter holds, for a run of its own
    for k, run in enumerate(logged):
        token = own.reward_token if k % 2 else None
        refused(store, run.run_id, Conflict, "set once", reward_token=token)
    assert [runs.get_run(store, r.run_id).reward for r in logged] == [0.1] * REWRITES
    keeps_none_over(store, 0.8)


def test_two_holders_of_one_token_at_once_fill_it_once(store: Store):
    logged = pending(store)
    outcomes: list[str] = []
    go = threading.Barrier(4)

    def fill(reward: float) -> None:
        go.wait()
        try:
            log_reward(store, logged.run_id, reward, reward_token=logged.reward_token)
            outcomes.append("filled")
        except Conflict:
            outcomes.append("refused")

    threads = [threading.Thread(target=fill, args=(k / 4,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(outcomes) == ["filled", "refused", "refused", "refused"]
    assert len(runs.get_run(store, logged.run_id).reward_history) == 1


# ---- the gateway, over HTTP --------------------------------------------------------------------


@pytest.fixture(scope="module")
def standin():
    from starlette.applications import Starlette
    from starlette.routing import Route

    fake = StandIn()
    paths = ("/v1/chat/completions", "/v1/completions")
    with served(Starlette(routes=[Route(p, fake.answer, methods=["POST"]) for p in paths])) as url:
        yield url


def test_gateway_rewards_need_the_answers_token_and_a_measured_run_stays(standin, tmp_path):
    store = Store(tmp_path)
    app = build_app(store, Forwarding(standin, "vllm", BASE))
    chat = {"model": "learnloop/coder", "messages": MESSAGES}
    with served(app) as url, httpx.Client(base_url=url) as client:

        def reward(run_id: int | str, body: dict, headers: dict | None = None) -> httpx.Response:
            app.state.gateway.recorder.flush()
            before = state(store, run_id) if isinstance(run_id, int) and runs.run_row(store, run_id) else None
            answer = client.post(f"/v1/learnloop/runs/{run_id}/reward", json=body, headers=headers)
            if answer.status_code != 200 and isinstance(run_id, int):  # a refused reward changes nothing
                assert before is None or state(store, run_id) == before
            return answer

        first, second = (client.post("/v1/chat/completions", json=chat) for _ in range(2))
        run_id, token = int(first.headers["x-learnloop-run-id"]), first.headers["x-learnloop-reward-token"]
        other = second.headers["x-learnloop-reward-token"]
        assert token != other
        with client.stream("POST", "/v1/chat/completions", json={**chat, "stream": True}) as streamed:
            header = streamed.headers["x-learnloop-reward-token"]
            chunks = [json.loads(line[6:]) for line in streamed.iter_lines() if line.startswith("data: {")]
        assert next(c for c in chunks if "learnloop" in c)["learnloop"]["reward_token"] == header

        wrong = reward(run_id, {"reward": 1.0, "reward_token": other})
        assert wrong.status_code == 403 and "not run" in wrong.json()["error"]["message"]
        missing = reward(run_id, {"reward": 1.0})
        assert missing.status_code == 403 and "x-learnloop-reward-token" in missing.json()["error"]["message"]
        unknown = reward(10**6, {"reward": 1.0, "reward_token": token})
        assert unknown.status_code == 404
        for odd in ("²", "١", str(2**63), "9" * 40):  # digits to str.isdigit, no run id to the gateway
            assert reward(odd, {"reward": 1.0, "reward_token": token}).status_code == 404, odd
        mixed = reward(run_id, {"reward": 1.0, "reward_token": other}, {"x-learnloop-reward-token": token})
        assert mixed.status_code == 400 and mixed.json()["error"]["param"] == "reward_token"
        ok = reward(run_id, {"reward": 0.25}, {"x-learnloop-reward-token": token})
        assert ok.status_code == 200 and runs.get_run(store, run_id).reward == 0.25
        again = reward(run_id, {"reward": 1.0, "reward_token": token})
        assert again.status_code == 409 and "set once" in again.json()["error"]["message"]

        # Scored by the gateway itself: no token handed out, and no client rewrites it.
        tests = ["assert 1 + 1 == 2"]  # the stand-in answers "hello world", which does not compile: 0.0
        scored = [
            client.post("/v1/chat/completions", json={**chat, "metadata": {"tests": tests, "task_key": f"k{k}"}})
            for k in range(REWRITES)
        ]
        assert all("x-learnloop-reward-token" not in r.headers for r in scored)
        ids = [int(r.headers["x-learnloop-run-id"]) for r in scored]
        app.state.gateway.scorer.close()  # every scoring done
        assert all(runs.get_run(store, i).signals["scored_by"] == "gateway" for i in ids)
        for i in ids:
            rewrite = reward(i, {"reward": 1.0, "reward_token": other, "tests": ["assert True"]})
            assert rewrite.status_code == 409 and "measured by gateway" in rewrite.json()["error"]["message"]
    assert [runs.get_run(store, i).reward for i in ids] == [0.0] * REWRITES
    assert all(runs.get_run(store, i).tests == tests for i in ids)
    keeps_none_over(store, 0.8)


# ---- MCP and the CLI ---------------------------------------------------------------------------


def test_mcp_needs_the_token_and_cannot_override(home):
    async def main():
        async with Client(build_server(str(home))) as client:
            schema = {t.name: t for t in (await client.list_tools()).tools}["log_reward"].input_schema
            assert "reward_token" in schema["properties"] and not {"override", "reason"} & set(schema["properties"])
            mine = (await client.call_tool("log_run", {"role": "coder", "output": "x"})).structured_content
            theirs = (await client.call_tool("log_run", {"role": "coder", "output": "y"})).structured_content
            run_id = mine["run_id"]
            calls = [
                ({"run_id": run_id, "reward": 1.0}, "needs its reward_token"),
                ({"run_id": run_id, "reward": 1.0, "reward_token": theirs["reward_token"]}, "not run"),
                ({"run_id": run_id, "reward": 1.0, "override": True, "reason": "x"}, "Unknown argument"),
            ]
            for args, message in calls:
                answer = await client.call_tool("log_reward", args)
                assert answer.is_error and message in text_of(answer.content[0])
            ok = await client.call_tool(
                "log_reward", {"run_id": run_id, "reward": 0.5, "reward_token": mine["reward_token"]}
            )
            assert not ok.is_error and ok.structured_content["history"][0]["actor"] == "mcp"
            again = await client.call_tool(
                "log_reward", {"run_id": run_id, "reward": 1.0, "reward_token": mine["reward_token"]}
            )
            assert again.is_error and "set once" in text_of(again.content[0])

    anyio.run(main)
    store = Store(home)
    assert count_runs(store) == 2 and runs.get_run(store, 1).reward == 0.5
    assert runs.get_run(store, 2).reward is None


def test_cli_override_corrects_and_keeps_the_old_value_in_the_history(home):
    logged = run_cli("log", "--role", "coder", "--output", "x", "--reward", "0.2", "--json", home=home)
    assert logged.returncode == 0 and json.loads(logged.stdout)["reward_token"] is None, logged.stderr
    run_id = str(json.loads(logged.stdout)["run_id"])
    rewrite = run_cli("reward", run_id, "0.9", home=home)
    assert rewrite.returncode != 0 and "set once" in rewrite.stderr and "--override" in rewrite.stderr
    no_reason = run_cli("reward", run_id, "0.9", "--override", home=home)
    assert no_reason.returncode != 0 and "reason" in no_reason.stderr
    fixed = run_cli("reward", run_id, "0.9", "--override", "--reason", "the judge misread it", home=home)
    assert fixed.returncode == 0 and "corrected from 0.200" in fixed.stdout, fixed.stderr
    assert "the judge misread it" in fixed.stdout
    (event,) = runs.get_run(Store(home), int(run_id)).reward_history
    assert (event.kind, event.previous, event.reward, event.reason) == ("correction", 0.2, 0.9, "the judge misread it")
    assert event.actor.endswith("via cli")
    pending_log = json.loads(run_cli("log", "--role", "coder", "--output", "y", "--json", home=home).stdout)
    shown = run_cli("log", "--role", "coder", "--output", "z", home=home).stdout
    assert "reward token" in shown
    filled = run_cli(
        "reward", str(pending_log["run_id"]), "1", "--reward-token", pending_log["reward_token"], "--json", home=home
    )
    assert filled.returncode == 0 and json.loads(filled.stdout)["history"][0]["actor"] == "cli", filled.stderr
