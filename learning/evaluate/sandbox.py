"""Run untrusted Python (an agent's answer) against tests, in a subprocess.

Each call starts a fresh isolated interpreter (`python -I -S`) with a wall-clock timeout,
CPU and memory limits, and sockets disabled before the answer runs, so code under test
cannot reach the network, hang the caller or exhaust memory. Each test is one Python
statement (usually an assert); the result counts how many passed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass

# What runs one answer, in a child interpreter: limits, no network, the code, then each test.
_ANSWER = r"""
import json, os, resource, select, signal, socket, sys, time
def _no_network(*a, **k):
    raise OSError("network access is disabled in the learnloop sandbox")
def _one(code, tests, cpu):
    resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu))
    socket.socket = _no_network
    socket.create_connection = _no_network
    socket.getaddrinfo = _no_network
    out = {"compiled": False, "passed": 0, "total": len(tests), "error": None}
    try:
        compiled = compile(code, "<answer>", "exec")
        out["compiled"] = True
        env = {"__name__": "__answer__"}
        exec(compiled, env)
    except BaseException as exc:
        out["error"] = type(exc).__name__ + ": " + str(exc)[:200]
        return out
    for test in tests:
        try:
            exec(test, dict(env))
            out["passed"] += 1
        except BaseException as exc:
            if out["error"] is None:
                out["error"] = type(exc).__name__ + ": " + str(exc)[:200]
    return out
def _compiles(code):
    try:
        compile(code, "<answer>", "exec")
        return True
    except BaseException:
        return False
"""

# One answer: the child reads {"code", "tests", "cpu"} as JSON on stdin and prints one JSON line.
_CHILD = (
    _ANSWER
    + r"""
job = json.loads(sys.stdin.read())
sys.stdout.write("\n" + json.dumps(_one(job["code"], job["tests"], job["cpu"])) + "\n")
"""
)


@dataclass
class ExecResult:
    compiled: bool
    passed: int
    total: int
    timed_out: bool = False
    error: str | None = None

    @property
    def score(self) -> float:
        """Share of tests passed, in [0, 1]; 0 when the code did not compile or timed out."""
        return self.passed / self.total if self.total else float(self.compiled)

    def as_dict(self) -> dict:
        return {**asdict(self), "score": self.score}


def run_tests(code: str, tests: list[str], timeout: float = 2.0) -> ExecResult:
    """Execute `code`, then each test statement; count the passes."""
    job = {"code": code, "tests": tests, "cpu": max(1, int(timeout) + 1)}
    try:
        proc = subprocess.run(
            [sys.executable, "-I", "-S", "-c", _CHILD],
            input=json.dumps(job),
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        return ExecResult(
            compiled=_compiles(code), passed=0, total=len(tests), timed_out=True, error=f"timed out after {timeout}s"
        )
    lines = proc.stdout.strip().splitlines()
    try:
        out = json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError):
        return ExecResult(
            compiled=_compiles(code),
            passed=0,
            total=len(tests),
            error=(proc.stderr.strip().splitlines() or ["the answer crashed the interpreter"])[-1][:200],
        )
    return ExecResult(**out)


# One interpreter runs a whole batch: it forks a child per answer (limits, no network, stdout
# discarded), reads the child's result from a pipe and kills it when the per-answer timeout passes.
# A fork costs about a millisecond where a fresh interpreter costs tens, so a batch scores hundreds
# of answers per second while each answer stays isolated from the others.
_BATCH = (
    _ANSWER
    + r"""
batch = json.loads(sys.stdin.read())
timeout, results = batch["timeout"], []
devnull = os.open(os.devnull, os.O_RDWR)
for job in batch["jobs"]:
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        os.dup2(devnull, 0); os.dup2(devnull, 1); os.dup2(devnull, 2)
        try:
            res = _one(job["code"], job["tests"], max(1, int(timeout) + 1))
        except BaseException as exc:
            res = {"compiled": False, "passed": 0, "total": len(job["tests"]), "error": repr(exc)[:200]}
        os.write(w, json.dumps(res).encode())
        os._exit(0)
    os.close(w)
    data, deadline, timed_out = b"", time.monotonic() + timeout, False
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            timed_out = True
            break
        ready, _, _ = select.select([r], [], [], left)
        if not ready:
            continue
        chunk = os.read(r, 65536)
        if not chunk:
            break
        data += chunk
    os.close(r)
    if timed_out:
        os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    if timed_out:
        res = {"compiled": _compiles(job["code"]), "passed": 0, "total": len(job["tests"]),
               "timed_out": True, "error": "timed out after %ss" % timeout}
    else:
        try:
            res = json.loads(data)
        except ValueError:
            res = {"compiled": _compiles(job["code"]), "passed": 0, "total": len(job["tests"]),
                   "error": "the answer crashed the interpreter"}
    results.append(res)
sys.stdout.write("\n" + json.dumps(results) + "\n")
"""
)


def _run_batch(jobs: list[tuple[str, list[str]]], timeout: float) -> list[ExecResult]:
    """Score a batch in one interpreter that forks per answer; falls back to run_tests on failure."""
    payload = json.dumps({"timeout": timeout, "jobs": [{"code": c, "tests": t} for c, t in jobs]})
    try:
        proc = subprocess.run(
            [sys.executable, "-I", "-S", "-c", _BATCH],
            input=payload,
            capture_output=True,
            text=True,
            timeout=timeout * len(jobs) + 30,
        )
        results = json.loads(proc.stdout.strip().splitlines()[-1])
        if len(results) == len(jobs):
            return [ExecResult(**res) for res in results]
    except (subprocess.TimeoutExpired, IndexError, json.JSONDecodeError, TypeError):
        pass
    return [run_tests(code, tests, timeout) for code, tests in jobs]


def run_many(
    jobs: list[tuple[str, list[str]]], timeout: float = 2.0, workers: int = 2, batch_size: int = 64
) -> list[ExecResult]:
    """run_tests over many (code, tests) pairs; results in order.

    Each answer runs in its own forked process with the same limits as run_tests; batches of
    `batch_size` answers share one interpreter, `workers` batches run at a time. Where fork is
    not available (Windows) every answer gets its own interpreter.
    """
    jobs = list(jobs)
    if not jobs:
        return []
    if not hasattr(os, "fork"):
        with ThreadPoolExecutor(max_workers=workers) as pool:
            return list(pool.map(lambda job: run_tests(job[0], job[1], timeout), jobs))
    size = max(1, min(batch_size, -(-len(jobs) // workers)))
    batches = [jobs[i : i + size] for i in range(0, len(jobs), size)]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return [res for batch in pool.map(lambda b: _run_batch(b, timeout), batches) for res in batch]


def _compiles(code: str) -> bool:
    try:
        compile(code, "<answer>", "exec")
        return True
    except (SyntaxError, ValueError):
        return False
