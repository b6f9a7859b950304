"""Run untrusted Python (an agent's answer) against tests, in a subprocess.

Each call starts a fresh isolated interpreter (`python -I -S`) with a wall-clock timeout,
CPU and memory limits, and sockets disabled before the answer runs, so code under test
cannot reach the network, hang the caller or exhaust memory. Each test is one Python
statement (usually an assert); the result counts how many passed.
"""

from __future__ import annotations

import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass

# The child reads {"code", "tests"} as JSON on stdin and prints one JSON line.
_CHILD = r"""
import json, sys, resource, socket
resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))
resource.setrlimit(resource.RLIMIT_CPU, (%(cpu)d, %(cpu)d))
def _no_network(*a, **k):
    raise OSError("network access is disabled in the learnloop sandbox")
socket.socket = _no_network
socket.create_connection = _no_network
socket.getaddrinfo = _no_network
job = json.loads(sys.stdin.read())
out = {"compiled": False, "passed": 0, "total": len(job["tests"]), "error": None}
try:
    compiled = compile(job["code"], "<answer>", "exec")
    out["compiled"] = True
    env = {"__name__": "__answer__"}
    exec(compiled, env)
except BaseException as exc:
    out["error"] = type(exc).__name__ + ": " + str(exc)[:200]
else:
    for test in job["tests"]:
        try:
            exec(test, dict(env))
            out["passed"] += 1
        except BaseException as exc:
            if out["error"] is None:
                out["error"] = type(exc).__name__ + ": " + str(exc)[:200]
sys.stdout.write("\n" + json.dumps(out) + "\n")
"""


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
    child = _CHILD % {"cpu": max(1, int(timeout) + 1)}
    try:
        proc = subprocess.run([sys.executable, "-I", "-S", "-c", child], input=json.dumps({"code": code, "tests": tests}),
                              capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return ExecResult(compiled=_compiles(code), passed=0, total=len(tests), timed_out=True,
                          error=f"timed out after {timeout}s")
    lines = proc.stdout.strip().splitlines()
    try:
        out = json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError):
        return ExecResult(compiled=_compiles(code), passed=0, total=len(tests),
                          error=(proc.stderr.strip().splitlines() or ["the answer crashed the interpreter"])[-1][:200])
    return ExecResult(**out)


def run_many(jobs: list[tuple[str, list[str]]], timeout: float = 2.0, workers: int = 2) -> list[ExecResult]:
    """run_tests over many (code, tests) pairs, a few at a time; results in order."""
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda job: run_tests(job[0], job[1], timeout), jobs))


def _compiles(code: str) -> bool:
    try:
        compile(code, "<answer>", "exec")
        return True
    except (SyntaxError, ValueError):
        return False
