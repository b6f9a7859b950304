"""The OpenAI-compatible gateway, served for real (uvicorn on a free loopback port) with the
in-process backend on the embedded tiny base, driven by the real `openai` client."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from learning.gateway.app import build_app
from learning.gateway.inprocess import InProcess
from learning.gateway.recording import split_messages
from learning.runs.record import get_run
from learning.store import Store
from tests.support.servers import free_port, served
from tests.support.store_helpers import count_runs
from tests.support.tiny import tiny_base

openai = pytest.importorskip("openai")


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    home = tmp_path_factory.mktemp("gateway-home")
    store = Store(home)
    base = tiny_base(store)
    app = build_app(store, InProcess(base.path, device="cpu"))
    with served(app) as url:
        yield store, url, app.state.gateway.recorder.flush  # runs are stored a moment after the answer


def _client(url: str):
    return openai.OpenAI(base_url=f"{url}/v1", api_key="unused")


@pytest.mark.slow
def test_chat_completion_is_answered_routed_and_recorded(gateway):
    store, url, flush = gateway
    raw = _client(url).chat.completions.with_raw_response.create(
        model="learnloop/coder/python",
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Write a function add"}],
        max_tokens=8,
    )
    answer = raw.parse()
    assert answer.choices[0].message.role == "assistant"
    assert answer.usage is not None and 0 < answer.usage.completion_tokens <= 8
    run = get_run(store, int(raw.headers["x-learnloop-run-id"]))
    assert run.role == "coder" and run.task_type == "python" and run.model == "learnloop/coder/python"
    assert run.decision_id == raw.headers["x-learnloop-decision-id"] and run.adapter_id is None
    assert raw.headers["x-learnloop-route"] == "base" and "x-learnloop-fallback" in raw.headers
    assert len(raw.headers["x-learnloop-reward-token"]) >= 32  # the capability to score this run, once
    assert run.instruction == "Write a function add" and run.input == "system: Be brief."
    meta = run.meta["gateway"]
    assert meta["stream"] is False and meta["completion_tokens"] == answer.usage.completion_tokens


@pytest.mark.slow
def test_streamed_chat_matches_and_is_recorded(gateway):
    store, url, flush = gateway
    client = _client(url)
    messages = [{"role": "user", "content": "def add"}]
    whole = client.chat.completions.create(model="learnloop/coder", messages=messages, max_tokens=12)
    flush()
    before = count_runs(store)
    with client.chat.completions.with_streaming_response.create(
        model="learnloop/coder",
        messages=messages,
        max_tokens=12,
        stream=True,
        stream_options={"include_usage": True},
    ) as response:
        token = response.headers["x-learnloop-reward-token"]  # known before the run id: sent first
        chunks = list(response.parse())
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content  # greedy: the same answer
    assert chunks[-1].usage is not None
    last = next(c for c in reversed(chunks) if c.choices)
    run_id = last.model_extra["learnloop"]["run_id"]
    flush()
    assert count_runs(store) == before + 1
    run = get_run(store, run_id)
    assert run.meta["gateway"]["stream"] is True and run.decision_id == last.model_extra["learnloop"]["decision_id"]
    assert last.model_extra["learnloop"]["reward_token"] == token


@pytest.mark.slow
def test_plain_completion_and_models(gateway):
    store, url, flush = gateway
    client = _client(url)
    raw = client.completions.with_raw_response.create(model="tiny", prompt="def add(a, b):", max_tokens=5)
    run = get_run(store, int(raw.headers["x-learnloop-run-id"]))
    assert run.role == "gateway" and run.decision_id is None and run.instruction == "def add(a, b):"
    assert "learnloop/coder" in [m.id for m in client.models.list()]


@pytest.mark.slow
def test_malformed_request_is_a_400_error_object_and_no_run(gateway):
    store, url, flush = gateway
    flush()
    before = count_runs(store)
    with pytest.raises(openai.BadRequestError) as caught:
        _client(url).chat.completions.create(model="learnloop/coder", messages=[], max_tokens=4)
    assert caught.value.status_code == 400
    body = caught.value.body
    assert isinstance(body, dict) and body["param"] == "messages" and body["type"] == "invalid_request_error"
    for bad in (
        b"{not json",
        b'{"model": "learnloop/coder", "messages": [{"role": "user", "content": "x"}], "max_tokens": -1}',
    ):
        r = httpx.post(f"{url}/v1/chat/completions", content=bad, headers={"content-type": "application/json"})
        assert r.status_code == 400 and set(r.json()["error"]) == {"message", "type", "param", "code"}
    flush()
    assert count_runs(store) == before


@pytest.mark.slow
def test_reward_for_an_unknown_run_is_404(gateway):
    _, url, _ = gateway
    for run_id in ("999999", "../x", "abc"):
        r = httpx.post(f"{url}/v1/learnloop/runs/{run_id}/reward", json={"reward": 1.0})
        assert r.status_code == 404 and r.json()["error"]["type"] == "not_found_error"


def test_a_backend_that_is_down_is_a_502(tmp_path: Path):
    from starlette.testclient import TestClient

    from learning.gateway.forward import Forwarding

    store = Store(tmp_path)
    client = TestClient(build_app(store, Forwarding(f"http://127.0.0.1:{free_port()}", "vllm", "base-model")))
    body = {"model": "learnloop/coder", "messages": [{"role": "user", "content": "x"}]}
    for stream in (False, True):
        r = client.post("/v1/chat/completions", json={**body, "stream": stream})
        assert r.status_code == 502 and "unreachable" in r.json()["error"]["message"]
    assert count_runs(store) == 0


def test_the_conversation_maps_to_instruction_and_input():
    msgs = [
        {"role": "system", "content": "S"},
        {"role": "user", "content": "U1"},
        {"role": "assistant", "content": "A1"},
        {"role": "user", "content": "U2"},
    ]
    assert split_messages(msgs) == ("U2", "system: S\n\nuser: U1\n\nassistant: A1")


@pytest.mark.slow
def test_a_gateway_run_is_pending_until_its_reward_is_posted(gateway):
    """Recorded without a reward (pending in run_stats), scored through the gateway's endpoint
    with the reward token its answer carried, once."""
    from learning.runs.stats import run_stats

    store, url, flush = gateway
    raw = _client(url).chat.completions.with_raw_response.create(
        model="learnloop/fixer", messages=[{"role": "user", "content": "Fix x = 1 +"}], max_tokens=4
    )
    run_id, token = int(raw.headers["x-learnloop-run-id"]), raw.headers["x-learnloop-reward-token"]
    assert get_run(store, run_id).reward is None  # get_run waits for a run answered but not stored yet
    before = run_stats(store, role="fixer")
    assert before.pending == 1
    bad = httpx.post(f"{url}/v1/learnloop/runs/{run_id}/reward", json={"reward": 7, "reward_token": token})
    assert bad.status_code == 400 and "reward" in bad.json()["error"]["message"]
    assert get_run(store, run_id).reward is None  # a refused reward changes nothing
    header = {"x-learnloop-reward-token": token}
    ok = httpx.post(f"{url}/v1/learnloop/runs/{run_id}/reward", json={"reward": 0.75}, headers=header)
    assert ok.status_code == 200 and ok.json() == {"run_id": run_id, "reward": 0.75}
    after = run_stats(store, role="fixer")
    assert after.pending == 0 and get_run(store, run_id).reward == 0.75
    again = httpx.post(f"{url}/v1/learnloop/runs/{run_id}/reward", json={"reward": 0.0}, headers=header)
    assert again.status_code == 409 and "set once" in again.json()["error"]["message"]
    assert get_run(store, run_id).reward == 0.75
