"""The gateway in front of a real llama.cpp server: what it adds to a model's latency.

Two paths to one llama-server (built by tools/llama_server.py, serving SmolLM2-135M-Instruct's
Q4_1 GGUF from tests/support/realmodel.py, started here with `-c 2048 -t 2 --jinja`):

- direct: client -> llama-server;
- gateway: client -> the gateway (`python -m server gateway --runtime llamacpp --backend <the
  server's URL>`, a fresh home) -> llama-server, model `learnloop/coder`. No adapter serves the
  route on a fresh home, so this is the base route: the gateway sends llama-server `lora` with
  every adapter the server loaded at scale 0 (none here: an empty list) and records the run,
  committed before the answer is released.

Request by request interleaved, the order alternating, in the same run: a non-streamed chat
completion (max_tokens 16, temperature 0; the time to the whole answer) and a streamed one (the
time to its first chunk with content). Printed: p50 and p95 on each path, and the gateway's
added p50 and p95 over direct (and their ratio). Also printed: the llama-server build's
build.json (its build_seconds) and the size of its cache folder.

Run: python bench/gateway_llama.py [--requests 40] [--max-tokens 16]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TypeVar

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.gateway import free_port, pct, versions  # noqa: E402
from tools import llama_server  # noqa: E402

ENV = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
MESSAGES = [{"role": "user", "content": "Write a Python function that adds two numbers."}]
WARM_UP = 3
T = TypeVar("T")


def wait_for(url: str, proc: subprocess.Popen, what: str, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{what} exited with {proc.returncode}")
        try:
            if httpx.get(url, timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"{what} did not answer at {url} within {timeout:.0f} s")


def start_llama_server(binary: Path, gguf: Path, port: int, log: Path) -> subprocess.Popen:
    """llama-server in its own session (its process group is killed at the end)."""
    cmd = [str(binary), "-m", str(gguf), "--port", str(port), "-c", "2048", "-t", "2", "--jinja"]
    with log.open("ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=out, start_new_session=True)
    try:
        wait_for(f"http://127.0.0.1:{port}/health", proc, "llama-server")
    except BaseException:
        kill_group(proc)
        raise
    return proc


def kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=10)


def body(model: str, stream: bool, max_tokens: int) -> dict:
    return {"model": model, "messages": MESSAGES, "max_tokens": max_tokens, "temperature": 0, "stream": stream}


def retried(request: Callable[[], T]) -> tuple[T, int]:
    """Run `request()` (a timed request) again if the server closed a reused keep-alive connection
    before answering: llama-server closes some connections after a streamed answer without
    saying so, and a request sent at once on such a connection fails with "Server disconnected
    without sending a response" (as the openai SDK does, it is sent again, on a new connection;
    its time is the retry's). Returns (request()'s result, retries)."""
    for retry in range(3):
        try:
            return request(), retry
        except httpx.RemoteProtocolError:
            if retry == 2:
                raise
    raise AssertionError("unreachable")


def one_call(client: httpx.Client, model: str, max_tokens: int) -> tuple[float, str]:
    """(ms to the whole non-streamed answer, its text)."""
    t = time.perf_counter()
    response = client.post("/v1/chat/completions", json=body(model, False, max_tokens))
    response.raise_for_status()
    text = response.json()["choices"][0]["message"]["content"] or ""
    return (time.perf_counter() - t) * 1000, text


def first_token(client: httpx.Client, model: str, max_tokens: int) -> float:
    """ms from sending a streamed request to its first chunk with content (read to the end)."""
    t = time.perf_counter()
    first = None
    with client.stream("POST", "/v1/chat/completions", json=body(model, True, max_tokens)) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if first is None and line.startswith("data: {"):
                choices = json.loads(line[len("data: ") :]).get("choices") or []
                if any((c.get("delta") or {}).get("content") for c in choices):
                    first = (time.perf_counter() - t) * 1000
    if first is None:
        raise SystemExit(f"a stream from {client.base_url} had no content")
    return first


def build_info(binary: Path) -> str:
    folder = binary.parent
    info_file = folder / "build.json"
    info = json.loads(info_file.read_text()) if info_file.is_file() else {}
    size = subprocess.run(["du", "-sh", str(folder)], capture_output=True, text=True).stdout.split("\t")[0]
    what = ", ".join(f"{k} {v}" for k, v in info.items()) or "no build.json"
    return f"llama-server build: {what}; its cache folder: {size or '?'} (du -sh)"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=40, help="requests per path and kind, after the warm-up")
    ap.add_argument("--max-tokens", type=int, default=16)
    args = ap.parse_args()
    binary = llama_server.binary()
    if binary is None:
        raise SystemExit("llama-server is not built: python tools/llama_server.py")
    from tests.support.realmodel import smollm2_gguf

    gguf = smollm2_gguf()
    print(
        f"versions: {versions('httpx', 'starlette', 'uvicorn', 'sse-starlette', 'httptools', 'uvloop')}; python {sys.version.split()[0]}; {os.cpu_count()} CPUs"
    )
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(build_info(binary))
    print(f"model: {gguf.name}; llama-server -c 2048 -t 2 --jinja; {llama_server.PACKAGE} {llama_server.VERSION}")
    work = Path(tempfile.mkdtemp(prefix="gwllama-"))
    (work / "home").mkdir()
    lport, gport = free_port(), free_port()
    direct, through = f"http://127.0.0.1:{lport}", f"http://127.0.0.1:{gport}"
    server = start_llama_server(binary, gguf, lport, work / "llama-server.log")
    gateway = None
    try:
        cmd = ["-m", "server", "gateway", "--home", str(work / "home"), "--port", str(gport)]
        cmd += ["--backend", direct, "--runtime", "llamacpp"]
        with (work / "gateway.log").open("ab") as out:
            gateway = subprocess.Popen([sys.executable, *cmd], env=ENV, cwd=str(ROOT), stdout=out, stderr=out)
        wait_for(f"{through}/v1/models", gateway, "the gateway")
        paths = {"direct": (direct, "smollm2"), "gateway": (through, "learnloop/coder")}
        clients = {name: httpx.Client(base_url=url, timeout=120.0) for name, (url, _) in paths.items()}
        calls: dict[str, list[float]] = {name: [] for name in paths}
        firsts: dict[str, list[float]] = {name: [] for name in paths}
        texts: dict[str, list[str]] = {name: [] for name in paths}
        retries = {name: 0 for name in paths}
        names = list(paths)
        started = time.monotonic()
        for i in range(WARM_UP + args.requests):
            order = names if i % 2 == 0 else names[::-1]
            for name in order:
                client, model = clients[name], paths[name][1]
                (ms, text), again = retried(partial(one_call, client, model, args.max_tokens))
                first, again_stream = retried(partial(first_token, client, model, args.max_tokens))
                retries[name] += again + again_stream
                if i >= WARM_UP:
                    calls[name].append(ms)
                    firsts[name].append(first)
                    texts[name].append(text)
        elapsed = time.monotonic() - started
        for c in clients.values():
            c.close()
    finally:
        if gateway is not None:
            gateway.terminate()
            try:
                gateway.wait(timeout=30)
            except subprocess.TimeoutExpired:
                gateway.kill()
        kill_group(server)
    shutil.rmtree(work, ignore_errors=True)
    same = sum(a == b for a, b in zip(texts["direct"], texts["gateway"]))
    print(
        f"\n{args.requests} requests per path and kind after {WARM_UP} warm-up rounds, interleaved, "
        f"max_tokens {args.max_tokens}, temperature 0 ({elapsed:.0f} s); same text on both paths: "
        f"{same}/{args.requests}; requests sent again after a closed keep-alive connection: "
        f"direct {retries['direct']}, gateway {retries['gateway']}"
    )
    print(
        f"{'':30} {'direct p50':>10} {'p95':>9} {'gateway p50':>11} {'p95':>9} {'added p50':>9} {'p95':>9} {'ratio':>6}"
    )
    for kind, lat in (("non-streamed, whole answer", calls), ("streamed, first content chunk", firsts)):
        d50, d95 = pct(lat["direct"], 0.5), pct(lat["direct"], 0.95)
        g50, g95 = pct(lat["gateway"], 0.5), pct(lat["gateway"], 0.95)
        print(
            f"{kind:30} {d50:8.1f}ms {d95:7.1f}ms {g50:9.1f}ms {g95:7.1f}ms {g50 - d50:7.1f}ms "
            f"{g95 - d95:7.1f}ms {g50 / d50:5.2f}x"
        )


if __name__ == "__main__":
    main()
