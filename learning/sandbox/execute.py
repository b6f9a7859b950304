"""Run untrusted Python (an agent's answer, a model's output) against tests, in a jail.

Every execution runs inside a bubblewrap jail (learning/sandbox/jail.py: no network, no files
of the machine, no environment, its own pid namespace) under a supervisor
(learning/sandbox/supervisor.py) that forks one child per answer with CPU, memory,
process-count and file-size limits, kills the answer's process group at the timeout, and kills
whatever else the answer left in the jail. One jail scores a whole batch; a fork per answer
costs about a millisecond where a jail and an interpreter cost tens.

Where bubblewrap is missing, execution is refused (SandboxUnavailable says what to install)
unless the user chose the weaker mode with LEARNLOOP_SANDBOX=none: the same supervisor in a plain
child interpreter, as learnloop ran answers before it had a jail. Every result records the mode.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import psutil

from learning.errors import InvalidInput
from learning.sandbox.jail import INSTALL_HINT, SandboxUnavailable, jail_command, plain_command

__all__ = ["ExecResult", "Limits", "SandboxUnavailable", "run_many", "run_tests", "sandbox_mode"]

SANDBOX_ENV = "LEARNLOOP_SANDBOX"
MODES = ("bwrap", "none")
SUPERVISOR = (Path(__file__).with_name("supervisor.py")).read_text(encoding="utf-8")
START_S = 30.0  # the most a jail may take to start and read its batch
GRACE_S = 5.0  # beyond the timeout, the most the supervisor may take to report an answer


@dataclass(frozen=True)
class Limits:
    """What one answer may use inside the jail."""

    memory_mb: int = 1024  # address space (RLIMIT_AS)
    processes: int = 64  # processes in the jail (RLIMIT_NPROC, and counted by the supervisor)
    file_mb: int = 16  # largest file it may write (RLIMIT_FSIZE)
    tmp_mb: int = 64  # the jail's /tmp, all files together


@dataclass
class ExecResult:
    compiled: bool
    passed: int
    total: int
    timed_out: bool = False
    error: str | None = None  # the first error (the answer's own, or the first failing test's)
    errors: list[str | None] = field(default_factory=list)  # one per test: None for a pass
    duration_s: float = 0.0
    sandbox: str = "bwrap"  # "bwrap" (jailed) or "none" (the weaker mode the user chose)

    @property
    def score(self) -> float:
        """Share of tests passed, in [0, 1]; 0 when the code did not compile or timed out."""
        return self.passed / self.total if self.total else float(self.compiled)

    def as_dict(self) -> dict:
        return {**asdict(self), "score": self.score}


def sandbox_mode() -> str:
    """ "bwrap" unless the user set LEARNLOOP_SANDBOX=none."""
    mode = os.environ.get(SANDBOX_ENV, "").strip().lower() or "bwrap"
    if mode not in MODES:
        raise InvalidInput(f"{SANDBOX_ENV}={mode!r} is not a sandbox mode: use 'bwrap' (the default) or 'none'.")
    return mode


def run_tests(
    code: str, tests: list[str], timeout: float = 2.0, setup: str = "", limits: Limits | None = None
) -> ExecResult:
    """Execute `setup`, then `code`, then each test statement; count the passes."""
    return run_many([(code, tests)], timeout=timeout, workers=1, setup=setup, limits=limits)[0]


def run_many(
    jobs: list[tuple[str, list[str]]],
    timeout: float = 2.0,
    workers: int = 2,
    batch_size: int = 64,
    setup: str = "",
    limits: Limits | None = None,
) -> list[ExecResult]:
    """run_tests over many (code, tests) pairs; results in order.

    Batches of `batch_size` answers share one jail (one supervisor interpreter), each answer in
    its own forked child; `workers` batches run at a time. Raises SandboxUnavailable where
    bubblewrap cannot run and LEARNLOOP_SANDBOX=none was not chosen."""
    jobs = [(code, list(tests)) for code, tests in jobs]
    if not jobs:
        return []
    mode, limits = sandbox_mode(), limits or Limits()
    size = max(1, min(batch_size, -(-len(jobs) // max(1, workers))))
    batches = [jobs[i : i + size] for i in range(0, len(jobs), size)]
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        done = pool.map(lambda b: _run_batch(b, timeout, mode, setup, limits), batches)
        return [res for batch in done for res in batch]


def _run_batch(
    jobs: list[tuple[str, list[str]]], timeout: float, mode: str, setup: str, limits: Limits
) -> list[ExecResult]:
    """Score a batch; where an answer stops or kills its supervisor, it alone is blamed and the
    rest of the batch goes on in a fresh jail."""
    results: list[ExecResult] = []
    while len(results) < len(jobs):
        got, why = _supervise(jobs[len(results) :], timeout, mode, setup, limits)
        results += got
        if len(results) < len(jobs):
            code, tests = jobs[len(results)]
            results.append(_failed(code, tests, why, mode))
    return results


def _failed(code: str, tests: list[str], why: str, mode: str) -> ExecResult:
    return ExecResult(
        compiled=_compiles(code),
        passed=0,
        total=len(tests),
        timed_out=why.startswith("timed out"),
        error=why,
        errors=[why] * len(tests),
        sandbox=mode,
    )


def _supervise(
    jobs: list[tuple[str, list[str]]], timeout: float, mode: str, setup: str, limits: Limits
) -> tuple[list[ExecResult], str]:
    """Run one supervisor over `jobs`; the results it reported and, if it stopped early, why."""
    scratch = tempfile.mkdtemp(prefix="learnloop-answers-") if mode == "none" else None
    batch = {
        "timeout": timeout,
        "jailed": mode == "bwrap",
        "scratch": scratch,
        "limits": {**asdict(limits), "cpu_s": max(1, int(timeout) + 1)},
        "jobs": [{"code": code, "setup": setup, "tests": tests} for code, tests in jobs],
    }
    command = (jail_command(limits.tmp_mb) if mode == "bwrap" else plain_command()) + [SUPERVISOR]
    # bwrap itself gets no environment either: the jail's init is a copy of it, and its
    # /proc/1/environ would show the server's variables to the code inside.
    env = {} if mode == "bwrap" else None
    errlog = tempfile.TemporaryFile()
    try:
        proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=errlog, env=env)
    except OSError as exc:
        raise SandboxUnavailable(f"The sandbox could not start ({exc}). {INSTALL_HINT}") from exc
    results, why = [], "not read"
    try:
        results, why = _read_results(proc, batch, errlog, timeout, mode)
        return results, why
    finally:
        _end(proc, finished=not why)
        errlog.close()
        if scratch:
            shutil.rmtree(scratch, ignore_errors=True)


def _end(proc: subprocess.Popen, finished: bool) -> None:
    """Let a supervisor that reported every answer end by itself, else kill it; return only
    once every process under it is gone."""
    if finished:
        try:
            proc.wait(timeout=GRACE_S)
            return
        except subprocess.TimeoutExpired:
            pass
    try:
        under = psutil.Process(proc.pid).children(recursive=True)
    except psutil.Error:
        under = []
    proc.kill()  # the jail's init dies with bwrap, and every process in the jail with it
    for child in under:
        with contextlib.suppress(psutil.Error):
            child.kill()
    proc.wait()
    psutil.wait_procs(under, timeout=5)


def _read_results(
    proc: subprocess.Popen, batch: dict, errlog, timeout: float, mode: str
) -> tuple[list[ExecResult], str]:
    assert proc.stdin is not None and proc.stdout is not None
    try:
        proc.stdin.write(json.dumps(batch).encode())
        proc.stdin.close()
    except OSError:
        pass  # it ended early; what it said on stderr tells why
    lines = _Lines(proc.stdout.fileno())
    if lines.next(START_S) != b"ready":
        proc.kill()
        proc.wait()
        errlog.seek(0)
        said = errlog.read().decode(errors="replace").strip()[-500:]
        raise SandboxUnavailable(f"The sandbox did not start: {said or 'no message'}. {INSTALL_HINT}")
    results: list[ExecResult] = []
    jobs = batch["jobs"]
    while len(results) < len(jobs):
        line = lines.next(timeout + GRACE_S)
        if line is None and lines.eof:
            return results, "killed: the answer ended its sandbox's supervisor"
        if line is None:
            return results, f"killed: the answer stopped its supervisor (no result within {timeout + GRACE_S:.0f}s)"
        try:
            res = json.loads(line)
            if res["compiled"] is None:  # killed before it said: compile it here
                res["compiled"] = _compiles(jobs[len(results)]["code"])
            results.append(ExecResult(**{**res, "sandbox": mode}))
        except (ValueError, TypeError, KeyError):
            return results, "killed: the answer broke its sandbox's report"
    return results, ""


class _Lines:
    """Lines from a pipe, each awaited at most a given time."""

    def __init__(self, fd: int):
        self.fd, self.buf, self.eof = fd, b"", False

    def next(self, wait_s: float) -> bytes | None:
        deadline = time.monotonic() + wait_s
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            if self.eof or left <= 0:
                return None
            ready, _, _ = select.select([self.fd], [], [], left)
            if ready:
                chunk = os.read(self.fd, 1 << 16)
                self.eof = not chunk
                self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return line


def _compiles(code: str) -> bool:
    try:
        compile(code, "<answer>", "exec")
        return True
    except (SyntaxError, ValueError):
        return False
