"""MCP tool latency while a training job runs, versus idle.

    python bench/busy_server.py [--calls 200] [--runs 2000]

Starts the learnloop MCP server over stdio (a real subprocess, as an agent would), logs
--runs runs, measures --calls calls of run_stats idle, starts train_adapter on the tiny
embedded base through the same server, measures again while the job trains, then cancels
the job. Prints p50 and p99 in both states and their ratio.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import anyio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


async def measure(client, calls: int) -> list[float]:
    times = []
    for _ in range(calls):
        t = time.perf_counter()
        result = await client.call_tool("run_stats", {"group_by": "role_adapter"})
        times.append((time.perf_counter() - t) * 1000)
        assert not result.is_error, result
    return times


async def scenario(home: Path, calls: int, n_runs: int) -> None:
    from mcp import Client, StdioServerParameters

    from learning.jobs import manage as jobs
    from learning.models.tinybase import ensure_base
    from learning.store import Store
    from tests.support.train_helpers import make_dataset

    store = Store(home)
    ensure_base(store, "tiny")
    make_dataset(store, "bench-ds", rows=64)
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "server", "serve"],
        cwd=str(ROOT),
        env={**os.environ, "LEARNLOOP_HOME": str(home), "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"},
    )
    async with Client(params) as client:
        runs = "".join(
            f'{{"role": "coder", "output": "def f{i}(): pass", "reward": {i % 10 / 10}, '
            f'"instruction": "task {i % 50}", "signals": {{"compiled": true}}}}\n'
            for i in range(n_runs)
        )
        await client.call_tool("import_runs", {"jsonl": runs})
        await measure(client, 20)  # warm up
        idle = await measure(client, calls)
        started = (
            await client.call_tool(
                "train_adapter",
                {
                    "role": "coder",
                    "dataset_id": "bench-ds",
                    "base": "embedded:tiny",
                    "max_steps": 100_000,
                    "overrides": {"batch_size": 4, "save_steps": 100_000},
                },
            )
        ).structured_content
        while jobs.job_status(store, started["job_id"], log_lines=0).progress.get("step", 0) < 2:
            await anyio.sleep(0.2)
        busy = await measure(client, calls)
        step = jobs.job_status(store, started["job_id"], log_lines=0).progress.get("step")
        await client.call_tool("cancel_job", {"job_id": started["job_id"]})
    jobs.wait_job(store, started["job_id"], timeout=40)
    print(f"run_stats over stdio, {n_runs} runs in the store, {calls} calls each, {os.cpu_count()} CPU cores")
    for name, values in (("idle", idle), ("training", busy)):
        print(f"  {name:9s} p50 {statistics.median(values):7.2f} ms   p99 {percentile(values, 0.99):7.2f} ms")
    print(
        f"  p99 ratio training / idle: {percentile(busy, 0.99) / percentile(idle, 0.99):.2f}x "
        f"(the job trained through step {step} meanwhile)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").partition("\n")[0])
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--runs", type=int, default=2000)
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="learnloop-busy-")) / "home"
    anyio.run(scenario, home, args.calls, args.runs)


if __name__ == "__main__":
    main()
