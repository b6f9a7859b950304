"""Foundation figures: log_run latency over stdio, import throughput, server start-up,
and concurrent writers. Run: python bench/foundation.py [--runs 100000]"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import anyio
from mcp import Client, StdioServerParameters

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from learning.runs.record import import_runs  # noqa: E402
from learning.store import Store  # noqa: E402
from tests.support.store_helpers import count_runs  # noqa: E402

# Byte-code caching as on a user's machine (a sandbox may turn it off): the first start writes
# the .pyc files, the measured ones use them.
ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"} | {"PYTHONPATH": str(ROOT)}
RUN = {
    "role": "coder",
    "instruction": "write add(a, b)",
    "output": "def add(a, b):\n    return a + b\n",
    "reward": 0.9,
    "signals": {"compiled": True, "tests_passed": 4, "tests_total": 5, "iterations": 2},
}


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def server_params(home: str) -> StdioServerParameters:
    return StdioServerParameters(
        command=sys.executable, args=["-m", "server", "serve", "--home", home], env=ENV, cwd=str(ROOT)
    )


async def stdio_latency(home: str, calls: int) -> tuple[tuple[float, float], float, float]:
    async with Client(server_params(home)) as client:
        for _ in range(20):  # warm-up
            await client.call_tool("log_run", RUN)
        lat = []
        for i in range(calls):
            t = time.perf_counter()
            result = await client.call_tool("log_run", {**RUN, "output": f"v{i}"})
            lat.append((time.perf_counter() - t) * 1000)
            assert not result.is_error
        base = []
        for _ in range(calls):
            t = time.perf_counter()
            await client.call_tool("list_jobs", {"limit": 1})
            base.append((time.perf_counter() - t) * 1000)
    return (pct(base, 0.5), pct(base, 0.99)), pct(lat, 0.5), pct(lat, 0.99)


# The SDK's own floor: a server with one tool and nothing else, started the same way.
MINIMAL_SERVER = """
from mcp.server.mcpserver import MCPServer
server = MCPServer("minimal")
@server.tool()
def ping() -> str:
    return "pong"
server.run("stdio")
"""


async def start_times(home: str, repeats: int, minimal: bool = False) -> list[float]:
    times = []
    params = (
        StdioServerParameters(command=sys.executable, args=["-c", MINIMAL_SERVER], env=ENV, cwd=str(ROOT))
        if minimal
        else server_params(home)
    )
    for _ in range(repeats + 1):
        t = time.perf_counter()
        async with Client(params) as client:
            times.append(time.perf_counter() - t)
            await client.list_tools()
    return times[1:]  # the first start wrote the byte-code caches


def import_throughput(n: int) -> float:
    home = tempfile.mkdtemp()
    path = Path(home) / "runs.jsonl"
    with open(path, "w") as f:
        for i in range(n):
            f.write(json.dumps({**RUN, "output": f"def add{i}(a, b): return a + b", "task_key": f"k{i % 5000}"}) + "\n")
    store = Store(home)
    t = time.perf_counter()
    result = import_runs(store, path)
    seconds = time.perf_counter() - t
    assert result.imported == n and count_runs(store) == n
    return n / seconds


WRITER = r"""
import io, json, sys
from learning.store import Store
from learning.runs.record import import_runs, log_run
store = Store(sys.argv[1]); w = int(sys.argv[2]); n = int(sys.argv[3])
for i in range(n):
    log_run(store, {"role": "coder", "output": f"w{w}-{i}", "reward": 0.5})
import_runs(store, io.StringIO("\n".join(json.dumps({"role": "coder", "output": f"w{w}-i{i}", "reward": 1.0})
                                         for i in range(n * 10))), batch_size=100)
"""


def concurrent_writers(workers: int, per_worker: int) -> tuple[int, int, float]:
    home = tempfile.mkdtemp()
    count_runs(Store(home))  # create the schema once
    t = time.perf_counter()
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, home, str(w), str(per_worker)],
            env=ENV,
            cwd=ROOT,
            stderr=subprocess.PIPE,
            text=True,
        )
        for w in range(workers)
    ]
    errors = [p.communicate()[1] for p in procs]
    seconds = time.perf_counter() - t
    for p, err in zip(procs, errors):
        if p.returncode:
            print(err, file=sys.stderr)
    return workers * per_worker * 11, count_runs(Store(home)), seconds


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=100_000)
    parser.add_argument("--calls", type=int, default=1000)
    args = parser.parse_args()

    home = tempfile.mkdtemp()
    (b50, b99), p50, p99 = anyio.run(stdio_latency, home, args.calls)
    print(
        f"log_run over stdio ({args.calls} calls): p50 {p50:.2f} ms, p99 {p99:.2f} ms (target p99 < 5 ms); "
        f"baseline: a trivial read-only tool (list_jobs, limit 1) in the same session: p50 {b50:.2f} ms, p99 {b99:.2f} ms"
    )

    starts, minimal, bare = [], [], []
    for _ in range(7):  # interleaved, so all three see the same machine
        starts += anyio.run(start_times, home, 1)
        minimal += anyio.run(start_times, home, 1, True)
        t = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import mcp.server.mcpserver"], check=True, env=ENV)
        bare.append(time.perf_counter() - t)
    start, floor = statistics.median(starts), statistics.median(minimal)
    print(
        f"server start to initialized: median {start:.2f} s over 7 starts (target < 1.5 s, no torch); "
        f"baselines, interleaved: the SDK's one-tool server {floor:.2f} s (learnloop: {start / floor:.2f}x, "
        f"{(start - floor) * 1000:+.0f} ms), a bare `import mcp.server.mcpserver` {statistics.median(bare):.2f} s"
    )

    rate = import_throughput(args.runs)
    print(f"import_runs of {args.runs:,} runs: {rate:,.0f} runs/s (target > 20,000/s)")

    sent, written, seconds = concurrent_writers(4, 250)
    print(
        f"4 concurrent writer processes: {written:,} runs written of {sent:,} sent in {seconds:.1f} s "
        f"({'equal' if sent == written else 'LOST RUNS'})"
    )


if __name__ == "__main__":
    main()
