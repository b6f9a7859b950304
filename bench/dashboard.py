"""The dashboard on a big home: page load times, start-up and the memory it adds.

    python bench/dashboard.py [--runs 100000] [--adapters 50] [--loads 20]

Builds a home with that many runs (four roles, the 30 days up to now, some pending, some on
adapters, every other one recorded by the gateway: meta.gateway with its latency, tokens and
finish reason), that many adapters (each with a loss curve, some promoted) and a few jobs. Then:

- starts `learnloop dashboard` and, as the baseline, `learnloop serve --transport http`, each in
  its own process, and reports the time from start to the first answer;
- loads each page `--loads` times over HTTP and prints the p50 and p95, with the ratio against
  the dashboard's static CSS (the same server and door, no store read); the overview's first
  load, and its load after one more run is logged, read every run (kept between loads after);
- reports the MCP HTTP server's memory (RSS) before and after its /ui pages were loaded: what the
  dashboard adds to a team's server.

With --screenshots DIR it also saves the runs page and an adapter's page as the system's chromium
shows them (Playwright), as in the README.
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import json
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from learning.evaluate.evaluation import task_outcomes  # noqa: E402
from learning.evaluate.gate import GateConfig, apply_gate, gate_reason  # noqa: E402
from learning.jobs.queries import insert_job  # noqa: E402
from learning.registry import adapters as registry  # noqa: E402
from learning.runs.record import log_runs  # noqa: E402
from learning.store import Store, dumps  # noqa: E402
from tests.conftest import LEARNLOOP, subprocess_env  # noqa: E402

ROLES = ("coder", "fixer", "judge", "planner")
FINISHES = ("stop",) * 90 + ("length",) * 6 + ("error", "error", "aborted", "aborted")


def gateway_meta(i: int, rng: random.Random, adapter_id: str | None) -> dict:
    """meta.gateway as the gateway records it (learning/gateway/recording.py)."""
    gateway = {
        "backend": "vllm at http://127.0.0.1:8000",
        "route": "role" if adapter_id else "base",
        "stream": i % 3 == 0,
        "latency_ms": round(rng.lognormvariate(5.5, 0.5), 1),
        "prompt_tokens": 40 + i % 400,
        "completion_tokens": 10 + i % 200,
        "finish_reason": rng.choice(FINISHES),
    }
    return {"gateway": gateway}


def gate_metrics(rng: random.Random, tasks: int = 40) -> dict:
    """An evaluation as the gate records it, from the gate's own functions on per-task outcomes
    (the adapter passes about 80% of the tested tasks, the base about 55%)."""
    checks = {
        name: [{"tested": True, "passed": ok, "tests_passed": 3 * ok, "tests_total": 3} for ok in passes]
        for name, passes in (
            ("adapter", [rng.random() < 0.8 for _ in range(tasks)]),
            ("base", [rng.random() < 0.55 for _ in range(tasks)]),
        )
    }
    result = {name: {"eval_loss": loss, "checks": checks[name]} for name, loss in (("adapter", 0.9), ("base", 1.4))}
    gate = apply_gate(result["adapter"], result["base"], GateConfig(pass_rate_tolerance=0.05), rows_carry_tests=True)
    return {
        "eval_loss": 0.9,
        "base_eval_loss": 1.4,
        "gate_passed": gate["passed"],
        "gate": gate,
        "tasks": task_outcomes(result),
    }


def fill(home: Path, runs: int, adapters: int) -> None:
    store = Store(home)
    rng = random.Random(7)
    ids = []
    for i in range(adapters):
        role = ROLES[i % len(ROLES)]
        folder = home / "adapters" / f"{role}-{i:03d}"
        folder.mkdir(parents=True)
        curve = [[s, round(3.0 / (1 + s / 20), 4)] for s in range(1, 201)]
        (folder / "metadata.json").write_text(json.dumps({"loss_curve": curve}))
        registry.create_adapter(store, folder.name, role, "embedded:small", str(folder), status="trained")
        ids.append(folder.name)
    for adapter_id in ids[: len(ROLES)]:
        metrics = gate_metrics(rng)
        registry.record_evaluation(store, adapter_id, metrics, gate_reason(metrics["gate"]), "candidate")
        registry.move(store, adapter_id, "production", "bench", "promoted", force=True)
    start = datetime.now(timezone.utc) - timedelta(seconds=runs * 26)  # the last run now: /traffic has traffic
    for first in range(0, runs, 5000):
        batch = []
        for i in range(first, min(runs, first + 5000)):
            role = ROLES[i % len(ROLES)]
            adapter_id = ids[i % len(ids)] if ids and i % 3 == 0 else None
            batch.append(
                {
                    "role": role,
                    "instruction": f"task {i}: write a function",
                    "output": f"def f_{i}(x):\n    return x + {i % 97}\n",
                    "reward": None if i % 50 == 0 else round(rng.random(), 3),
                    "agent": "gateway" if i % 2 else f"agent-{i % 7}",
                    "adapter_id": adapter_id,
                    "time": start + timedelta(seconds=i * 26),
                    "meta": gateway_meta(i, rng, adapter_id) if i % 2 else {},
                }
            )
        log_runs(store, batch)
    now = time.time()
    for n in range(5):
        job = dict(kind="train", target="x:y", params="{}", subject=ids[n] if ids else None, progress=dumps({}))
        insert_job(
            store, job | dict(id=f"train-bench{n}", status="succeeded", created=now, log_path=str(home / "j.log"))
        )
    store.close()


def log_one(home: Path) -> None:
    store = Store(home)
    log_runs(store, [{"role": "coder", "output": "x = 1", "reward": 1.0}])
    store.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(argv: list[str], url: str) -> tuple[subprocess.Popen, float]:
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, env=subprocess_env(), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while time.perf_counter() - t0 < 60:
        try:
            if httpx.get(url, timeout=1).status_code < 500:
                return proc, time.perf_counter() - t0
        except httpx.HTTPError:
            time.sleep(0.05)
    proc.kill()
    raise SystemExit(f"{argv} did not answer {url}")


def loads(url: str, n: int) -> tuple[float, float]:
    times = []
    with httpx.Client(timeout=60) as client:
        for _ in range(n):
            t0 = time.perf_counter()
            answer = client.get(url)
            times.append(time.perf_counter() - t0)
            assert answer.status_code == 200, (url, answer.status_code, answer.text[:200])
    times.sort()
    return statistics.median(times) * 1000, times[min(len(times) - 1, int(len(times) * 0.95))] * 1000


def rss_mb(proc: subprocess.Popen) -> float:
    return psutil.Process(proc.pid).memory_info().rss / 2**20


def screenshots(base: str, folder: Path) -> None:
    import shutil

    from playwright.sync_api import sync_playwright

    folder.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=shutil.which("chromium"), args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1100, "height": 760})
        for name, path in (("dashboard-runs.png", "/runs"), ("dashboard-adapter.png", "/adapters/coder-000")):
            page.goto(base + path)
            page.screenshot(path=str(folder / name))
        browser.close()
    print(f"screenshots in {folder}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=100_000)
    parser.add_argument("--adapters", type=int, default=50)
    parser.add_argument("--loads", type=int, default=20)
    parser.add_argument("--screenshots", type=Path, help="save two pages' screenshots here (needs chromium)")
    args = parser.parse_args()
    print(f"versions: { {p: md.version(p) for p in ('starlette', 'jinja2', 'uvicorn')} }")
    with tempfile.TemporaryDirectory(prefix="bench-dashboard-") as tmp:
        home = Path(tmp) / "home"
        t0 = time.perf_counter()
        fill(home, args.runs, args.adapters)
        print(f"home: {args.runs:,} runs, {args.adapters} adapters, filled in {time.perf_counter() - t0:.1f} s")
        port, mcp_port = free_port(), free_port()
        dash, dash_s = start(
            [*LEARNLOOP, "dashboard", "--home", str(home), "--port", str(port)],
            f"http://127.0.0.1:{port}/static/dashboard.css",
        )
        mcp, mcp_s = start(
            [*LEARNLOOP, "serve", "--transport", "http", "--home", str(home), "--port", str(mcp_port)],
            f"http://127.0.0.1:{mcp_port}/ui/static/dashboard.css",
        )
        try:
            print(
                f"start to first answer: dashboard {dash_s:.2f} s, MCP HTTP server {mcp_s:.2f} s ({dash_s / mcp_s:.2f}x)"
            )
            before = rss_mb(mcp)
            base = f"http://127.0.0.1:{port}"
            one_run = f"/runs/{max(1, args.runs // 2)}"
            pages = ["/", "/runs", "/runs?role=coder&min_reward=0.5", one_run, "/adapters", "/adapters/coder-000"]
            pages += ["/jobs", "/api/jobs/train-bench0", "/routing", "/traffic", "/traffic?hours=720"]
            css, _ = loads(base + "/static/dashboard.css", args.loads)
            cold, _ = loads(base + "/", 1)  # the figures over every run, read for the first time
            print(f"\n| page | p50 ms | p95 ms | vs static CSS ({css:.1f} ms) |\n|---|---|---|---|")
            print(f"| / (first load: every run read) | {cold:.1f} | {cold:.1f} | {cold / css:.1f}x |")
            for page in pages:
                p50, p95 = loads(base + page, args.loads)
                print(f"| {page} | {p50:.1f} | {p95:.1f} | {p50 / css:.1f}x |")
            log_one(home)
            changed, _ = loads(base + "/", 1)
            print(
                f"| / (after one more run: every run read again) | {changed:.1f} | {changed:.1f} | {changed / css:.1f}x |"
            )
            for page in pages:
                loads(f"http://127.0.0.1:{mcp_port}/ui{page}", 2)
            after = rss_mb(mcp)
            print(
                f"\nMCP HTTP server RSS: {before:.0f} MB before its /ui pages, {after:.0f} MB after (+{after - before:.0f} MB)"
            )
            print(f"dashboard process RSS after the loads: {rss_mb(dash):.0f} MB")
            if args.screenshots:
                screenshots(base, args.screenshots)
        finally:
            for proc in (dash, mcp):
                proc.terminate()
                proc.wait(timeout=10)


if __name__ == "__main__":
    main()
