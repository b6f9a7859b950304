"""The in-process mode: an answer and its tests in one interpreter, for the tests that cannot
run against the answer through the wire (they send it a function or an object of their own).

The answer's code can reach everything in its process, these tests' expected values and its
result pipe included, so a verdict from here is only as good as the answer is honest: results
label each such test "in-process" (learning/sandbox/execute.py runs only those tests here).
The program reads {"timeout", "jailed", "limits", "jobs": [{"code", "setup", "tests"}]} on
stdin, prints "ready", then forks one child per answer and prints one JSON line per answer.
"""

import json
import os
import select
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the jail's program is these modules' sources joined: no imports there
    from learning.sandbox.jailside import (
        MESSAGE,
        POLL,
        count_processes,
        end_child,
        fresh,
        into_child,
        read_batch,
        reaped,
        say,
        set_limits,
        status_reason,
        undumpable,
        why,
    )

RESULT_BYTES = 4 << 20  # the most a child may write as its result


def answer(job, limits, jailed):
    """In the child: run setup, code and tests; the result as a dict. (Not jailside.run_code: the
    code runs in this frame, as it always did in this mode, tests and all.)"""
    tests = job["tests"]
    out = {"compiled": False, "passed": 0, "total": len(tests), "error": None, "errors": []}
    set_limits(limits, jailed)
    try:
        compiled = compile(job["code"], "<answer>", "exec")
        out["compiled"] = True
    except BaseException as exc:
        compiled, out["error"] = None, why(exc)
    env = {"__name__": "__answer__"}
    if out["error"] is None and job.get("setup"):
        try:
            exec(compile(job["setup"], "<setup>", "exec"), env)
        except BaseException as exc:
            out["error"] = "setup: " + why(exc)
    if compiled is not None and out["error"] is None:
        try:
            exec(compiled, env)
        except BaseException as exc:
            out["error"] = why(exc)
    if out["error"] is not None:
        out["errors"] = ["not run: " + out["error"]] * len(tests)
        return out
    for test in tests:
        try:
            exec(test, dict(env))
            out["errors"].append(None)
        except BaseException as exc:
            out["errors"].append(why(exc))
            if out["error"] is None:
                out["error"] = out["errors"][-1]
    return out


def wait_for(r, timeout, limits, jailed):
    """Read the child's result from the pipe; (bytes, why it was stopped or None)."""
    data, deadline = b"", time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return data, f"timed out after {timeout}s"
        ready, _, _ = select.select([r], [], [], min(left, POLL) if jailed else left)
        if jailed and count_processes() > limits["processes"] + 2:
            return data, f"killed: more than {limits['processes']} processes (a fork bomb?)"
        if ready:
            chunk = os.read(r, 65536)
            if not chunk:
                return data, None
            data += chunk
            if len(data) > RESULT_BYTES:
                return b"", "killed: the answer wrote too much to its result pipe"


def result(job, data, stopped, status):
    """The answer's result; never trusts more than the child could honestly say."""
    n = len(job["tests"])
    blank = {"compiled": None, "passed": 0, "total": n, "timed_out": False}
    if stopped is None:
        try:
            res = json.loads(data)
            errors = [None if e is None else str(e)[:MESSAGE] for e in res["errors"]][:n]
            errors += ["not run"] * (n - len(errors))
            passed = sum(e is None for e in errors)
            error = None if res["error"] is None else str(res["error"])[:MESSAGE]
            return {**blank, "compiled": bool(res["compiled"]), "passed": passed, "error": error, "errors": errors}
        except (ValueError, KeyError, TypeError):
            stopped = status_reason(status)
    return {**blank, "timed_out": stopped.startswith("timed out"), "error": stopped, "errors": [stopped] * n}


def run_one(job, timeout, limits, jailed, devnull, workdir):
    started = time.monotonic()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            into_child(devnull, workdir, keep=(w,))
            res = answer(job, limits, jailed)
        except BaseException as exc:
            res = {"compiled": False, "error": why(exc), "errors": []}
        try:
            os.write(w, json.dumps(res).encode())
        finally:
            os._exit(0)
    os.close(w)
    data, stopped = wait_for(r, timeout, limits, jailed)
    os.close(r)
    status = reaped(pid, 0.1 if stopped is None else 0)
    if status is None and stopped is None and not data:
        stopped = "killed: the answer closed its result pipe"
    status = end_child(pid, jailed, status)
    res = result(job, data, stopped, status)
    res["duration_s"] = round(time.monotonic() - started, 4)
    return res


def main():
    batch = read_batch()
    jailed, limits, timeout = batch["jailed"], batch["limits"], batch["timeout"]
    if jailed:
        undumpable()
    devnull = os.open(os.devnull, os.O_RDWR)
    scratch = batch.get("scratch") or "/tmp"
    say("ready")
    for job in batch["jobs"]:
        workdir = fresh(scratch, "answer")
        res = run_one(job, timeout, limits, jailed, devnull, workdir)
        say(res)
