"""The gateway's HTTP face: an ASGI app (Starlette) speaking the OpenAI API.

  GET  /v1/models                          learnloop/<role> for each role with adapters
  POST /v1/chat/completions                chat, streamed (SSE) or not
  POST /v1/completions                     plain completion, streamed or not
  POST /v1/learnloop/runs/{run_id}/reward  score a recorded exchange afterwards

Each call is routed (learning.routing.router.select_adapter, every request: a promotion or
rollback shows on the next one), answered by the backend, and recorded as a run
(learning/gateway/recording.py). Fields the gateway does not need pass to the runtime untouched
and its answer comes back whole (learning/gateway/protocol.py, answers.py).

The answer carries `x-learnloop-run-id`, `x-learnloop-reward-token`, `x-learnloop-decision-id`,
`x-learnloop-adapter` and `x-learnloop-route`; a stream has the run id, its token and the
decision in the `learnloop` field of the chunk that ends the answer. Acknowledged means stored:
that answer or chunk is released only after the run is committed, so a run id a client holds
survives a crash of the gateway. The reward token is the client's capability to score that run,
once (learning/runs/rewards.py); only its hash is stored. A request with `metadata.tests` gets no
token: it is scored in the sandbox in the background (learning/gateway/scoring.py), a measured
reward no client can replace.

Refused before any work, never recorded: a body over MAX_BODY (413, counted while reading), a
malformed request or value (400), one whose run could not be stored (an instruction over the
runs' limits), and what the backend refuses (the in-process model's context; a runtime's own
400/413/422 comes back as it sent it). A backend that fails gets a 502 with its message (and a
failed run, reward 0.0, only with record_failures). A client that leaves mid-stream ends the
backend's generation and leaves an aborted run. Nothing here prints a request, an answer or a
token. When the app shuts down (its lifespan) the scorer finishes within its deadline, the queue
is written and the backend's connections are closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import sys
import threading
import time
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from functools import partial
from typing import Any

import anyio
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route as HttpRoute

from learning.errors import Conflict, Forbidden, InvalidInput, NotFound
from learning.gateway import protocol as p
from learning.gateway.answers import Reply, StreamReply, answer_of, chunks_of, reply_of
from learning.gateway.inprocess import BackendError
from learning.gateway.recording import Recorder, exchange_run, failure_run
from learning.gateway.scoring import Scorer
from learning.routing.router import DecisionRow, decide
from learning.runs.ids import written_run
from learning.runs.rewards import give_reward
from learning.runs.schema import parse_run
from learning.runs.tokens import new_token
from learning.store import Store

MAX_BODY = 32 * 1024 * 1024  # a chat request, images included; enforced while reading
MAX_REWARD_BODY = 2 * 1024 * 1024  # a reward: its signals and up to 100 tests of 10,000 characters
TOKEN_HEADER = "x-learnloop-reward-token"


def _error(status: int, message: str, kind: str = "invalid_request_error", param: str | None = None) -> JSONResponse:
    return JSONResponse(p.error_body(message, kind, param), status_code=status)


def _refusal(exc: p.BadRequest) -> JSONResponse:
    """A refused request: the runtime's own error object where it refused it, else ours."""
    if exc.body is not None:
        return JSONResponse(exc.body, status_code=exc.status)
    kind = "request_too_large" if exc.status == 413 else "invalid_request_error"
    return _error(exc.status, str(exc), kind, exc.param)


async def read_body(request: Request, limit: int) -> bytes:
    """The request's body, refused (413) as soon as it passes `limit` bytes: never read whole first."""
    declared = request.headers.get("content-length", "")
    too_big = p.BadRequest(f"The body is over {limit // 1024 // 1024} MiB.", status=413)
    if declared.isascii() and declared.isdigit() and int(declared) > limit:
        raise too_big
    parts, size = [], 0
    async for part in request.stream():
        size += len(part)
        if size > limit:
            raise too_big
        parts.append(part)
    return b"".join(parts)


def _headers(target: Any, run_id: int | None = None, reward_token: str | None = None) -> dict[str, str]:
    out = {}
    if run_id is not None:
        out["x-learnloop-run-id"] = str(run_id)
    if reward_token is not None:
        out[TOKEN_HEADER] = reward_token
    if target is not None:
        out["x-learnloop-decision-id"] = target.decision_id
        out["x-learnloop-adapter"] = target.adapter_id or "base"
        out["x-learnloop-route"] = target.route
        if target.route == "base":
            out["x-learnloop-fallback"] = "no adapter serves this route: the base model answered"
    return out


def _finishes(chunk: dict[str, Any]) -> bool:
    """Whether a chunk ends a choice (or carries only usage): from there on the stream is held
    until its run is stored."""
    choices = chunk.get("choices")
    if not choices:
        return "usage" in chunk
    return any(isinstance(c, dict) and c.get("finish_reason") for c in choices)


def _event(data: Any) -> ServerSentEvent:
    return ServerSentEvent(data=data if isinstance(data, str) else json.dumps(data, ensure_ascii=False))


class Gateway:
    def __init__(self, store: Store, backend: Any, record_failures: bool = False):
        self.store, self.backend, self.record_failures = store, backend, record_failures
        self.recorder = Recorder(store)
        self.scorer = Scorer(store, self.recorder)

    async def _answered(
        self, call: p.Call, reply: Reply, routed: tuple[Any, Any], started: float, token: str | None
    ) -> int | None:
        """Store the exchange's run, pending, with its reward token's hash, and return its id once
        it is committed (None: it could not be stored, and the answer goes without a run id); a
        request with tests (and no token) has its answer scored in the background."""
        target, decision = routed
        try:
            run = exchange_run(call, reply, target, self._meta(call, target, started))
            submit = partial(self.recorder.submit, decision, run, reward_token=token)
            # With no reserved id at hand (the writer blocked by another writer) submit waits: off the loop.
            run_id, stored = submit() if self.recorder.ids else await asyncio.to_thread(submit)
            await asyncio.wrap_future(stored)
        except (InvalidInput, RuntimeError) as exc:
            print(f"learnloop gateway: an answer was not recorded: {str(exc)[:200]}", file=sys.stderr)
            return None
        if call.tests:
            self.scorer.submit(run_id, reply.text, call.tests)
        return run_id

    def _aborted(self, call: p.Call, routed: tuple[Any, Any], started: float, reply: Reply) -> None:
        """The client left mid-stream: what it was sent is recorded, finish_reason `aborted`
        (pending, with no reward token: nobody holds one)."""
        target, decision = routed
        reply.finish_reason = "aborted"
        try:
            self.recorder.record(decision, exchange_run(call, reply, target, self._meta(call, target, started)))
        except (InvalidInput, RuntimeError):
            pass

    def _failed(self, call: p.Call, routed: tuple[Any, Any], started: float, exc: BackendError) -> JSONResponse:
        """A 502 with the backend's message; a failed run too when the user opted in."""
        target, decision = routed
        if self.record_failures:
            self.recorder.record(decision, failure_run(call, target, self._meta(call, target, started), str(exc)))
        elif decision is not None:  # the decision is kept, as select_adapter would have
            self.recorder.decision(decision)
        return _error(502, str(exc), "backend_error")

    def _select(self, call: p.Call) -> tuple[Any, DecisionRow | None]:
        """(the selection, its decision row), both None for a model name that is not routed."""
        route = call.route
        if route is None:
            return None, None
        try:
            return decide(self.store, route.role, route.task_type, route.complexity, route.task_key)
        except InvalidInput as exc:
            raise p.BadRequest(str(exc), "model") from None

    def _check(self, call: p.Call) -> None:
        """Refuse, before any work, a request whose run could not be stored (an instruction or a
        task key over the runs' limits) or that this backend cannot answer."""
        if call.n > 1 and not getattr(self.backend, "many_choices", False):
            raise p.BadRequest("'n' must be 1 here: the in-process backend answers one choice per request.", "n")
        try:
            parse_run(exchange_run(call, Reply(text="."), None, {}))
        except InvalidInput as exc:
            raise p.BadRequest(f"This request cannot be recorded: {str(exc)[:500]}") from None

    async def aclose(self) -> None:
        """Finish scoring, write what is queued, close the backend's connections."""
        await asyncio.to_thread(self.scorer.close)  # scoring first: its rewards need their runs
        await asyncio.to_thread(self.recorder.close)
        close = getattr(self.backend, "aclose", None)
        if close is not None:
            await close()

    def _meta(self, call: p.Call, target: Any, started: float) -> dict[str, Any]:
        return {
            "backend": self.backend.name,
            "route": target.route if target is not None else None,
            "stream": call.stream,
            "latency_ms": round((time.perf_counter() - started) * 1000, 1),
        }

    async def completions(self, request: Request) -> Response:
        kind = "chat" if request.url.path.endswith("/chat/completions") else "completion"
        try:
            raw = await read_body(request, MAX_BODY)
            call = p.read_call(raw, kind, {k.lower(): v for k, v in request.headers.items()})
            self._check(call)
            routed = self._select(call)  # reads only: well under a millisecond
        except p.BadRequest as exc:
            return _refusal(exc)
        target, started = routed[0], time.perf_counter()
        token = None if call.tests else new_token()  # a request with tests is scored by the gateway itself
        if call.stream:
            items = chunks_of(call, self.backend.stream(call, target))
            try:  # a backend that fails or refuses before its first piece still gets a status of its own
                first = await anext(items)
            except BackendError as exc:
                return self._failed(call, routed, started, exc)
            except p.BadRequest as exc:
                self._keep_decision(routed)
                return _refusal(exc)
            except StopAsyncIteration:
                return self._failed(call, routed, started, BackendError("The backend's stream was empty."))
            stream = self._stream(call, routed, started, first, items, token)
            headers = _headers(target, reward_token=token)  # known before the run id: the run's once stored
            return EventSourceResponse(stream, headers=headers, sep="\n")
        try:
            answer = await self.backend.complete(call, target)
            answer = answer_of(call, answer) if isinstance(answer, p.Generation) else answer
            reply = reply_of(call, answer)
        except BackendError as exc:
            return self._failed(call, routed, started, exc)
        except p.BadRequest as exc:
            self._keep_decision(routed)
            return _refusal(exc)
        except ValueError as exc:
            return self._failed(call, routed, started, BackendError(f"The answer is not OpenAI's format ({exc})."))
        run_id = await self._answered(call, reply, routed, started, token)
        return JSONResponse(answer, headers=_headers(target, run_id, token if run_id is not None else None))

    def _keep_decision(self, routed: tuple[Any, Any]) -> None:
        if routed[1] is not None:
            self.recorder.decision(routed[1])

    async def _stream(
        self,
        call: p.Call,
        routed: tuple[Any, Any],
        started: float,
        first: dict[str, Any],
        items: AsyncGenerator[dict[str, Any], None],
        token: str | None,
    ) -> AsyncIterator[ServerSentEvent]:
        """The backend's chunks as they come, up to the first that ends a choice; those are held
        until the run is stored, then sent with its id (the `learnloop` field of the first held
        chunk). A client that leaves ends the backend's generation and leaves an aborted run."""
        reply, held, done = StreamReply(call), [], False
        try:
            chunk: dict[str, Any] | None = first
            while chunk is not None:
                reply.add(chunk)
                if not call.include_usage:
                    chunk.pop("usage", None)
                if held or _finishes(chunk):
                    held.append(chunk)
                else:
                    yield _event(chunk)
                chunk = await anext(items, None)
            done = True
        except BackendError as exc:
            done = True
            self._failed(call, routed, started, exc)  # recorded (when asked); the client gets an error event
            yield _event(p.error_body(str(exc), "backend_error"))
            yield _event("[DONE]")
            return
        finally:
            if not done:  # the client left (or the server is stopping): the backend stops too
                self._aborted(call, routed, started, reply.result())
                with anyio.CancelScope(shield=True):
                    await items.aclose()
        run_id = await self._answered(call, reply.result(), routed, started, token)
        info = {"run_id": run_id, "reward_token": token if run_id is not None else None}
        info["decision_id"] = getattr(routed[0], "decision_id", None)
        held = [c for c in held if c.get("choices") or call.include_usage] or [{**first, "choices": []}]
        held[0]["learnloop"] = info
        for chunk in held:
            yield _event(chunk)
        yield _event("[DONE]")

    async def models(self, request: Request) -> Response:
        from learning.registry.adapters import list_adapters

        roles = sorted({a.role for a in list_adapters(self.store)} | {"coder"})
        data = [{"id": f"{p.MODEL_PREFIX}{r}", "object": "model", "created": 0, "owned_by": "learnloop"} for r in roles]
        return JSONResponse({"object": "list", "data": data})

    async def reward(self, request: Request) -> Response:
        """Score a pending run, once, with its reward token (in the body's `reward_token` or the
        x-learnloop-reward-token header): 400 bad body, 403 no or wrong token, 404 no such run,
        409 scored already; a refused reward changes nothing."""
        text = request.path_params["run_id"]
        plain = text.isascii() and text.isdigit() and len(text) <= 18  # not "²", "١" or past SQLite's integers
        if not plain or await run_in_threadpool(written_run, self.store, int(text), 0.0) is None:
            return _error(404, f"No run {text[:40]!r}: use the x-learnloop-run-id of an answer.", "not_found_error")
        try:
            raw = await read_body(request, MAX_REWARD_BODY)
            body = json.loads(raw)
            if not isinstance(body, dict):
                raise ValueError("not an object")
            p.check_text(raw, body)
            token = _reward_token(body.get("reward_token"), request.headers.get(TOKEN_HEADER))
            given = {k: body.get(k) for k in ("reward", "signals", "tests")}
            await run_in_threadpool(
                partial(give_reward, self.store, int(text), given, reward_token=token, actor="http")
            )
        except (ValueError, RecursionError) as exc:
            return _error(400, f"The body must be a JSON object with 'reward' in [0, 1] ({exc}).")
        except p.BadRequest as exc:
            return _refusal(exc)
        except InvalidInput as exc:
            return _error(400, str(exc), param="reward")
        except Forbidden as exc:
            return _error(403, str(exc), "permission_error", param="reward_token")
        except NotFound as exc:
            return _error(404, str(exc), "not_found_error")
        except Conflict as exc:
            return _error(409, str(exc), "conflict_error")
        return JSONResponse({"run_id": int(text), "reward": body.get("reward")})

    @contextlib.asynccontextmanager
    async def lifespan(self, app: Starlette) -> AsyncIterator[None]:
        yield
        await self.aclose()


def _reward_token(in_body: Any, in_header: str | None) -> str | None:
    """The reward token a reward request carries, in its body or its header (the same, if both)."""
    if in_body is not None and not isinstance(in_body, str):
        raise p.BadRequest("'reward_token' must be the text of the answer's x-learnloop-reward-token.", "reward_token")
    if in_body and in_header and in_body != in_header:
        raise p.BadRequest(
            "The body's 'reward_token' and the x-learnloop-reward-token header differ: send one.", "reward_token"
        )
    return in_body or in_header


def build_app(store: Store, backend: Any, record_failures: bool = False) -> Starlette:
    """The gateway as an ASGI app over one store and one backend. record_failures: a backend
    that fails is also recorded as a failed run (reward 0.0), not only answered 502."""
    gw = Gateway(store, backend, record_failures)

    async def no_route(request: Request, exc: Exception) -> Response:
        status = getattr(exc, "status_code", 404)
        message = f"{request.method} {request.url.path[:200]} is not part of this API (see docs/gateway.md)."
        return _error(status, message, "not_found_error" if status == 404 else "invalid_request_error")

    app = Starlette(
        lifespan=gw.lifespan,
        exception_handlers={404: no_route, 405: no_route},
        routes=[
            HttpRoute("/v1/models", gw.models, methods=["GET"]),
            HttpRoute("/v1/chat/completions", gw.completions, methods=["POST"]),
            HttpRoute("/v1/completions", gw.completions, methods=["POST"]),
            HttpRoute("/v1/learnloop/runs/{run_id}/reward", gw.reward, methods=["POST"]),
        ],
    )
    app.state.gateway = gw  # its recorder, scorer and backend (tests and the demo flush the recorder)
    return app


@contextlib.contextmanager
def serve_in_thread(app: Any, host: str = "127.0.0.1", stop_s: float = 300.0) -> Iterator[str]:
    """Serve an ASGI app with uvicorn in a thread of this process, on a free port of `host`;
    yields its base URL. Leaving the block shuts it down, lifespan included (the gateway finishes
    its scoring and writes what it holds), waiting up to stop_s."""
    import uvicorn

    sock = socket.socket()
    sock.bind((host, 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="gateway-server", daemon=True)
    thread.start()
    while not server.started:
        if not thread.is_alive():
            sock.close()
            raise RuntimeError("The gateway did not start (see the messages above).")
        time.sleep(0.02)
    try:
        yield f"http://{host}:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=stop_s)
        sock.close()
