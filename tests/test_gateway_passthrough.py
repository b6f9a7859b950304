"""The gateway is the runtime's twin except that it routes and records: every request field it
does not need reaches the runtime as sent, every answer field comes back as the runtime sent it,
and what it refuses it refuses before any work.

The runtime is a STAND-IN (a local Starlette app speaking the OpenAI API, none of the real ones):
it answers n choices with logprobs, calls a tool when tools are offered (streamed in pieces, as
runtimes do), refuses a prompt over its "context" with its own 400, and streams slowly on request
so a client can leave mid-stream. The real llama-server is in tests/test_llama_server.py.
"""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from learning.gateway.app import MAX_BODY, MAX_REWARD_BODY, build_app, serve_in_thread
from learning.gateway.forward import Forwarding
from learning.runs.record import get_run
from learning.store import Store
from tests.support.servers import served

CONTEXT = 2000  # characters: the stand-in's "context length"
CALL = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
LOGPROBS = {"content": [{"token": "hi", "logprob": -0.1, "bytes": [104, 105], "top_logprobs": []}]}


class StandIn:
    def __init__(self):
        self.bodies: list[dict] = []
        self.closed = threading.Event()  # a slow stream's generator was ended early

    async def answer(self, request: Request) -> Response:
        body = json.loads(await request.body())
        self.bodies.append(body)
        if len(json.dumps(body.get("messages"))) > CONTEXT:
            error = {"message": "the request exceeds the available context size", "type": "exceed_context_size_error"}
            return JSONResponse({"error": {**error, "code": 400, "n_ctx": CONTEXT}}, 400)
        if body.get("stream"):
            return StreamingResponse(self._events(body), media_type="text/event-stream")
        choices = []
        for i in range(body.get("n", 1)):
            message: dict[str, Any] = {"role": "assistant", "content": f"answer {i}"}
            if body.get("tools"):
                message = {"role": "assistant", "content": None, "tool_calls": [CALL]}
            choices.append({"index": i, "message": message, "logprobs": LOGPROBS, "finish_reason": "stop"})
        usage = {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}
        return JSONResponse(
            {
                "id": "x",
                "object": "chat.completion",
                "model": "runtime-name",
                "choices": choices,
                "usage": usage,
                "system_fingerprint": "fp_standin",
                "timings": {"predicted_ms": 1.5},
            }
        )

    async def _events(self, body: dict):
        def event(delta: dict, finish: str | None = None) -> str:
            chunk = {
                "id": "x",
                "object": "chat.completion.chunk",
                "model": "runtime-name",
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            }
            return f"data: {json.dumps(chunk)}\n\n"

        try:
            if body.get("tools"):
                yield event(
                    {
                        "role": "assistant",
                        "tool_calls": [
                            {
                                "index": 0,
                                "id": "call_1",
                                "type": "function",
                                "function": {"name": "get_weather", "arguments": ""},
                            }
                        ],
                    }
                )
                for part in ('{"city"', ': "Paris"}'):
                    yield event({"tool_calls": [{"index": 0, "function": {"arguments": part}}]})
                yield event({}, "tool_calls")
            else:
                for i in range(body.get("max_tokens") or 3):
                    yield event({"content": f"w{i} "})
                    if body.get("slow"):
                        await asyncio.sleep(0.05)
                yield event({}, "length")
            usage = {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}
            yield f"data: {json.dumps({'id': 'x', 'choices': [], 'usage': usage})}\n\n"
            yield "data: [DONE]\n\n"
        except (asyncio.CancelledError, GeneratorExit):
            self.closed.set()
            raise


@pytest.fixture(scope="module")
def runtime():
    fake = StandIn()
    app = Starlette(routes=[Route("/v1/chat/completions", fake.answer, methods=["POST"])])
    with served(app) as url:
        yield fake, url


@pytest.fixture
def gateway(runtime, tmp_path):
    fake, url = runtime
    store = Store(tmp_path)
    with serve_in_thread(build_app(store, Forwarding(url, "vllm", "base-name"))) as gateway_url:
        yield fake, store, gateway_url


def _count(store: Store) -> int:
    with store.read() as conn:
        return conn.execute("SELECT count(*) FROM runs").fetchone()[0]


MESSAGES = [{"role": "user", "content": "weather?"}]


def test_fields_pass_to_the_runtime_and_its_answer_comes_back_whole(gateway):
    fake, store, url = gateway
    asked = {
        "model": "learnloop/coder",
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "what is this?"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
                ],
            }
        ],
        "n": 2,
        "stop": ["a", "b", "c", "d", "e"],
        "max_tokens": 8192,
        "logprobs": True,
        "top_logprobs": 2,
        "seed": 7,
        "response_format": {"type": "json_object"},
        "cache_prompt": True,  # a runtime's own field
    }
    r = httpx.post(f"{url}/v1/chat/completions", json=asked)
    assert r.status_code == 200, r.text
    sent = fake.bodies[-1]
    assert {k: v for k, v in sent.items() if k != "model"} == {
        **{k: v for k, v in asked.items() if k != "model"},
        "stream": False,
    }
    answer = r.json()
    assert [c["message"]["content"] for c in answer["choices"]] == ["answer 0", "answer 1"]
    assert answer["choices"][0]["logprobs"] == LOGPROBS and answer["system_fingerprint"] == "fp_standin"
    assert answer["timings"] == {"predicted_ms": 1.5} and answer["model"] == "learnloop/coder"
    run = get_run(store, int(r.headers["x-learnloop-run-id"]))
    assert run.output == "answer 0" and run.meta["gateway"]["choices"] == 2
    assert run.instruction == "what is this?[image_url]"  # the image is named, not stored
    assert run.messages and run.messages[0]["content"] == "what is this?[image_url]"


def test_tool_calls_come_back_and_are_recorded_whole_stream_or_not(gateway):
    import openai

    fake, store, url = gateway
    client: Any = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0)
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    raw = client.chat.completions.with_raw_response.create(model="learnloop/coder", messages=MESSAGES, tools=tools)
    calls = raw.parse().choices[0].message.tool_calls
    assert calls and calls[0].function.arguments == '{"city": "Paris"}'
    run = get_run(store, int(raw.headers["x-learnloop-run-id"]))
    assert run.output == 'get_weather({"city": "Paris"})' and run.tools == tools
    assert run.messages and run.messages[-1]["tool_calls"][0]["function"] == CALL["function"]

    chunks = list(client.chat.completions.create(model="learnloop/coder", messages=MESSAGES, tools=tools, stream=True))
    pieces = [t.function.arguments for c in chunks if c.choices for t in c.choices[0].delta.tool_calls or []]
    assert "".join(p or "" for p in pieces) == '{"city": "Paris"}'
    assert not any(c.usage for c in chunks)  # the gateway asked for usage; the client did not
    info = next(c for c in chunks if c.model_extra.get("learnloop")).model_extra["learnloop"]
    streamed = get_run(store, info["run_id"])
    assert streamed.messages and streamed.messages[-1]["tool_calls"][0]["function"] == CALL["function"]
    assert streamed.meta["gateway"]["finish_reason"] == "tool_calls"

    # A conversation that carries the tool's result on: recorded whole, tool message included.
    history = [
        *MESSAGES,
        {"role": "assistant", "content": None, "tool_calls": [CALL]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
    ]
    r = httpx.post(f"{url}/v1/chat/completions", json={"model": "learnloop/coder", "messages": history})
    run = get_run(store, int(r.headers["x-learnloop-run-id"]))
    assert run.messages and [m["role"] for m in run.messages] == ["user", "assistant", "tool", "assistant"]
    assert "get_weather(" in run.input and "tool: sunny" in run.input


def test_the_runtimes_own_refusal_comes_back_as_it_sent_it_and_no_run(gateway):
    fake, store, url = gateway
    long = [{"role": "user", "content": "x" * (CONTEXT + 1)}]
    for stream in (False, True):
        r = httpx.post(
            f"{url}/v1/chat/completions", json={"model": "learnloop/coder", "messages": long, "stream": stream}
        )
        assert r.status_code == 400 and r.json()["error"]["type"] == "exceed_context_size_error"
    assert _count(store) == 0


def test_refused_before_any_work(gateway):
    fake, store, url = gateway
    before = len(fake.bodies)
    post = f"{url}/v1/chat/completions"
    surrogate = b'{"model": "learnloop/coder", "messages": [{"role": "user", "content": "a\\ud800b"}]}'
    r = httpx.post(post, content=surrogate, headers={"content-type": "application/json"})
    assert r.status_code == 400 and "surrogate" in r.json()["error"]["message"]
    huge = {"model": "learnloop/coder", "messages": [{"role": "user", "content": "x" * 200_001}]}
    r = httpx.post(post, json=huge)
    assert r.status_code == 400 and "cannot be recorded" in r.json()["error"]["message"]
    r = httpx.post(post, json={**huge, "messages": MESSAGES, "metadata": {"task_key": "k" * 300}})
    assert r.status_code == 400
    assert len(fake.bodies) == before and _count(store) == 0  # the runtime saw none of them

    def chunks(total: int):  # no content-length: the limit holds while reading
        sent = 0
        while sent < total:
            sent += 1 << 20
            yield b" " * (1 << 20)

    r = httpx.post(post, content=chunks(MAX_BODY + (4 << 20)), headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.json()["error"]["type"] == "request_too_large"
    reward = f"{url}/v1/learnloop/runs/1/reward"
    ok = httpx.post(post, json={"model": "learnloop/coder", "messages": MESSAGES})
    reward = f"{url}/v1/learnloop/runs/{ok.headers['x-learnloop-run-id']}/reward"
    r = httpx.post(reward, content=chunks(MAX_REWARD_BODY + (1 << 20)), headers={"content-type": "application/json"})
    assert r.status_code == 413


def test_a_client_that_leaves_mid_stream_ends_the_generation_and_leaves_an_aborted_run(gateway):
    fake, store, url = gateway
    fake.closed.clear()
    body = {"model": "learnloop/coder", "messages": MESSAGES, "stream": True, "max_tokens": 400, "slow": True}
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body) as r:
        lines = r.iter_lines()
        got = [next(lines) for _ in range(6)]
    assert any("w0" in line for line in got)
    assert fake.closed.wait(10)  # the runtime's generation ended, long before its 400 pieces
    for _ in range(100):
        if _count(store):
            break
        threading.Event().wait(0.1)
    with store.read() as conn:
        run_id = conn.execute("SELECT id FROM runs").fetchone()[0]
    run = get_run(store, run_id)
    assert run.meta["gateway"]["finish_reason"] == "aborted" and run.output.startswith("w0 ")
    assert run.reward is None


def test_the_in_process_backend_refuses_n_above_1(tmp_path):
    from learning.gateway.inprocess import InProcess

    store = Store(tmp_path)
    with serve_in_thread(build_app(store, InProcess("embedded:tiny"))) as url:  # never loaded: refused first
        r = httpx.post(f"{url}/v1/chat/completions", json={"model": "learnloop/coder", "messages": MESSAGES, "n": 2})
    assert r.status_code == 400 and r.json()["error"]["param"] == "n"
