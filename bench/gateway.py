"""The gateway's own overhead, its throughput with 8 concurrent clients, and "nothing lost".

Three processes at the heart of it: this one (the clients, httpx), a STAND-IN runtime and the real gateway
(`python -m server gateway --backend <stand-in URL>`, the forwarding backend of
learning/gateway/forward.py, routed model `learnloop/coder`, so the routing decision and the
recording of its run are in the path; the run is stored by the gateway's writer thread, many
runs per commit, and each answer is released once its run is committed; "nothing lost" is
counted after the gateway has shut down).

A fourth process, a BARE PROXY (no learnloop: the same Starlette server and the same reused
httpx client, passing each request on and the answer back), is measured alongside: the latency it
adds is the floor of the extra hop, so the gateway's figure minus the bare proxy's is what
learnloop's own work (routing, recording, the OpenAI format) costs.

The stand-in is NOT a model runtime: it is a small local OpenAI-compatible app (Starlette +
uvicorn) that answers every chat completion with the same short fixed text, streamed as a few
chunks when asked. It is there so that the backend is fast and identical in both paths; the
figure is client -> gateway -> stand-in minus client -> stand-in, request by request
interleaved, in the same run.

Then the in-process backend (transformers on the embedded tiny base) answers a few requests
through a second gateway, for context: its latency is the model's, not the gateway's.

Run: python bench/gateway.py [--requests 300] [--concurrent 8] [--per-client 50] [--inprocess 5]
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata as md
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from learning.store import Store  # noqa: E402
from tests.support.store_helpers import count_runs  # noqa: E402

ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
STAND_IN_TEXT = ["def add(a, b):", "\n    return", " a + b", "\n"]  # the stand-in's fixed answer, in chunks
MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Write a function add"}]


# ---- the stand-in runtime (a subprocess: python bench/gateway.py --stand-in PORT) -------------


def stand_in_app():
    """A STAND-IN for an OpenAI-compatible runtime: a fixed short answer, no model."""
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse, StreamingResponse
    from starlette.routing import Route

    def chunk(delta: dict, finish: str | None = None, use: dict | None = None) -> str:
        body: dict = {"id": "chatcmpl-standin", "object": "chat.completion.chunk", "created": 0, "model": "stand-in"}
        body["choices"] = [] if use else [{"index": 0, "delta": delta, "finish_reason": finish}]
        if use:
            body["usage"] = use
        return f"data: {json.dumps(body)}\n\n"

    use = {"prompt_tokens": 12, "completion_tokens": len(STAND_IN_TEXT), "total_tokens": 12 + len(STAND_IN_TEXT)}

    async def chat(request):
        body = await request.json()
        if body.get("stream"):

            async def pieces():
                yield chunk({"role": "assistant"})
                for piece in STAND_IN_TEXT:
                    yield chunk({"content": piece})
                yield chunk({}, "stop")
                yield chunk({}, use=use)
                yield "data: [DONE]\n\n"

            return StreamingResponse(pieces(), media_type="text/event-stream")
        message = {"role": "assistant", "content": "".join(STAND_IN_TEXT)}
        return JSONResponse(
            {
                "id": "chatcmpl-standin",
                "object": "chat.completion",
                "created": 0,
                "model": body.get("model", "stand-in"),
                "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
                "usage": use,
            }
        )

    async def models(request):
        return JSONResponse({"object": "list", "data": [{"id": "stand-in", "object": "model"}]})

    return Starlette(
        routes=[Route("/v1/chat/completions", chat, methods=["POST"]), Route("/v1/models", models, methods=["GET"])]
    )


def serve_stand_in(port: int) -> None:
    import uvicorn

    uvicorn.run(stand_in_app(), host="127.0.0.1", port=port, log_level="warning", access_log=False)


def bare_proxy_app(target: str):
    """A BARE PROXY, no learnloop in it: the same server (Starlette + uvicorn) and the same reused
    httpx client as the gateway, passing each chat completion on and back. Its added latency is the
    floor any gateway built this way pays for the extra hop."""
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse, StreamingResponse
    from starlette.routing import Route

    state: dict = {}

    async def chat(request):
        body = json.loads(await request.body())
        if "client" not in state:  # one client, reused (as the gateway's)
            state["client"] = httpx.AsyncClient(base_url=target, timeout=30.0)
        client = state["client"]
        if not body.get("stream"):
            response = await client.post("/v1/chat/completions", json=body)
            return JSONResponse(response.json())

        async def lines():
            async with client.stream("POST", "/v1/chat/completions", json=body) as response:
                async for line in response.aiter_lines():
                    if line:
                        yield line + "\n\n"

        return StreamingResponse(lines(), media_type="text/event-stream")

    async def models(request):
        return JSONResponse({"object": "list", "data": []})

    return Starlette(
        routes=[Route("/v1/chat/completions", chat, methods=["POST"]), Route("/v1/models", models, methods=["GET"])]
    )


# ---- processes ---------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(args: list[str], url: str, timeout: float = 300.0, log: Path | None = None) -> subprocess.Popen:
    """A bench process, waited for until `url` answers; its stderr appended to `log` when given."""
    with log.open("ab") if log else contextlib.nullcontext() as err:
        proc = subprocess.Popen([sys.executable, *args], env=ENV, cwd=str(ROOT), stdout=subprocess.DEVNULL, stderr=err)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{args} exited with {proc.returncode}" + (f"; its stderr: {log}" if log else ""))
        try:
            if httpx.get(f"{url}/v1/models", timeout=1.0).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    proc.terminate()
    raise SystemExit(f"{args} did not answer within {timeout:.0f} s")


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()


# ---- clients (httpx, one keep-alive connection per client) ----------------------------------


def request_body(model: str, stream: bool, max_tokens: int = 16) -> dict:
    return {"model": model, "messages": MESSAGES, "max_tokens": max_tokens, "stream": stream}


def one_call(client: httpx.Client, model: str) -> float:
    """ms from sending a non-streamed request to its whole answer parsed."""
    t = time.perf_counter()
    response = client.post("/v1/chat/completions", json=request_body(model, False))
    response.raise_for_status()
    assert response.json()["choices"][0]["message"]["content"]
    return (time.perf_counter() - t) * 1000


def one_stream(client: httpx.Client, model: str) -> tuple[float, float]:
    """(ms to the first content token, ms to [DONE]) of a streamed request."""
    t = time.perf_counter()
    first = None
    with client.stream("POST", "/v1/chat/completions", json=request_body(model, True)) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if first is None and line.startswith("data: {") and '"content"' in line:
                first = (time.perf_counter() - t) * 1000
            if line == "data: [DONE]":
                break
    assert first is not None
    return first, (time.perf_counter() - t) * 1000


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def overhead(paths: dict[str, tuple[str, str]], requests: int) -> dict[str, dict[str, list[float]]]:
    """Latencies on each path (name: (url, model)), interleaved request by request, the order rotating."""
    out: dict[str, dict[str, list[float]]] = {
        k: {name: [] for name in paths} for k in ("non-streamed", "streamed: first token", "streamed: whole")
    }
    clients = {k: httpx.Client(base_url=url, timeout=30.0) for k, (url, _) in paths.items()}
    names = list(paths)
    for i in range(requests + 20):  # the first 20 warm up
        for name in names[i % len(names) :] + names[: i % len(names)]:
            client, model = clients[name], paths[name][1]
            call = one_call(client, model)
            first, whole = one_stream(client, model)
            if i >= 20:
                out["non-streamed"][name].append(call)
                out["streamed: first token"][name].append(first)
                out["streamed: whole"][name].append(whole)
    for c in clients.values():
        c.close()
    return out


def concurrent(url: str, model: str, clients: int, per_client: int) -> tuple[float, int, int]:
    """(seconds, answered, failed) for `clients` threads each sending `per_client` requests."""
    answered, failed = [0] * clients, [0] * clients

    def work(k: int) -> None:
        with httpx.Client(base_url=url, timeout=60.0) as client:
            for i in range(per_client):
                try:
                    if i % 2:
                        one_stream(client, model)
                    else:
                        one_call(client, model)
                    answered[k] += 1
                except (httpx.HTTPError, AssertionError):
                    failed[k] += 1

    threads = [threading.Thread(target=work, args=(k,)) for k in range(clients)]
    t = time.perf_counter()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    return time.perf_counter() - t, sum(answered), sum(failed)


def in_process(home: str, n: int) -> list[float]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = start(["-m", "server", "gateway", "--home", home, "--port", str(port)], url)
    try:
        with httpx.Client(base_url=url, timeout=300.0) as client:
            one_call(client, "learnloop/coder")  # the first call loads the model
            return [one_call(client, "learnloop/coder") for _ in range(n)]
    finally:
        stop(proc)


def print_overhead(latencies: dict[str, dict[str, list[float]]]) -> None:
    """Each path's p50 and p99 against the direct path's, kind by kind."""
    print(
        f"{'':24} {'path':11} {'direct p50':>11} {'p50':>9} {'added p50':>10} {'ratio':>6}   "
        f"{'direct p99':>11} {'p99':>9} {'added p99':>10}"
    )
    for kind, lat in latencies.items():
        d50, d99 = pct(lat["direct"], 0.5), pct(lat["direct"], 0.99)
        for path in (p for p in lat if p != "direct"):
            g50, g99 = pct(lat[path], 0.5), pct(lat[path], 0.99)
            print(
                f"{kind:24} {path:11} {d50:9.2f}ms {g50:7.2f}ms {g50 - d50:8.2f}ms {g50 / d50:5.2f}x   "
                f"{d99:9.2f}ms {g99:7.2f}ms {g99 - d99:8.2f}ms"
            )


def versions(*names: str) -> str:
    """The installed versions of the packages a figure depends on, as one line."""
    names = names or ("httpx", "starlette", "uvicorn", "openai", "torch", "transformers", "peft")
    out = []
    for name in names:
        try:
            out.append(f"{name} {md.version(name)}")
        except md.PackageNotFoundError:
            out.append(f"{name} (not installed)")
    return ", ".join(out)


# Long: one report, printed in the order the README keeps it
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=300, help="interleaved requests per path and kind")
    ap.add_argument("--concurrent", type=int, default=8, help="concurrent clients")
    ap.add_argument("--per-client", type=int, default=50, help="requests per concurrent client")
    ap.add_argument("--inprocess", type=int, default=5, help="requests to the in-process backend (0: skip)")
    ap.add_argument("--stand-in", type=int, help=argparse.SUPPRESS)  # run the stand-in on this port
    ap.add_argument("--bare-proxy", nargs=2, help=argparse.SUPPRESS)  # run the bare proxy: PORT TARGET
    args = ap.parse_args()
    if args.stand_in:
        serve_stand_in(args.stand_in)
        return
    if args.bare_proxy:
        import uvicorn

        port, target = args.bare_proxy
        uvicorn.run(bare_proxy_app(target), host="127.0.0.1", port=int(port), log_level="warning", access_log=False)
        return
    print(f"versions: {versions()}; python {sys.version.split()[0]}; {os.cpu_count()} CPUs")
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    home = tempfile.mkdtemp(prefix="gwbench-")
    sport, pport, gport = free_port(), free_port(), free_port()
    direct, proxy, through = (f"http://127.0.0.1:{port}" for port in (sport, pport, gport))
    stand_in = start([__file__, "--stand-in", str(sport)], direct)
    bare = start([__file__, "--bare-proxy", str(pport), direct], proxy)
    gateway = start(
        ["-m", "server", "gateway", "--home", home, "--port", str(gport), "--backend", direct, "--base", "stand-in"],
        through,
    )
    try:
        print(f"\nOverhead: {args.requests} requests per path and kind, interleaved; clients: httpx, keep-alive")
        print("direct = client -> STAND-IN runtime; gateway = client -> gateway (forwarding) -> stand-in;")
        print("bare proxy = client -> a Starlette app passing requests on with httpx, no learnloop -> stand-in")
        paths = {
            "direct": (direct, "stand-in"),
            "bare proxy": (proxy, "stand-in"),
            "gateway": (through, "learnloop/coder"),
        }
        print_overhead(overhead(paths, args.requests))
        n = args.concurrent * args.per_client
        print(f"\n{args.concurrent} concurrent clients x {args.per_client} requests (half streamed), httpx")
        secs_d, ok_d, bad_d = concurrent(direct, "stand-in", args.concurrent, args.per_client)
        secs_g, ok_g, bad_g = concurrent(through, "learnloop/coder", args.concurrent, args.per_client)
        print(f"direct to the stand-in: {ok_d / secs_d:7.1f} requests/s ({ok_d}/{n} answered, {bad_d} failed)")
        print(
            f"through the gateway:    {ok_g / secs_g:7.1f} requests/s ({ok_g}/{n} answered, {bad_g} failed), "
            f"{(ok_g / secs_g) / (ok_d / secs_d):.2f}x direct"
        )
    finally:
        stop(gateway)  # SIGTERM: the gateway writes what it still holds before it exits
        stop(bare)
        stop(stand_in)
    answered = 2 * (args.requests + 20) + ok_g  # overhead: one call and one stream per round (20 warm-up rounds)
    recorded = count_runs(Store(home))
    print(f"nothing lost: runs recorded {recorded} == requests answered {answered}: {recorded == answered}")
    if args.inprocess:
        lat = in_process(home, args.inprocess)
        print(
            f"\nIn-process backend, embedded tiny base, max_tokens 16, {len(lat)} requests after the first: "
            f"p50 {pct(lat, 0.5):.1f} ms, max {max(lat):.1f} ms (the model's time; context only)"
        )


if __name__ == "__main__":
    main()
