"""The tests' jail: runs each answer's tests in a process of its own and decides the verdict.

The program learning/sandbox/execute.py runs in the second of a batch's two jails. For each
answer it makes a socket pair, hands one end to the answers' jail (learning/sandbox/answers.py)
over the control socket, and forks the tests' process with the other. That process runs the
tests against the names the answer defined: plain data arrives as values of this interpreter, and
anything else as a `Remote` handle whose calls cross the socket as plain data
(learning/sandbox/wire.py). Comparisons are decided here, never by the answer: a handle equals
only itself, so an object with a forged `__eq__` compares unequal to every expected value, and
`x in handle` iterates the answer's values and compares them here. The verdict goes to this
supervisor on a pipe the answer never holds, in a jail the answer cannot see.

A test that needs to send the answer something that cannot cross (a function or an object of the
test's own) stops with CannotCross; it is reported as needing the in-process mode, which
execute.py runs for that test alone and labels (learning/sandbox/inprocess.py).
"""

import builtins
import json
import os
import select
import socket
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the jail's program is these modules' sources joined: no imports there
    from learning.sandbox.jailside import (
        MESSAGE,
        end_child,
        fresh,
        into_child,
        read_batch,
        say,
        set_limits,
        undumpable,
        why,
    )
    from learning.sandbox.remote import LINK, raises, remote
    from learning.sandbox.wire import CannotCross, Channel, Late, WireError, decode

TESTS_GRACE_S = 0.5  # beyond the timeout, the most the tests' process may take to report
END_S = 3.0  # the most the answers' supervisor may take to end an answer
COMPILED = {}  # test source -> code object (or the SyntaxError), filled before the tests' process forks


def compiled_test(test):
    code = COMPILED.get(test)
    if code is None:
        try:
            code = COMPILED[test] = compile(test, "<test>", "exec")
        except (SyntaxError, ValueError) as exc:
            code = COMPILED[test] = exc
    if isinstance(code, BaseException):
        raise code
    return code


# Names a test may use without meaning the answer's: an answer that redefines one (`def abs(x):
# return 0`) would decide the tests that use it, so those tests fail, saying why.
HELPERS = frozenset(dir(builtins)) | {"raises"}


def names_used(code):
    """Every name a test's code (and the code nested in it) reads or writes."""
    names = set(code.co_names) | set(code.co_varnames)
    for const in code.co_consts:
        if hasattr(const, "co_names"):
            names |= names_used(const)
    return names


def first_message(job):
    """Send the answer its code; its first reply: (compiled, error, names), or a verdict."""
    channel = LINK["channel"]
    try:
        channel.send({"code": job["code"], "setup": job["setup"]})
        ready = channel.receive(LINK["deadline"])
        compiled, error, names = ready["compiled"], ready["error"], ready["names"]
        if type(compiled) is not bool or not (error is None or type(error) is str) or type(names) is not dict:
            raise KeyError
    except Late:
        return {"timed_out": True}
    except OSError:
        return {"gone": True, "error": "the answer's process ended"}
    except WireError as exc:
        return {"gone": exc.ended, "error": str(exc)[:MESSAGE]}
    except KeyError:
        return {"gone": False, "error": "the answer broke the protocol (a malformed first message)"}
    return compiled, error, names


def not_run(compiled, error, n):
    """The verdict when the answer's code or setup failed before any test could run."""
    return {"compiled": compiled, "error": error, "errors": ["not run: " + error] * n, "modes": ["isolated"] * n}


def judge(job, fd, limits, jailed, timeout, started):
    """In the tests' process: the verdict on one answer, as a dict."""
    set_limits(limits, jailed)
    LINK.update(channel=Channel(fd), deadline=started + timeout)
    tests = job["tests"]
    n = len(tests)
    first = first_message(job)
    if isinstance(first, dict):
        return first
    compiled, error, names = first
    if error is not None:
        error = error[:MESSAGE]
        return not_run(compiled, error, n)
    env = {"__builtins__": builtins, "raises": raises}
    try:
        crossed = {k: decode(v, remote) for k, v in names.items() if k.isidentifier() and not k.startswith("__")}
    except WireError as exc:
        return {"gone": False, "error": str(exc)[:MESSAGE]}
    env.update(crossed)
    shadowing = HELPERS.intersection(crossed)
    if job.get("setup"):
        try:
            exec(compile(job["setup"], "<setup>", "exec"), env)
        except BaseException as exc:
            error = "setup: " + why(exc)
            return not_run(True, error, n)
    errors, modes, gone = [], [], False
    for test in tests:
        mode = "isolated"
        try:
            code = compiled_test(test)
            redefined = shadowing & names_used(code) if shadowing else set()  # names_used only when needed
            if redefined:
                raise AssertionError(
                    f"the answer redefines {', '.join(sorted(redefined))}, which this test uses: "
                    "the answer would decide it (give the task's names other than Python's builtins)"
                )
            exec(code, dict(env))
            errors.append(None)
        except Late:
            return {"timed_out": True}
        except CannotCross as exc:
            mode = "in-process"
            errors.append("needs the in-process mode: " + str(exc)[:MESSAGE])
        except WireError as exc:
            gone = gone or exc.ended
            errors.append(str(exc)[:MESSAGE])
        except BaseException as exc:
            errors.append(why(exc))
        modes.append(mode)
    first_error = next((e for e, m in zip(errors, modes) if e is not None and m == "isolated"), None)
    return {"compiled": True, "error": first_error, "errors": errors, "modes": modes, "gone": gone}


def read_verdict(r, deadline):
    data = b""
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        if not select_read(r, left):
            continue
        chunk = os.read(r, 1 << 16)
        if not chunk:
            return data
        data += chunk


def select_read(fd, wait_s):
    return select.select([fd], [], [], wait_s)[0]


def judge_one(index, job, ctrl, batch, devnull, workdir):
    """Hand the answer's end of a fresh socket to the answers' jail, fork the tests' process,
    collect its verdict, then have the answer ended. (result, stop): stop when the answers'
    supervisor no longer answers, or could not clean up after the answer, and the rest must go
    on in fresh jails."""
    jailed, limits, timeout = batch["jailed"], batch["limits"], batch["timeout"]
    n = len(job["tests"])
    started = time.monotonic()
    mine, theirs = socket.socketpair()
    try:
        socket.send_fds(ctrl, [json.dumps({"start": index}).encode()], [theirs.fileno()])
    except OSError:
        return failed(n, "killed: the answer ended its sandbox's supervisor"), True
    finally:
        theirs.close()
    for test in job["tests"]:  # compiled once per batch, here, not in every tests' process
        try:
            compiled_test(test)
        except (SyntaxError, ValueError):
            pass
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            into_child(devnull, workdir, keep=(mine.fileno(), w))
            res = judge(job, mine.fileno(), limits, jailed, timeout, started)
            os.write(w, json.dumps(res).encode())
        finally:
            os._exit(0)
    mine.close()
    os.close(w)
    data = read_verdict(r, started + timeout + TESTS_GRACE_S)
    os.close(r)
    try:
        verdict = json.loads(data) if data else {"timed_out": True}
    except ValueError:
        verdict = {"gone": True, "error": "the tests' process broke its report"}
    asked = ask_end(ctrl, index, bool(verdict.get("gone")))  # the answer's end and the tests', side by side
    end_child(pid, jailed)
    ended = answer_ended(ctrl) if asked else None
    if ended is None:
        return failed(n, "killed: the answer ended its sandbox's supervisor"), True
    if ended is False:
        return failed(n, f"killed: the answer stopped its supervisor (not ended within {END_S:.0f}s)"), True
    return merge(verdict, ended, n, timeout), bool(ended.get("dirty"))


def ask_end(ctrl, index, gone):
    """Ask the answers' supervisor to end the answer (`gone`: its tests saw it end); False when
    that supervisor is gone."""
    try:
        ctrl.sendall(json.dumps({"end": index, "gone": gone}).encode())
        return True
    except OSError:
        return False


def answer_ended(ctrl):
    """The answers' supervisor's report on the answer it ended; None when it is gone, False
    when it does not reply in time."""
    try:
        if not select_read(ctrl.fileno(), END_S):
            return False
        data = ctrl.recv(1 << 16)
        return json.loads(data) if data else None
    except (OSError, ValueError):
        return None


def failed(n, reason, timed_out=False):
    return {"compiled": None, "passed": 0, "total": n, "timed_out": timed_out, "error": reason, "errors": [reason] * n}


def merge(verdict, ended, n, timeout):
    """The answer's result from the tests' verdict and what its supervisor saw of its process."""
    stopped = ended.get("why")
    if stopped:
        return failed(n, stopped)
    if verdict.get("timed_out"):
        return failed(n, f"timed out after {timeout}s", timed_out=True)
    status = ended.get("status") if verdict.get("gone") else None
    if "errors" not in verdict:
        return failed(n, status or verdict.get("error") or "the answer's process ended")
    errors = list(verdict["errors"])
    if status:  # the process ended during the tests: say how
        status = status.replace("before its tests ran", "during its tests")
        errors = [status if e and "process ended" in e else e for e in errors]
    modes = verdict.get("modes") or ["isolated"] * n
    error = verdict.get("error") if not status else None
    if error is None:
        error = next((e for e, m in zip(errors, modes) if e and m == "isolated"), None)
    passed = sum(e is None for e in errors)
    return {
        "compiled": verdict["compiled"],
        "passed": passed,
        "total": n,
        "timed_out": False,
        "error": error,
        "errors": errors,
        "modes": modes,
    }


def main():
    batch = read_batch()
    if batch["jailed"]:
        undumpable()
    ctrl = socket.socket(fileno=batch["ctrl"])
    devnull = os.open(os.devnull, os.O_RDWR)
    scratch = batch.get("scratch") or "/tmp"
    workdir = fresh(scratch, "tests")
    say("ready")
    for index, job in enumerate(batch["jobs"]):
        started = time.monotonic()
        res, stop = judge_one(index, job, ctrl, batch, devnull, workdir)
        res["duration_s"] = round(time.monotonic() - started, 4)
        say(res)
        workdir = fresh(scratch, "tests")
        if stop or workdir is None:  # the rest go on in fresh jails
            say("stopped")
            return
