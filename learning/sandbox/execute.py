"""Run untrusted Python (an agent's answer, a model's output) against tests, in jails, with the
verdict decided where the answer cannot reach it.

An answer and its tests run in two bubblewrap jails (learning/sandbox/jail.py: no network, no
files of the machine, no environment, a pid namespace each): the answer's process
(learning/sandbox/answers.py) runs its code and answers calls; the tests' process
(learning/sandbox/verdicts.py) runs the tests, reaches the answer's functions only through
calls whose arguments and return values cross as plain data (learning/sandbox/wire.py), compares
the values itself and reports the verdict on a pipe the answer never holds. A supervisor in each
jail forks one process per answer with CPU, memory, process-count and file-size limits, kills it
at the timeout, and kills whatever else it left in its jail. Two jails score a whole batch; two
forks per answer cost about a millisecond each where a jail and an interpreter cost tens.

A test that must send the answer something that cannot cross (a function or an object of its
own) is run again, alone, in the in-process mode (learning/sandbox/inprocess.py: the answer and
the test in one interpreter, as learnloop ran every test before), and its result says so:
`modes` names how each test was decided, `isolation` sums them up.

Where bubblewrap is missing, execution is refused (SandboxUnavailable says what to install)
unless the user chose the weaker mode with LEARNLOOP_SANDBOX=none: the same programs in plain
child interpreters, no jail. Every result records the mode.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field

from learning.errors import InvalidInput
from learning.sandbox.jail import SandboxUnavailable
from learning.sandbox.launch import supervise

__all__ = ["ExecResult", "Limits", "SandboxUnavailable", "run_many", "run_tests", "sandbox_mode"]

SANDBOX_ENV = "LEARNLOOP_SANDBOX"
MODES = ("bwrap", "none")
ISOLATED, IN_PROCESS = "isolated", "in-process"  # how a test was decided
MESSAGE = 200  # characters kept of an error message


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
    modes: list[str] = field(default_factory=list)  # per test: "isolated" or "in-process"

    @property
    def isolation(self) -> str:
        """How the verdict was decided: "isolated" (every test in its own process, apart from
        the answer), "in-process" (every test in the answer's process), or "mixed"."""
        kinds = set(self.modes) or {ISOLATED}
        return kinds.pop() if len(kinds) == 1 else "mixed"

    @property
    def score(self) -> float:
        """Share of tests passed, in [0, 1]; 0 when the code did not compile or timed out."""
        return self.passed / self.total if self.total else float(self.compiled)

    def as_dict(self) -> dict:
        return {**asdict(self), "score": self.score, "isolation": self.isolation}


def sandbox_mode() -> str:
    """ "bwrap" unless the user set LEARNLOOP_SANDBOX=none."""
    mode = os.environ.get(SANDBOX_ENV, "").strip().lower() or "bwrap"
    if mode not in MODES:
        raise InvalidInput(f"{SANDBOX_ENV}={mode!r} is not a sandbox mode: use 'bwrap' (the default) or 'none'.")
    return mode


def run_tests(
    code: str, tests: list[str], timeout: float = 2.0, setup: str = "", limits: Limits | None = None
) -> ExecResult:
    """Execute `setup`, then `code`, then check each test statement against it; count the passes."""
    return run_many([(code, tests)], timeout=timeout, workers=1, setup=setup, limits=limits)[0]


def run_many(
    jobs: list[tuple[str, list[str]]],
    timeout: float = 2.0,
    workers: int = 2,
    batch_size: int = 64,
    setup: str = "",
    limits: Limits | None = None,
    in_process: bool = False,
) -> list[ExecResult]:
    """run_tests over many (code, tests) pairs; results in order.

    Batches of `batch_size` answers share one pair of jails, each answer and each answer's tests
    in a forked process of their own; `workers` batches run at a time. Tests that cannot run
    apart from the answer run again in the in-process mode, labelled in `modes`; in_process=True
    runs every test that way (the weaker design, kept for comparison). Raises SandboxUnavailable
    where bubblewrap cannot run and LEARNLOOP_SANDBOX=none was not chosen."""
    jobs = [(code, list(tests)) for code, tests in jobs]
    if not jobs:
        return []
    mode, limits = sandbox_mode(), limits or Limits()
    program = "inprocess" if in_process else "verdicts"
    size = max(1, min(batch_size, -(-len(jobs) // max(1, workers))))
    batches = [jobs[i : i + size] for i in range(0, len(jobs), size)]
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    placed = [(b, cpus[i % len(cpus)] if cpus and workers <= len(cpus) else None) for i, b in enumerate(batches)]
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        done = pool.map(lambda bc: _run_batch(program, bc[0], timeout, mode, setup, limits, bc[1]), placed)
        results = [res for batch in done for res in batch]
    if not in_process:
        _decide_in_process(jobs, results, timeout, setup, limits)
    return results


def _decide_in_process(
    jobs: list[tuple[str, list[str]]], results: list[ExecResult], timeout: float, setup: str, limits: Limits
) -> None:
    """Run the tests that needed the in-process mode there, each answer with only those tests,
    and put their outcomes in place."""
    todo = [(i, [t for t, m in enumerate(r.modes) if m == IN_PROCESS]) for i, r in enumerate(results)]
    todo = [(i, which) for i, which in todo if which]
    if not todo:
        return
    again = run_many(
        [(jobs[i][0], [jobs[i][1][t] for t in which]) for i, which in todo],
        timeout=timeout,
        setup=setup,
        limits=limits,
        in_process=True,
    )
    for (i, which), res in zip(todo, again):
        result = results[i]
        for t, error in zip(which, res.errors):
            result.errors[t] = error
        result.passed = sum(e is None for e in result.errors)
        result.error = result.error or next((e for e in result.errors if e is not None), None)
        result.timed_out = result.timed_out or res.timed_out


def _run_batch(
    program: str,
    jobs: list[tuple[str, list[str]]],
    timeout: float,
    mode: str,
    setup: str,
    limits: Limits,
    cpu: int | None,
) -> list[ExecResult]:
    """Score a batch; where an answer stops or kills a supervisor, it alone is blamed and the
    rest of the batch goes on in fresh jails."""
    results: list[ExecResult] = []
    marks = IN_PROCESS if program == "inprocess" else ISOLATED
    rlimits = {**asdict(limits), "cpu_s": max(1, int(timeout) + 1)}
    while len(results) < len(jobs):
        rest = [{"code": code, "setup": setup, "tests": tests} for code, tests in jobs[len(results) :]]
        got, why, blamed = supervise(program, rest, timeout, mode, rlimits, limits.tmp_mb, cpu)
        for res, (code, tests) in zip(got, jobs[len(results) :]):
            results.append(_result(res, code, tests, mode, marks))
        if len(results) < len(jobs) and not (blamed and got):  # always a step forward
            code, tests = jobs[len(results)]
            results.append(
                _failed(code, tests, why if why != "stopped" else "killed: the sandbox stopped", mode, marks)
            )
    return results


def _result(res: dict, code: str, tests: list[str], mode: str, marks: str) -> ExecResult:
    """A supervisor's report as a result, each field checked: nothing else is taken from it."""
    n = len(tests)
    errors = res.get("errors")
    if not isinstance(errors, list) or len(errors) != n or not all(e is None or isinstance(e, str) for e in errors):
        return _failed(code, tests, "killed: the answer broke its sandbox's report", mode, marks)
    modes = res.get("modes")
    if not isinstance(modes, list) or len(modes) != n or not set(modes) <= {ISOLATED, IN_PROCESS}:
        modes = [marks] * n
    compiled = res.get("compiled")
    error = res.get("error")
    return ExecResult(
        compiled=compiled if isinstance(compiled, bool) else _compiles(code),  # None: killed before it said
        passed=sum(e is None for e in errors),
        total=n,
        timed_out=res.get("timed_out") is True,
        error=error[:MESSAGE] if isinstance(error, str) else None,
        errors=[e if e is None else e[:MESSAGE] for e in errors],
        duration_s=float(res["duration_s"]) if isinstance(res.get("duration_s"), (int, float)) else 0.0,
        sandbox=mode,
        modes=modes,
    )


def _failed(code: str, tests: list[str], why: str, mode: str, marks: str) -> ExecResult:
    return ExecResult(
        compiled=_compiles(code),
        passed=0,
        total=len(tests),
        timed_out=why.startswith("timed out"),
        error=why,
        errors=[why] * len(tests),
        sandbox=mode,
        modes=[marks] * len(tests),
    )


def _compiles(code: str) -> bool:
    try:
        compile(code, "<answer>", "exec")
        return True
    except Exception:  # SyntaxError, and RecursionError or MemoryError for code nested too deep
        return False
