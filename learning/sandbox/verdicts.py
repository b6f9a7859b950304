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
import re
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
    from learning.sandbox.wire import NAME, CannotCross, Channel, Late, WireError, decode, encode

TESTS_GRACE_S = 0.5  # beyond the timeout, the most the tests' process may take to report
END_S = 3.0  # the most the answers' supervisor may take to end an answer
LINK = {}  # in the tests' process: the channel to the answer and the deadline


class Remote:
    """An object of the answer, seen from the tests: calls and attribute reads cross the socket;
    equality, hashing and membership are decided here."""

    __slots__ = ("_ref", "_kind")

    def __init__(self, ref, kind):
        object.__setattr__(self, "_ref", ref)
        object.__setattr__(self, "_kind", kind)

    def __call__(self, *args, **kwargs):
        return ask("call", self, args, kwargs)

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return ask("getattr", self, (name,))

    def __setattr__(self, name, value):
        ask("setattr", self, (name, value))

    def __getitem__(self, key):
        return ask("getitem", self, (key,))

    def __setitem__(self, key, value):
        ask("setitem", self, (key, value))

    def __delitem__(self, key):
        ask("delitem", self, (key,))

    def __len__(self):
        return expect(int, ask("len", self), "len()")

    def __bool__(self):
        return expect(bool, ask("bool", self), "bool()")

    def __str__(self):
        return expect(str, ask("str", self), "str()")

    def __repr__(self):
        return expect(str, ask("repr", self), "repr()")

    def __iter__(self):
        iterator = ask("iter", self)
        while True:
            try:
                yield ask("next", iterator) if type(iterator) is Remote else next(iter(iterator))
            except StopIteration:
                return

    def __contains__(self, item):
        return any(value is item or value == item for value in self)

    def __eq__(self, other):
        return other is self

    def __ne__(self, other):
        return other is not self

    def __hash__(self):
        return hash((Remote, self._ref))

    def __instancecheck__(self, obj):
        return expect(bool, ask("isinstance", self, (obj,)), "isinstance()")


def _operator(name, swap=False):
    def method(self, other=None):
        return ask(name, self, () if other is None and name in UNARY else (other,), {"swap": True} if swap else {})

    return method


UNARY = ("neg", "pos", "abs", "invert")
for _name in (
    "add",
    "sub",
    "mul",
    "truediv",
    "floordiv",
    "mod",
    "pow",
    "matmul",
    "and_",
    "or_",
    "xor",
    "lshift",
    "rshift",
):
    _dunder = _name.rstrip("_")
    setattr(Remote, f"__{_dunder}__", _operator(_name))
    setattr(Remote, f"__r{_dunder}__", _operator(_name, swap=True))
for _name in UNARY:
    setattr(Remote, f"__{_name}__", _operator(_name))


def expect(kind, value, what):
    if type(value) is not kind:
        raise TypeError(f"the answer's {what} gave a {type(value).__name__}, not a {kind.__name__}")
    return value


REMOTES = {}  # ref -> Remote: one handle per object of the answer, so `is` works


def remote(inner):
    if type(inner) is not list or len(inner) != 2 or type(inner[0]) is not int or type(inner[1]) is not str:
        raise WireError("a malformed handle")
    found = REMOTES.get(inner[0])
    if found is None:
        found = REMOTES[inner[0]] = Remote(inner[0], inner[1][:NAME])
    return found


def sendable(value):
    if type(value) is Remote:
        return {"h": value._ref}
    raise CannotCross(f"a {type(value).__name__[:NAME]} of the tests cannot be sent to the answer")


CROSSED = {}  # (name, builtin base) -> the class an answer's exception is raised as here


def crossed_exception(names, message):
    """The answer's exception as an exception of this interpreter: its own name, derived from
    the nearest builtin exception class in its hierarchy."""
    if type(names) is not list or not names or not all(type(n) is str for n in names):
        raise WireError("a malformed exception")
    base = Exception
    for name in names:
        found = getattr(builtins, name, None)
        if isinstance(found, type) and issubclass(found, BaseException):
            base = found
            break
    name = names[0][:NAME]
    if base.__name__ != name:
        base = CROSSED.setdefault((name, base), type(name, (base,), {}))
    return base(str(message)[:MESSAGE])


def ask(op, target, args=(), kwargs=None):
    channel, deadline = LINK["channel"], LINK["deadline"]
    if LINK.get("broken"):
        raise WireError(LINK["broken"], ended=LINK.get("ended", False))
    message = {"op": op, "ref": target._ref, "args": encode(list(args), sendable)}
    message["kwargs"] = encode(dict(kwargs or {}), sendable)
    try:
        channel.send(message)
        reply = channel.receive(deadline)
        if "v" in reply:
            return decode(reply["v"], remote)
        if "x" in reply:
            raise crossed_exception(reply["x"], reply.get("m"))
        raise WireError("a reply that is neither a value nor an exception")
    except OSError:
        LINK["broken"], LINK["ended"] = "the answer's process ended", True
        raise WireError(LINK["broken"], ended=True) from None
    except WireError as exc:
        LINK["broken"], LINK["ended"] = str(exc), exc.ended
        raise


class raises:
    """`with raises(ValueError):` in a test: the block must raise one of these classes."""

    def __init__(self, *kinds, match=None):
        self.kinds, self.match, self.value = kinds, match, None

    def __enter__(self):
        return self

    def __exit__(self, kind, exc, tb):
        if kind is None:
            raise AssertionError(f"did not raise {', '.join(getattr(k, '__name__', str(k)) for k in self.kinds)}")
        if issubclass(kind, (CannotCross, WireError, Late)) or not any(self._is(kind, k) for k in self.kinds):
            return False
        if self.match is not None and not re.search(self.match, str(exc)):
            raise AssertionError(f"{str(exc)[:MESSAGE]!r} does not match {self.match!r}")
        self.value = exc
        return True

    @staticmethod
    def _is(kind, expected):
        if type(expected) is Remote:  # the answer's own exception class: matched by name
            return expected._kind == "class:" + kind.__name__
        return issubclass(kind, expected)


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


def judge(job, fd, limits, jailed, timeout, started):
    """In the tests' process: the verdict on one answer, as a dict."""
    set_limits(limits, jailed)
    LINK.update(channel=Channel(fd), deadline=started + timeout)
    tests = job["tests"]
    n = len(tests)
    try:
        ready = LINK["channel"].receive(LINK["deadline"])
        compiled, error, names = ready["compiled"], ready["error"], ready["names"]
        if type(compiled) is not bool or not (error is None or type(error) is str) or type(names) is not dict:
            raise WireError("a malformed first message")
    except Late:
        return {"timed_out": True}
    except WireError as exc:
        return {"gone": exc.ended, "error": str(exc)[:MESSAGE]}
    except KeyError:
        return {"gone": False, "error": "the answer broke the protocol (a malformed first message)"}
    if error is not None:
        error = error[:MESSAGE]
        return {"compiled": compiled, "error": error, "errors": ["not run: " + error] * n, "modes": ["isolated"] * n}
    env = {"raises": raises}
    try:
        env.update({k: decode(v, remote) for k, v in names.items() if k.isidentifier()})
    except WireError as exc:
        return {"gone": True, "error": str(exc)}
    if job.get("setup"):
        try:
            exec(compile(job["setup"], "<setup>", "exec"), env)
        except BaseException as exc:
            error = "setup: " + why(exc)
            return {"compiled": True, "error": error, "errors": ["not run: " + error] * n, "modes": ["isolated"] * n}
    errors, modes, gone = [], [], False
    for test in tests:
        mode = "isolated"
        try:
            exec(compiled_test(test), dict(env))
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
    first = next((e for e, m in zip(errors, modes) if e is not None and m == "isolated"), None)
    return {"compiled": True, "error": first, "errors": errors, "modes": modes, "gone": gone}


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
    supervisor no longer answers and the rest must go on in fresh jails."""
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
    return merge(verdict, ended, n, timeout), False


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
    say("ready")
    for index, job in enumerate(batch["jobs"]):
        workdir = fresh(scratch, "tests")
        started = time.monotonic()
        res, stop = judge_one(index, job, ctrl, batch, devnull, workdir)
        res["duration_s"] = round(time.monotonic() - started, 4)
        say(res)
        if stop:
            say("stopped")
            return
