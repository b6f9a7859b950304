"""select_adapter latency, in-process and over MCP stdio.

In-process: the cached router (decision written in the call) against an uncached baseline
that resolves the route with one SQL query per level and writes the decision in its own
transaction, plus the first call after a promotion (cache reload). Over stdio: the
select_adapter tool against list_tools (the protocol's own round trip).
Run: python bench/routing.py [--calls 5000]
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
import tempfile
import time
from pathlib import Path

import anyio
from mcp import Client, StdioServerParameters

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from learning.registry import adapters as registry  # noqa: E402
from learning.registry.queries import production_for_route  # noqa: E402
from learning.routing import experiments, router  # noqa: E402
from learning.store import Store  # noqa: E402

ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
REQUESTS = [
    dict(task_type=t, complexity=c)
    for t in ("refactor", "scaffold", "schema", None)
    for c in ("easy", "medium", "hard", None)
]


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def setup(home: str) -> Store:
    store = Store(home)
    for role in ("coder", "fixer", "judge"):
        for i, (tt, cx) in enumerate([(None, None), ("refactor", None), (None, "hard"), ("schema", "hard")]):
            aid = f"{role}-{i}"
            registry.create_adapter(
                store, aid, role, "tiny", f"/a/{aid}", status="candidate", task_type=tt, complexity=cx
            )
            registry.set_production(store, aid, "bench", "setup")
    registry.create_adapter(store, "judge-next", "judge", "tiny", "/a/judge-next", status="candidate")
    registry.set_production(store, "judge-next", "bench", "so that rollbacks alternate")
    registry.create_adapter(store, "coder-cand", "coder", "tiny", "/a/coder-cand", status="candidate")
    experiments.start_experiment(store, "coder", "coder-cand", "canary", fraction=0.1)
    return store


def uncached_select(store: Store, role: str, task_type, complexity, task_key) -> str | None:
    """What a router without a cache does: a query per route level, a transaction per decision."""
    found = None
    with store.read() as conn:
        for key in router.route_keys(role, task_type, complexity):
            found = production_for_route(conn, *key[1])
            if found is not None:
                break
    with store.write() as conn:
        router.insert_decision(
            conn,
            router.DecisionRow(
                id="d-" + secrets.token_hex(8),
                ts=time.time(),
                role=role,
                task_type=task_type,
                complexity=complexity,
                task_key=task_key,
                adapter_id=found["id"] if found else None,
                route="x",
                experiment_id=None,
                arm=None,
            ),
        )
    return found["id"] if found else None


CPU: dict[str, list[float]] = {}  # per path: this thread's CPU time per call (excludes waiting for a core)


def timed(fn, calls: int, name: str = "") -> list[float]:
    lat, cpu = [], []
    for i in range(calls):
        req = REQUESTS[i % len(REQUESTS)]
        t, c = time.perf_counter(), time.thread_time()
        fn("coder" if i % 3 else "fixer", req["task_type"], req["complexity"], f"task-{i}")
        lat.append((time.perf_counter() - t) * 1000)
        cpu.append((time.thread_time() - c) * 1000)
    CPU[name] = cpu
    return lat


def in_process(store: Store, calls: int) -> dict[str, list[float]]:
    out = {}
    timed(lambda *a: router.select_adapter(store, *a), 200)  # warm-up
    out["select_adapter (cached, recorded)"] = timed(
        lambda *a: router.select_adapter(store, *a), calls, "select_adapter (cached, recorded)"
    )
    out["select_adapter (record=False)"] = timed(
        lambda *a: router.select_adapter(store, *a, record=False), calls, "select_adapter (record=False)"
    )
    out["noise floor: sum(range(400)), no I/O"] = timed(
        lambda *a: sum(range(400)), calls, "noise floor: sum(range(400)), no I/O"
    )
    out["uncached baseline"] = timed(lambda *a: uncached_select(store, *a), calls, "uncached baseline")
    reload = []
    other = Store(store.home)  # promotions from another connection, as another process would do
    for _ in range(50):
        registry.rollback_route(other, "judge")
        t = time.perf_counter()
        router.select_adapter(store, "judge")
        reload.append((time.perf_counter() - t) * 1000)
    out["first call after a promotion"] = reload
    return out


async def over_stdio(home: str, calls: int) -> dict[str, list[float]]:
    params = StdioServerParameters(
        command=sys.executable, args=["-m", "server", "serve", "--home", home], env=ENV, cwd=str(ROOT)
    )
    out = {"select_adapter over stdio": [], "list_tools over stdio (baseline)": []}
    async with Client(params) as client:
        for i in range(50):
            await client.call_tool("select_adapter", {"role": "coder", "task_key": f"w{i}"})
        for i in range(calls):
            req = {k: v for k, v in REQUESTS[i % len(REQUESTS)].items() if v}
            t = time.perf_counter()
            result = await client.call_tool("select_adapter", {"role": "coder", "task_key": f"t{i}", **req})
            out["select_adapter over stdio"].append((time.perf_counter() - t) * 1000)
            assert not result.is_error
        for _ in range(calls):
            t = time.perf_counter()
            await client.list_tools()
            out["list_tools over stdio (baseline)"].append((time.perf_counter() - t) * 1000)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=5000)
    parser.add_argument("--stdio-calls", type=int, default=1000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as home:
        store = setup(home)
        results = in_process(store, args.calls)
        results.update(anyio.run(over_stdio, home, args.stdio_calls))
    base = pct(results["uncached baseline"], 0.5)
    print(f"select_adapter latency ({os.cpu_count()} CPUs), ms")
    print("| path | calls | p50 | p99 | p99 CPU time | p50 vs uncached |\n|---|---:|---:|---:|---:|---:|")
    for name, lat in results.items():
        cpu = f"{pct(CPU[name], 0.99):.3f}" if name in CPU else "-"
        print(
            f"| {name} | {len(lat)} | {pct(lat, 0.5):.3f} | {pct(lat, 0.99):.3f} | {cpu} | {pct(lat, 0.5) / base:.2f}x |"
        )


if __name__ == "__main__":
    main()
