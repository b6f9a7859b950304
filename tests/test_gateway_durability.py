"""Acknowledged means stored: a run id that reached a client survives SIGKILL of the gateway.

The real gateway runs as its own process (`python -m server gateway`, forwarding to a STAND-IN
runtime served on loopback by this process: a small OpenAI-compatible Starlette app with a fixed
answer, no model). Sixteen client threads send chat completions to it, streamed and not, and
keep every run id they receive: the `x-learnloop-run-id` header (taken as soon as the headers
arrive, before the body is read) or the `learnloop.run_id` of a stream's chunk (taken as soon as
that chunk arrives). Mid-load the gateway is killed with SIGKILL (no shutdown, no flush), and the
home's store must hold every one of those runs, with the answer as its output. Three rounds, each
with a fresh gateway on the same home: the first killed at a random moment of the load, the
others at the end of a stall of the store's writes (another connection holds the write lock for
a few hundred milliseconds, as any other writer of the home may), so that the gateway is killed
with answers ready and their runs not committed.

A gateway that released the answer before its run was committed fails here: the runs it
acknowledged before the kill and had not committed are missing (tens of them in each stalled
round, a few or none in the first).
"""

from __future__ import annotations

import asyncio
import json
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from learning.runs.record import row_to_run
from learning.runs.schema import Run
from learning.store import Store
from tests.conftest import LEARNLOOP, ROOT, subprocess_env
from tests.support.servers import free_port, served

pytestmark = pytest.mark.slow

ROUNDS = 3
CLIENTS = 16
PER_CLIENT = 400  # far more than a round sends before the kill: the kill is mid-load
ROUND_S = 30.0  # a round's clients stop by then whatever happens
PIECES = ["def add(a, b):", "\n    return", " a + b", "\n"]
TEXT = "".join(PIECES)
MODEL = "learnloop/coder"
MESSAGES = [{"role": "user", "content": "Write a function add"}]


def _stand_in() -> Starlette:
    """A STAND-IN runtime (not a model): every chat completion gets TEXT, streamed in PIECES with
    a short pause between them, so that streams are in flight when the gateway is killed."""

    def chunk(delta: dict, finish: str | None = None) -> str:
        body = {"id": "x", "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": delta}]}
        body["choices"][0]["finish_reason"] = finish
        return f"data: {json.dumps(body)}\n\n"

    usage = {"prompt_tokens": 6, "completion_tokens": len(PIECES), "total_tokens": 6 + len(PIECES)}

    async def chat(request: Request) -> Response:
        try:
            body = json.loads(await request.body())
        except ClientDisconnect:  # the gateway was killed while sending
            return Response(status_code=499)
        if not body.get("stream"):
            message = {"role": "assistant", "content": TEXT}
            choice = {"index": 0, "message": message, "finish_reason": "stop"}
            return JSONResponse({"id": "x", "object": "chat.completion", "choices": [choice], "usage": usage})

        async def events():
            yield chunk({"role": "assistant"})
            for piece in PIECES:
                await asyncio.sleep(0.001)
                yield chunk({"content": piece})
            yield chunk({}, "stop")
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    async def models(request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [{"id": "stand-in", "object": "model"}]})

    return Starlette(
        routes=[Route("/v1/chat/completions", chat, methods=["POST"]), Route("/v1/models", models, methods=["GET"])]
    )


def _start_gateway(home: Path, backend: str, log: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    args = ["gateway", "--home", str(home), "--port", str(port), "--backend", backend]
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [*LEARNLOOP, *args, "--runtime", "vllm", "--base", "stand-in"],
            env=subprocess_env(home),
            cwd=ROOT,
            stdout=out,
            stderr=out,
        )
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"the gateway exited with {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            if httpx.get(f"{url}/v1/models", timeout=1.0).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    proc.kill()
    proc.wait()
    raise AssertionError(f"the gateway did not answer within 90 s: {log.read_text()[-2000:]}")


class Load:
    """CLIENTS threads, each with its own keep-alive connection, alternating streamed and
    non-streamed requests; every run id received is kept with whether it came in a stream."""

    def __init__(self, url: str):
        self.url = url
        self.lock = threading.Lock()
        self.acked: list[tuple[int, bool]] = []  # (run id, streamed)
        self.killed = threading.Event()
        self.errors_after_kill = 0
        self.unexpected: list[str] = []  # failures before the kill: the test's own fault
        self.deadline = time.monotonic() + ROUND_S
        self.threads = [threading.Thread(target=self._client, args=(k,), daemon=True) for k in range(CLIENTS)]

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def join(self) -> None:
        for thread in self.threads:
            thread.join(timeout=ROUND_S + 15)
        assert not any(t.is_alive() for t in self.threads), "a client did not stop"

    def count(self) -> int:
        with self.lock:
            return len(self.acked)

    def _ack(self, run_id: int, streamed: bool) -> None:
        with self.lock:
            self.acked.append((run_id, streamed))

    def _client(self, k: int) -> None:
        with httpx.Client(base_url=self.url, timeout=10.0) as client:
            for i in range(PER_CLIENT):
                if time.monotonic() > self.deadline:
                    return
                streamed = (i + k) % 2 == 1
                body = {"model": MODEL, "messages": MESSAGES, "max_tokens": 16, "stream": streamed}
                try:
                    with client.stream("POST", "/v1/chat/completions", json=body) as response:
                        if response.status_code != 200:
                            response.read()
                            raise AssertionError(f"status {response.status_code}: {response.text[:300]}")
                        if streamed:
                            self._read_stream(response)
                        else:
                            self._ack(int(response.headers["x-learnloop-run-id"]), False)  # before the body
                            assert response.read() and response.json()["choices"][0]["message"]["content"] == TEXT
                except (httpx.HTTPError, AssertionError, KeyError, ValueError) as exc:
                    with self.lock:
                        if self.killed.is_set():
                            self.errors_after_kill += 1
                        else:
                            self.unexpected.append(f"{type(exc).__name__}: {exc}")
                    return

    def _read_stream(self, response: httpx.Response) -> None:
        got = False
        for line in response.iter_lines():
            if not line.startswith("data: {"):
                continue
            info = json.loads(line[len("data: ") :]).get("learnloop")
            if info is not None:
                assert info.get("run_id") is not None, info
                self._ack(int(info["run_id"]), True)  # as soon as the chunk is here
                got = True
        assert got, "a stream ended without its run id"


def _stored(home: Path, ids: list[int]) -> dict[int, Run]:
    """The runs of `ids` the home's store holds, by id."""
    store = Store(home)
    try:
        with store.read() as conn:
            rows = conn.execute(f"SELECT * FROM runs WHERE id IN ({','.join('?' * len(ids))})", ids).fetchall()
        return {run.id: run for run in map(row_to_run, rows)}
    finally:
        store.close()


@contextmanager
def _writes_stalled(home: Path, stalled: bool) -> Iterator[None]:
    """Another connection holds the home's write lock for the block (when `stalled`): the
    gateway's writer waits on it (well within its busy timeout), so nothing it answers meanwhile
    is committed. A gateway that answers before committing acknowledges runs all along the stall,
    and the kill at its end loses them; one that commits first acknowledges none."""
    if not stalled:
        yield
        return
    conn = sqlite3.connect(Store(home).path, timeout=30, isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        yield
        conn.execute("ROLLBACK")
    finally:
        conn.close()


def test_acknowledged_runs_survive_sigkill(tmp_path: Path):
    home = tmp_path / "home"
    home.mkdir()
    log = tmp_path / "gateway.log"
    rng = random.Random(7)
    seen: set[int] = set()
    with served(_stand_in()) as backend:
        for round_no in range(ROUNDS):
            proc, url = _start_gateway(home, backend, log)
            load = Load(url)
            try:
                load.start()
                deadline = time.monotonic() + ROUND_S / 2
                while load.count() < 20 and time.monotonic() < deadline:  # the load is on
                    time.sleep(0.02)
                time.sleep(rng.uniform(0.3, 1.2))  # then kill it at a moment nobody chose
                with _writes_stalled(home, stalled=round_no > 0):
                    time.sleep(rng.uniform(0.3, 0.8) if round_no > 0 else 0)
                    assert proc.poll() is None, f"the gateway exited by itself: {log.read_text()[-2000:]}"
                    load.killed.set()
                    proc.send_signal(signal.SIGKILL)
                    proc.wait(timeout=10)
                load.join()
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
            assert not load.unexpected, load.unexpected[:5]
            acked = load.acked
            assert acked, f"round {round_no}: no client received a run id"
            assert load.errors_after_kill > 0, f"round {round_no}: the kill came after the load, not in it"
            ids = [run_id for run_id, _ in acked]
            assert len(set(ids)) == len(ids), f"round {round_no}: a run id was handed out twice"
            assert not seen & set(ids), f"round {round_no}: a run id of an earlier round was handed out again"
            seen |= set(ids)
            stored = _stored(home, ids)  # read at once: get_run would wait for a reserved id
            lost = [run_id for run_id in ids if run_id not in stored]
            wrong = [
                (run_id, stored[run_id].output, stored[run_id].meta["gateway"].get("stream"))
                for run_id, streamed in acked
                if run_id in stored
                and (stored[run_id].output != TEXT or stored[run_id].meta["gateway"]["stream"] is not streamed)
            ]
            print(
                f"round {round_no}: {len(acked)} run ids acknowledged "
                f"({sum(s for _, s in acked)} streamed), {len(lost)} lost, "
                f"{load.errors_after_kill} requests cut by the kill",
                file=sys.stderr,
            )
            assert not lost, f"round {round_no}: {len(lost)} of {len(acked)} acknowledged runs lost: {lost[:20]}"
            assert not wrong, f"round {round_no}: stored runs differ from the answers: {wrong[:5]}"
