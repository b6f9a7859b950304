"""Acknowledged means stored, measured: runs a client was told about that survive SIGKILL of the
gateway, and what committing before answering costs in latency and throughput.

Two gateways, the same code: COMMIT FIRST (the gateway as it is: the answer, or the stream's
chunk carrying `learnloop.run_id`, is released only after the run is committed) and ANSWER FIRST
(the baseline: the same gateway started through this script with `Recorder.submit` patched to
hand back an already-done future, so the answer goes out as soon as the run is queued, as the
gateway did before; nothing under learning/ is changed).

1. Durability, per gateway: ROUNDS rounds, each a fresh gateway process on the same home, CLIENTS
   threads (httpx, one keep-alive connection each, streamed and non-streamed alternating) for
   LOAD_S seconds, then SIGKILL. In every round but the first another connection holds the
   home's write lock for STALL_S seconds before the kill (as any other writer of the home may),
   so the gateway is killed with answers ready and their runs not committed. Printed per round:
   the run ids clients received (the x-learnloop-run-id header, taken when the headers arrive; a
   stream's learnloop.run_id, taken when its chunk arrives), how many the store holds, how many
   are lost, and requests/s (run ids received per second of load before any stall). The same
   clients against the stand-in directly and through a bare proxy give the requests/s baseline.
2. Overhead: bench/gateway.py's measurement (its stand-in, its bare proxy and its interleaved
   request-by-request loop), with both gateways in the interleaving: p50 and p95 of each path,
   added over direct, and the commit-first gateway's figure minus the answer-first one's.

The backend is bench/gateway.py's STAND-IN, not a model runtime: a local Starlette app answering
every chat completion with the same short text (streamed as a few chunks when asked).

Run: python bench/gateway_durability.py [--rounds 3] [--clients 16] [--load-s 3] [--stall-s 0.5]
         [--requests 300]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import gateway as base  # noqa: E402 - the stand-in, the bare proxy, the overhead loop
from learning.store import Store  # noqa: E402

MODEL = "learnloop/coder"


def answer_first_gateway(argv: list[str]) -> None:
    """Run `learnloop <argv>` with the answer released before its run is committed (the baseline)."""
    from concurrent.futures import Future

    from learning.gateway.recording import Recorder

    submit = Recorder.submit

    def early(self, decision, run, reward_token=None):
        run_id, _ = submit(self, decision, run, reward_token)
        done: Future = Future()
        done.set_result(run_id)
        return run_id, done

    Recorder.submit = early  # type: ignore[method-assign]
    from server.entry import main

    sys.argv = ["learnloop", *argv]
    main()


def start(args: list[str], url: str, log: Path) -> subprocess.Popen:
    """bench/gateway.py's start, with the process's stderr in `log`: a stand-in whose gateway was
    killed mid-request, or a killed gateway, would fill the report with tracebacks."""
    return base.start(args, url, timeout=120, log=log)


def gateway_cmd(kind: str, home: str, port: int, backend: str) -> list[str]:
    args = ["gateway", "--home", home, "--port", str(port), "--backend", backend, "--runtime", "vllm"]
    args += ["--base", "stand-in"]
    return ["-m", "server", *args] if kind == "commit first" else [__file__, "--answer-first", *args]


class Load:
    """`clients` threads sending chat completions until `stop` is set or the deadline passes,
    alternating streamed and non-streamed; the run ids received are kept with their time."""

    def __init__(self, url: str, model: str, clients: int, limit_s: float):
        self.url, self.model = url, model
        self.lock = threading.Lock()
        self.acked: list[tuple[float, int | None]] = []  # (when, run id); None: no run id asked for
        self.stop = threading.Event()
        self.failed_before_stop: list[str] = []
        self.deadline = time.monotonic() + limit_s
        self.threads = [threading.Thread(target=self.client, args=(k,), daemon=True) for k in range(clients)]

    def start(self) -> None:
        self.started = time.monotonic()
        for thread in self.threads:
            thread.start()

    def join(self) -> None:
        for thread in self.threads:
            thread.join(timeout=60)

    def ack(self, run_id: int | None) -> None:
        with self.lock:
            self.acked.append((time.monotonic(), run_id))

    def client(self, k: int) -> None:
        with httpx.Client(base_url=self.url, timeout=30.0) as client:
            i = 0
            while not self.stop.is_set() and time.monotonic() < self.deadline:
                streamed = (i + k) % 2 == 1
                i += 1
                try:
                    with client.stream("POST", "/v1/chat/completions", json=self.body(streamed)) as response:
                        response.raise_for_status()
                        if streamed:
                            self.read_stream(response)
                        else:
                            header = response.headers.get("x-learnloop-run-id")
                            if self.model == MODEL:
                                self.ack(int(header))  # as soon as the headers are here
                            response.read()
                            if self.model != MODEL:
                                self.ack(None)
                except (httpx.HTTPError, ValueError, TypeError) as exc:
                    if not self.stop.is_set():
                        with self.lock:
                            self.failed_before_stop.append(f"{type(exc).__name__}: {exc}")
                    return

    def body(self, streamed: bool) -> dict:
        return {"model": self.model, "messages": base.MESSAGES, "max_tokens": 16, "stream": streamed}

    def read_stream(self, response: httpx.Response) -> None:
        for line in response.iter_lines():
            if line == "data: [DONE]":
                if self.model != MODEL:
                    self.ack(None)
                return
            if self.model == MODEL and line.startswith("data: {"):
                info = json.loads(line[len("data: ") :]).get("learnloop")
                if info is not None:
                    self.ack(int(info["run_id"]))  # as soon as the chunk is here

    def rate(self, until: float) -> float:
        """Answers per second from the start to `until`."""
        with self.lock:
            n = sum(1 for when, _ in self.acked if when <= until)
        return n / max(until - self.started, 1e-9)


def stored_ids(home: str, ids: list[int]) -> set[int]:
    store = Store(home)
    try:
        with store.read() as conn:
            found = set()
            for i in range(0, len(ids), 500):
                part = ids[i : i + 500]
                rows = conn.execute(f"SELECT id FROM runs WHERE id IN ({','.join('?' * len(part))})", part)
                found |= {row["id"] for row in rows}
        return found
    finally:
        store.close()


def durability(
    kind: str, backend: str, args: argparse.Namespace, rng: random.Random, work: Path
) -> tuple[int, list[float]]:
    """Rounds of load and SIGKILL on one home; prints each round; returns (lost in all, rates)."""
    home = tempfile.mkdtemp(prefix="home-", dir=work)
    lost_all, rates = 0, []
    for round_no in range(args.rounds):
        port = base.free_port()
        url = f"http://127.0.0.1:{port}"
        proc = start(gateway_cmd(kind, home, port, backend), url, work / "stderr.log")
        load = Load(url, MODEL, args.clients, args.load_s + args.stall_s + 30)
        load.start()
        time.sleep(args.load_s * rng.uniform(0.75, 1.25))
        stall = args.stall_s if round_no > 0 else 0.0
        until = time.monotonic()
        lock = sqlite3.connect(Store(home).path, timeout=30, isolation_level=None)
        try:
            if stall:
                lock.execute("BEGIN IMMEDIATE")
                time.sleep(stall)
            load.stop.set()
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)
            if stall:
                lock.execute("ROLLBACK")
        finally:
            lock.close()
            load.stop.set()
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        load.join()
        ids = [run_id for _, run_id in load.acked if run_id is not None]
        found = stored_ids(home, ids)
        lost = len(set(ids) - found)
        lost_all += lost
        rates.append(load.rate(until))
        print(
            f"{kind:13} round {round_no}  {f'{stall:.2f} s' if stall else 'none':>7}  {len(ids):>12}  "
            f"{len(found):>6}  {lost:>4}  {rates[-1]:>10.1f}  {len(load.failed_before_stop):>6}"
        )
    return lost_all, rates


def baseline_rate(url: str, model: str, args: argparse.Namespace) -> float:
    load = Load(url, model, args.clients, args.load_s)
    load.start()
    time.sleep(args.load_s)
    until = time.monotonic()
    load.stop.set()
    load.join()
    return load.rate(until)


def print_overhead(latencies: dict[str, dict[str, list[float]]]) -> None:
    print(
        f"{'':22} {'path':13} {'p50':>8} {'p95':>8} {'added p50':>10} {'added p95':>10} {'p50 ratio':>9} "
        f"{'over bare proxy p50':>20}"
    )
    for kind, lat in latencies.items():
        d50, d95 = base.pct(lat["direct"], 0.5), base.pct(lat["direct"], 0.95)
        b50 = base.pct(lat["bare proxy"], 0.5)
        for path, values in lat.items():
            p50, p95 = base.pct(values, 0.5), base.pct(values, 0.95)
            over = f"{p50 - b50:18.2f}ms" if path not in ("direct", "bare proxy") else f"{'':>20}"
            print(
                f"{kind:22} {path:13} {p50:6.2f}ms {p95:6.2f}ms {p50 - d50:8.2f}ms {p95 - d95:8.2f}ms "
                f"{p50 / d50:8.2f}x {over}"
            )
    print("\ncommit before answer, its cost: commit first minus answer first (same run, interleaved)")
    for kind, lat in latencies.items():
        now, before = lat["commit first"], lat["answer first"]
        d50 = base.pct(now, 0.5) - base.pct(before, 0.5)
        d95 = base.pct(now, 0.95) - base.pct(before, 0.95)
        print(
            f"{kind:22} p50 {d50:+6.2f} ms, p95 {d95:+6.2f} ms "
            f"(p50 {base.pct(now, 0.5) / base.pct(before, 0.5):.2f}x the answer-first gateway's)"
        )


# Long: one report, in the order the README keeps it
def main() -> None:
    if sys.argv[1:2] == ["--answer-first"]:
        answer_first_gateway(sys.argv[2:])
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3, help="gateways killed, per kind")
    ap.add_argument("--clients", type=int, default=16, help="concurrent clients")
    ap.add_argument("--load-s", type=float, default=3.0, help="seconds of load before the kill (+-25%%)")
    ap.add_argument(
        "--stall-s", type=float, default=0.5, help="write-lock stall before the kill, rounds after the first"
    )
    ap.add_argument("--requests", type=int, default=300, help="interleaved requests per path and kind (overhead)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    print(f"versions: {base.versions()}; python {sys.version.split()[0]}; {os.cpu_count()} CPUs")
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    work = Path(tempfile.mkdtemp(prefix="gwdur-"))  # the homes, and the servers' stderr
    log = work / "stderr.log"
    sport, pport = base.free_port(), base.free_port()
    direct, proxy = (f"http://127.0.0.1:{port}" for port in (sport, pport))
    stand_in = start([str(ROOT / "bench" / "gateway.py"), "--stand-in", str(sport)], direct, log)
    bare = start([str(ROOT / "bench" / "gateway.py"), "--bare-proxy", str(pport), direct], proxy, log)
    gateways: list[subprocess.Popen] = []
    try:
        print(
            f"\nDurability: {args.rounds} rounds per gateway, {args.clients} clients (half the requests streamed), "
            f"~{args.load_s:g} s of load, then SIGKILL; rounds after the first: the write lock held "
            f"{args.stall_s:g} s before the kill"
        )
        print(
            f"{'gateway':13} {'round':7}  {'stall':>7}  {'ids received':>12}  {'stored':>6}  {'lost':>4}  "
            f"{'requests/s':>10}  {'failed':>6}"
        )
        lost_now, rates_now = durability("commit first", direct, args, rng, work)
        lost_before, rates_before = durability("answer first", direct, args, rng, work)
        rate_direct = baseline_rate(direct, "stand-in", args)
        rate_proxy = baseline_rate(proxy, "stand-in", args)
        mean_now, mean_before = sum(rates_now) / len(rates_now), sum(rates_before) / len(rates_before)
        print(
            f"\nrequests/s, {args.clients} clients, same run: direct {rate_direct:.1f}, bare proxy {rate_proxy:.1f} "
            f"({rate_proxy / rate_direct:.2f}x direct), commit first {mean_now:.1f} ({mean_now / rate_direct:.2f}x "
            f"direct, {mean_now / mean_before:.2f}x answer first), answer first {mean_before:.1f} "
            f"({mean_before / rate_direct:.2f}x direct)"
        )
        print(f"lost: commit first {lost_now} (must be 0), answer first {lost_before}")

        ports = base.free_port(), base.free_port()
        urls = [f"http://127.0.0.1:{port}" for port in ports]
        for kind, port, url in zip(("commit first", "answer first"), ports, urls):
            home = tempfile.mkdtemp(prefix="home-", dir=work)
            gateways.append(start(gateway_cmd(kind, home, port, direct), url, log))
        print(f"\nOverhead: bench/gateway.py's loop, {args.requests} requests per path and kind, interleaved")
        paths = {
            "direct": (direct, "stand-in"),
            "bare proxy": (proxy, "stand-in"),
            "commit first": (urls[0], MODEL),
            "answer first": (urls[1], MODEL),
        }
        print_overhead(base.overhead(paths, args.requests))
    finally:
        for proc in gateways:
            base.stop(proc)
        base.stop(bare)
        base.stop(stand_in)
    if lost_now:
        raise SystemExit(f"{lost_now} acknowledged runs lost by the commit-first gateway; homes and stderr: {work}")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
