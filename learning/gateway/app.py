"""The gateway's HTTP face: an ASGI app (Starlette) speaking the OpenAI API.

  GET  /v1/models                          learnloop/<role> for each role with adapters
  POST /v1/chat/completions                chat, streamed (SSE) or not
  POST /v1/completions                     plain completion, streamed or not
  POST /v1/learnloop/runs/{run_id}/reward  score a recorded exchange afterwards

Each call is routed (learning.routing.router.select_adapter, every request: a promotion or
rollback shows on the next one), answered by the backend, and recorded as a run
(learning/gateway/recording.py). The answer carries `x-learnloop-run-id`,
`x-learnloop-reward-token`, `x-learnloop-decision-id`, `x-learnloop-adapter` and
`x-learnloop-route` (for a stream: the run id is known only at the end, so it comes in the last
chunk's `learnloop` field, with the reward token again). The reward token is the client's
capability to score that run, once (learning/runs/rewards.py); only its hash is stored. A
request with `metadata.tests` gets no token: it is answered first, then scored in the sandbox in
the background (learning/gateway/scoring.py), a measured reward no client can replace.
Malformed requests get a 400 OpenAI error object and are not recorded; a backend that fails
gets a 502 with its message (and is recorded as a failed run, reward 0.0, only with
record_failures). Nothing here prints a request, an answer or a token.
Nothing in the answer's path waits on the disk: the routing decision is made without writing
(router.decide), and the decision and the run go to the Recorder's writer thread, which stores
them in one transaction with whatever else is queued (learning/gateway/recording.py). When the
app shuts down (its lifespan) the scorer finishes, the queue is written and the backend's
connections are closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from functools import partial
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route as HttpRoute

from learning.errors import Conflict, Forbidden, InvalidInput, NotFound
from learning.gateway import protocol as p
from learning.gateway.inprocess import BackendError
from learning.gateway.recording import Recorder, exchange_run, failure_run
from learning.gateway.scoring import Scorer
from learning.routing.router import DecisionRow, decide
from learning.runs.ids import written_run
from learning.runs.rewards import give_reward
from learning.runs.tokens import new_token
from learning.store import Store

MAX_BODY = 8 * 1024 * 1024
TOKEN_HEADER = "x-learnloop-reward-token"


def _error(status: int, message: str, kind: str = "invalid_request_error", param: str | None = None) -> JSONResponse:
    return JSONResponse(p.error_body(message, kind, param), status_code=status)


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


class Gateway:
    def __init__(self, store: Store, backend: Any, record_failures: bool = False):
        self.store, self.backend, self.record_failures = store, backend, record_failures
        self.recorder = Recorder(store)
        self.scorer = Scorer(store, self.recorder)

    def _answered(
        self, call: p.Call, gen: p.Generation, routed: tuple[Any, Any], started: float, token: str | None
    ) -> int:
        """Queue the exchange's run, pending, with its reward token's hash; a request with tests
        (and no token) has its answer scored in the background."""
        target, decision = routed
        run = exchange_run(call, gen, target, self._meta(call, target, started))
        run_id = self.recorder.record(decision, run, reward_token=token)
        if call.tests:
            self.scorer.submit(run_id, gen.text, call.tests)
        return run_id

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
        raw = await request.body()
        if len(raw) > MAX_BODY:
            return _error(413, f"The body is over {MAX_BODY // 1024 // 1024} MiB.")
        try:
            call = p.read_call(raw, kind, {k.lower(): v for k, v in request.headers.items()})
            routed = self._select(call)  # reads only: well under a millisecond
        except p.BadRequest as exc:
            return _error(400, str(exc), param=exc.param)
        target, started = routed[0], time.perf_counter()
        token = None if call.tests else new_token()  # a request with tests is scored by the gateway itself
        if call.stream:
            items = aiter(self.backend.stream(call, target))
            try:  # a backend that fails before its first piece still gets a 502
                first = await anext(items)
            except BackendError as exc:
                return self._failed(call, routed, started, exc)
            return StreamingResponse(
                self._stream(call, routed, started, first, items, token),
                media_type="text/event-stream",
                headers=_headers(target, reward_token=token),
            )
        try:
            gen = await self.backend.complete(call, target)
        except BackendError as exc:
            return self._failed(call, routed, started, exc)
        run_id = self._answered(call, gen, routed, started, token)
        return JSONResponse(p.answer(call, p.new_id(call), gen), headers=_headers(target, run_id, token))

    async def _stream(
        self,
        call: p.Call,
        routed: tuple[Any, Any],
        started: float,
        first: Any,
        items: AsyncIterator[Any],
        token: str | None,
    ) -> AsyncIterator[str]:
        target = routed[0]
        answer_id = p.new_id(call)
        yield p.chunk(call, answer_id, None, role=True)
        gen = None
        try:
            item = first
            while True:
                if isinstance(item, p.Generation):
                    gen = item
                else:
                    yield p.chunk(call, answer_id, item)
                try:
                    item = await anext(items)
                except StopAsyncIteration:
                    break
        except BackendError as exc:
            self._failed(call, routed, started, exc)  # recorded (when asked); the client gets an error event
            yield p.sse(p.error_body(str(exc), "backend_error"))
            yield p.DONE
            return
        assert gen is not None  # a backend's stream ends with its Generation
        run_id = self._answered(call, gen, routed, started, token)
        last = json.loads(p.chunk(call, answer_id, None, gen.finish_reason)[len("data: ") :])
        last["learnloop"] = {
            "run_id": run_id,
            "reward_token": token,
            "decision_id": getattr(target, "decision_id", None),
        }
        yield p.sse(last)
        if call.include_usage:
            yield p.usage_chunk(call, answer_id, gen)
        yield p.DONE

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
        if plain:
            await run_in_threadpool(self.recorder.flush)  # a run answered a moment ago is stored first
        if not plain or await run_in_threadpool(written_run, self.store, int(text), 0.0) is None:
            return _error(404, f"No run {text[:40]!r}: use the x-learnloop-run-id of an answer.", "not_found_error")
        try:
            body = json.loads(await request.body())
            if not isinstance(body, dict):
                raise ValueError("not an object")
            token = _reward_token(body.get("reward_token"), request.headers.get(TOKEN_HEADER))
            given = {k: body.get(k) for k in ("reward", "signals", "tests")}
            await run_in_threadpool(
                partial(give_reward, self.store, int(text), given, reward_token=token, actor="http")
            )
        except (ValueError, RecursionError) as exc:
            return _error(400, f"The body must be a JSON object with 'reward' in [0, 1] ({exc}).")
        except p.BadRequest as exc:
            return _error(400, str(exc), param=exc.param)
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
