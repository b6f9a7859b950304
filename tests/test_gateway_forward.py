"""The forwarding backend against a STAND-IN runtime: a small local Starlette server that speaks
the OpenAI API the way vLLM, a llama.cpp server and Ollama do (it is none of them) and keeps the
request bodies it got, so each test checks exactly what the gateway sent for each runtime.

The adapter's served name comes from a deployment record, as deploy_adapter writes it
(learning/serve/deploy.py): vLLM and Ollama serve learnloop-<adapter id>, llama.cpp `lora:<id>`.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from learning.errors import InvalidInput
from learning.gateway.app import build_app
from learning.gateway.forward import Forwarding
from learning.registry import adapters as registry
from learning.runs.record import get_run, log_run
from learning.serve.deploy import insert_deployment
from learning.store import Store
from tests.conftest import run_cli
from tests.support.servers import served
from tests.support.store_helpers import count_runs

BASE = "Qwen/base-stand-in"
BROKEN = "broken-model"  # the stand-in answers this model name with an error, like a runtime would
ADAPTER = "coder-fwd"
SERVED = {"vllm": "learnloop-coder-fwd", "ollama": "learnloop-coder-fwd", "llamacpp": "lora:3"}
MESSAGES = [{"role": "user", "content": "def add"}]
LOADED = (0, 3)  # the adapters the stand-in llama.cpp server loaded


class StandIn:
    """A local OpenAI-compatible server that records each body and answers 'hello world'; as a
    llama.cpp server does, it lists the adapters it loaded (two: ids 0 and 3) at /lora-adapters."""

    def __init__(self):
        self.bodies: list[dict] = []

    async def loras(self, request: Request) -> Response:
        return JSONResponse([{"id": i, "path": f"a{i}.gguf", "scale": 1.0} for i in LOADED])

    async def answer(self, request: Request) -> Response:
        body = json.loads(await request.body())
        self.bodies.append(body)
        if body.get("model") == BROKEN:
            return JSONResponse({"error": {"message": f"The model `{BROKEN}` does not exist.", "code": 404}}, 404)
        chat = request.url.path.endswith("/chat/completions")
        if not body.get("stream"):
            choice = {"index": 0, "finish_reason": "stop"}
            choice.update(
                {"message": {"role": "assistant", "content": "hello world"}} if chat else {"text": "hello world"}
            )
            usage = {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}
            return JSONResponse({"id": "x", "object": "chat.completion", "choices": [choice], "usage": usage})

        def event(piece: str | None, finish: str | None = None) -> str:
            choice = {"index": 0, "finish_reason": finish}
            choice.update({"delta": {"content": piece} if piece else {}} if chat else {"text": piece or ""})
            return f"data: {json.dumps({'id': 'x', 'choices': [choice]})}\n\n"

        def events():
            yield event("hello")
            yield event(" world")
            yield event(None, "length")
            usage = {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}
            yield f"data: {json.dumps({'id': 'x', 'choices': [], 'usage': usage})}\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")


@pytest.fixture(scope="module")
def standin():

    fake = StandIn()
    routes = [Route(path, fake.answer, methods=["POST"]) for path in ("/v1/chat/completions", "/v1/completions")]
    app = Starlette(routes=[*routes, Route("/lora-adapters", fake.loras, methods=["GET"])])
    with served(app) as url:
        yield fake, url


def _gateway(tmp_path: Path, url: str, runtime, deployed_at: str | None = None, base: str | None = BASE) -> TestClient:
    """A gateway forwarding to `url`, whose coder route is served by ADAPTER, deployed at deployed_at."""
    store = Store(tmp_path)
    registry.create_adapter(store, ADAPTER, "coder", BASE, str(tmp_path / "adapters" / ADAPTER), status="candidate")
    registry.set_production(store, ADAPTER, "test", "forwarding")
    if deployed_at is not None:
        with store.write() as conn:
            insert_deployment(conn, "dep-fwd", ADAPTER, runtime, deployed_at, SERVED[runtime])
    return TestClient(build_app(store, Forwarding(url, runtime, base)))


def _expected(runtime: str, served: bool) -> dict:
    """The routing fields each runtime expects: its model name, and llama.cpp's per-request scales."""
    if runtime == "llamacpp":  # every loaded adapter named; the base: all at 0 (an empty list means 1)
        return {"model": BASE, "lora": [{"id": i, "scale": 1.0 if served and i == 3 else 0.0} for i in LOADED]}
    return {"model": SERVED[runtime] if served else BASE}


def _sent(fake: StandIn) -> dict:
    return fake.bodies[-1]


@pytest.mark.parametrize("runtime", ["vllm", "llamacpp", "ollama"])
def test_each_runtime_gets_the_adapter_its_way(standin, tmp_path, runtime):
    fake, url = standin
    client = _gateway(tmp_path, url, runtime, deployed_at=url + "/")
    body = {"model": "learnloop/coder", "messages": MESSAGES, "max_tokens": 9, "metadata": {"task_key": "k1"}}
    r = client.post("/v1/chat/completions", json=body)
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"] == "hello world"
    assert r.json()["usage"] == {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}
    sent = _sent(fake)
    assert sent == {"messages": MESSAGES, "max_tokens": 9, "stream": False, **_expected(runtime, True)}
    run = get_run(Store(tmp_path), int(r.headers["x-learnloop-run-id"]))
    assert run.adapter_id == ADAPTER and run.output == "hello world"

    # Streamed, chat and plain completion: the same routing fields, with stream and usage asked for.
    with client.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as streamed:
        assert streamed.status_code == 200
        events = [json.loads(x[6:]) for x in streamed.iter_lines() if x.startswith("data: {")]
    text = "".join(e["choices"][0]["delta"].get("content", "") for e in events if e["choices"])
    assert text == "hello world" and events[-1]["choices"][0]["finish_reason"] == "length"
    assert _sent(fake) == {
        "messages": MESSAGES,
        "max_tokens": 9,
        "stream": True,
        "stream_options": {"include_usage": True},
        **_expected(runtime, True),
    }
    plain = client.post("/v1/completions", json={"model": "learnloop/coder", "prompt": "def f", "stream": False})
    assert plain.status_code == 200 and plain.json()["choices"][0]["text"] == "hello world"
    assert _sent(fake) == {"prompt": "def f", "stream": False, **_expected(runtime, True)}


@pytest.mark.parametrize("runtime", ["vllm", "llamacpp", "ollama"])
def test_the_base_route_goes_to_the_base_model(standin, tmp_path, runtime):
    fake, url = standin
    client = TestClient(build_app(Store(tmp_path), Forwarding(url, runtime, BASE)))  # no adapter at all
    r = client.post("/v1/chat/completions", json={"model": "learnloop/fixer", "messages": MESSAGES})
    assert r.status_code == 200 and r.headers["x-learnloop-route"] == "base"
    assert _sent(fake) == {"messages": MESSAGES, "stream": False, **_expected(runtime, False)}


def test_a_plain_model_name_passes_through_as_sent(standin, tmp_path):
    fake, url = standin
    client = TestClient(build_app(Store(tmp_path), Forwarding(url, "llamacpp", BASE)))
    r = client.post("/v1/chat/completions", json={"model": "my-model", "messages": MESSAGES, "temperature": 0.5})
    assert r.status_code == 200
    assert _sent(fake) == {"model": "my-model", "messages": MESSAGES, "temperature": 0.5, "stream": False}


@pytest.mark.parametrize("stream", [False, True])
def test_a_runtime_error_is_a_502_with_its_message(standin, tmp_path, stream):
    fake, url = standin
    store = Store(tmp_path)
    client = TestClient(build_app(store, Forwarding(url, "vllm", BROKEN)))
    r = client.post("/v1/chat/completions", json={"model": "learnloop/coder", "messages": MESSAGES, "stream": stream})
    assert r.status_code == 502
    error = r.json()["error"]
    assert error["type"] == "backend_error" and f"The model `{BROKEN}` does not exist." in error["message"]
    assert "404" in error["message"] and count_runs(store) == 0


@pytest.mark.parametrize("runtime", ["vllm", "llamacpp"])
def test_an_adapter_not_deployed_on_this_runtime_is_refused_not_answered_by_the_base(standin, tmp_path, runtime):
    """Answering with the base would record the base's answer as the adapter's run."""
    fake, url = standin
    before = len(fake.bodies)
    for deployed_at in (None, "http://127.0.0.1:1"):
        client = _gateway(tmp_path / str(deployed_at is None), url, runtime, deployed_at)
        r = client.post("/v1/chat/completions", json={"model": "learnloop/coder", "messages": MESSAGES})
        assert r.status_code == 502
        message = r.json()["error"]["message"]
        assert ADAPTER in message and f"learnloop deploy {ADAPTER} --target {runtime} --url {url}" in message
    assert len(fake.bodies) == before  # nothing reached the runtime


@pytest.mark.parametrize("runtime", ["vllm", "ollama"])
def test_vllm_and_ollama_need_the_base_models_served_name(tmp_path, runtime):
    """Without it a request no adapter serves would go out as `learnloop/<role>`, a model the runtime lacks."""
    with pytest.raises(InvalidInput, match="--base NAME"):
        Forwarding("http://127.0.0.1:1", runtime)
    proc = run_cli("gateway", "--backend", "http://127.0.0.1:1", "--runtime", runtime, home=tmp_path)
    assert proc.returncode != 0 and "--base NAME" in proc.stderr
    assert Forwarding("http://127.0.0.1:1", "llamacpp").base_model is None  # one model loaded: the name is optional


def test_shutdown_scores_and_stores_everything_then_stops_its_threads_and_client(standin, tmp_path):
    """Runs are stored by a writer thread and scored by another after the answers went out; when
    the app stops (its lifespan) both finish their queues and end, and the reused client closes."""
    import threading

    fake, url = standin
    before = set(threading.enumerate())
    store = Store(tmp_path)
    backend = Forwarding(url, "vllm", BASE)
    app = build_app(store, backend)
    tests = ["assert 1 + 1 == 2"]  # "hello world" does not compile: each answer scores 0.0
    ids = []
    with served(app) as gateway_url, httpx.Client(base_url=gateway_url) as client:
        for i in range(12):
            body = {"model": "learnloop/coder", "messages": MESSAGES, "metadata": {"tests": tests, "task_key": f"k{i}"}}
            r = client.post("/v1/chat/completions", json=body)
            assert r.status_code == 200
            ids.append(int(r.headers["x-learnloop-run-id"]))
        used = backend.http
        assert used is not None and not used.is_closed
    assert ids == list(range(1, 13))
    assert [get_run(store, i).reward for i in ids] == [0.0] * 12  # stored, and scored, before the app stopped
    assert all(get_run(store, i).signals["scored_by"] == "gateway" for i in ids)
    left = [t.name for t in set(threading.enumerate()) - before if t.name.startswith("learnloop-")]
    assert left == [] and used.is_closed and backend.http is None
    # The unused ids of the last block went back: the next run logged anywhere follows on.
    assert log_run(store, {"role": "coder", "output": "x = 1"}).run_id == 13
