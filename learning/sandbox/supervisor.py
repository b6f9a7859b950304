"""The batch supervisor: the program that runs inside the sandbox (`python -I -S -c <this file>`).

It imports nothing of learnloop (inside the jail nothing of it is visible). It reads one batch
as JSON on stdin: {"timeout", "jailed", "limits", "jobs": [{"code", "setup", "tests"}]}, prints
a "ready" line, then for each answer forks a child that starts its own session (so the answer
and everything it forks form one process group), sets the answer's limits, runs the setup, the
code and each test, and writes its result to a pipe. The supervisor prints one JSON line per
answer as soon as it has it. When the timeout passes it kills the answer's process group; in the
jail it then kills every other process of the jail's pid namespace too (a double-forked
`setsid` grandchild included), and counts the jail's processes while an answer runs, so a fork
bomb is stopped at the process limit even where RLIMIT_NPROC does not apply (for root).
Between answers the jail's /tmp is emptied, so one answer leaves nothing for the next.
"""

import json
import os
import resource
import select
import shutil
import signal
import sys
import time

MESSAGE = 200  # characters kept of an error message
POLL = 0.005  # seconds between process counts in the jail
RESULT_BYTES = 4 << 20  # the most a child may write as its result


def _why(exc):
    return (type(exc).__name__ + ": " + str(exc))[:MESSAGE]


def _no_network(*args, **kwargs):
    raise OSError("network access is disabled in the learnloop sandbox")


def _limit(limits, jailed):
    mb = 1 << 20
    resource.setrlimit(resource.RLIMIT_AS, (limits["memory_mb"] * mb, limits["memory_mb"] * mb))
    resource.setrlimit(resource.RLIMIT_CPU, (limits["cpu_s"], limits["cpu_s"]))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if jailed:
        # Outside the jail these would count (or cap) every process and file of the user.
        resource.setrlimit(resource.RLIMIT_FSIZE, (limits["file_mb"] * mb, limits["file_mb"] * mb))
        resource.setrlimit(resource.RLIMIT_NPROC, (limits["processes"], limits["processes"]))
    else:
        import socket  # the previous executor's only network guard: socket.socket replaced

        socket.socket = _no_network
        socket.create_connection = _no_network
        socket.getaddrinfo = _no_network


def answer(job, limits, jailed):
    """In the child: run setup, code and tests; the result as a dict."""
    tests = job["tests"]
    out = {"compiled": False, "passed": 0, "total": len(tests), "error": None, "errors": []}
    _limit(limits, jailed)
    try:
        compiled = compile(job["code"], "<answer>", "exec")
        out["compiled"] = True
    except BaseException as exc:
        out["error"] = _why(exc)
    env = {"__name__": "__answer__"}
    if out["error"] is None:
        try:
            if job.get("setup"):
                exec(compile(job["setup"], "<setup>", "exec"), env)
        except BaseException as exc:
            out["error"] = "setup: " + _why(exc)
    if out["error"] is None:
        try:
            exec(compiled, env)
        except BaseException as exc:
            out["error"] = _why(exc)
    if out["error"] is not None:
        out["errors"] = ["not run: " + out["error"]] * len(tests)
        return out
    for test in tests:
        try:
            exec(test, dict(env))
            out["passed"] += 1
            out["errors"].append(None)
        except BaseException as exc:
            out["errors"].append(_why(exc))
            if out["error"] is None:
                out["error"] = out["errors"][-1]
    return out


def _processes():
    return sum(name.isdigit() for name in os.listdir("/proc"))


def _kill_the_rest(keep):
    """In the jail's pid namespace: SIGKILL every process but the jail's init and this one.

    kill(-1) walks the task list under a lock that fork also takes, so nothing forks past it."""
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline:
        try:
            os.kill(-1, signal.SIGKILL)
        except ProcessLookupError:
            pass
        if _processes() <= keep:  # the jail's init, this supervisor (and the answer, reaped next)
            return
        time.sleep(0.001)


def _wait_for(pid, r, timeout, limits, jailed):
    """Read the child's result from the pipe; (bytes, why it was stopped or None)."""
    data, deadline = b"", time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return data, f"timed out after {timeout}s"
        ready, _, _ = select.select([r], [], [], min(left, POLL) if jailed else left)
        if jailed and _processes() > limits["processes"] + 2:
            return data, f"killed: more than {limits['processes']} processes (a fork bomb?)"
        if ready:
            chunk = os.read(r, 65536)
            if not chunk:
                return data, None
            data += chunk
            if len(data) > RESULT_BYTES:
                return b"", "killed: the answer wrote too much to its result pipe"


def _status_reason(status):
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        name = signal.Signals(sig).name if sig in signal.Signals._value2member_map_ else str(sig)
        if sig == signal.SIGXCPU:
            return f"killed: CPU time limit ({name})"
        return f"killed by {name}"
    return f"the answer ended its process (exit status {os.WEXITSTATUS(status)}) before its tests ran"


def _result(job, data, stopped, status):
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
            stopped = _status_reason(status)
    return {**blank, "timed_out": stopped.startswith("timed out"), "error": stopped, "errors": [stopped] * n}


def _reaped(pid, wait_s):
    """The child's exit status if it ends within wait_s, else None."""
    deadline = time.monotonic() + wait_s
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return status
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.001)


def run_one(job, timeout, limits, jailed, devnull, workdir):
    started = time.monotonic()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            os.setsid()
            os.dup2(devnull, 0)
            os.dup2(devnull, 1)
            os.dup2(devnull, 2)
            os.chdir(workdir)
            res = answer(job, limits, jailed)
        except BaseException as exc:
            res = {"compiled": False, "error": _why(exc), "errors": []}
        try:
            os.write(w, json.dumps(res).encode())
        finally:
            os._exit(0)
    os.close(w)
    data, stopped = _wait_for(pid, r, timeout, limits, jailed)
    os.close(r)
    status = _reaped(pid, 0.1 if stopped is None else 0)
    try:
        os.killpg(pid, signal.SIGKILL)  # the answer's group: whatever it forked and left running
    except (ProcessLookupError, PermissionError):
        pass
    if jailed:
        _kill_the_rest(keep=2 if status is not None else 3)
    if status is None:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        status = os.waitpid(pid, 0)[1]
        if stopped is None and not data:
            stopped = "killed: the answer closed its result pipe"
    res = _result(job, data, stopped, status)
    res["duration_s"] = round(time.monotonic() - started, 4)
    return res


def _empty(folder):
    for name in os.listdir(folder):
        path = os.path.join(folder, name)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            try:
                os.unlink(path)
            except OSError:
                pass


def main():
    batch = json.loads(sys.stdin.buffer.read())
    jailed, limits, timeout = batch["jailed"], batch["limits"], batch["timeout"]
    if jailed:
        try:  # answers (same user, no capabilities) cannot open this process's pipes or memory
            import ctypes

            ctypes.CDLL(None).prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE, 0
        except Exception:
            pass
    else:
        import socket  # noqa: F401  (imported once here rather than in every child)
    devnull = os.open(os.devnull, os.O_RDWR)
    scratch = batch.get("scratch") or "/tmp"
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    for job in batch["jobs"]:
        workdir = os.path.join(scratch, "answer")
        os.makedirs(workdir, exist_ok=True)
        res = run_one(job, timeout, limits, jailed, devnull, workdir)
        _empty(scratch)
        sys.stdout.write(json.dumps(res) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
