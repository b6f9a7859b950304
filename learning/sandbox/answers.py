"""The answers' jail: runs each answer in a process of its own and serves its tests' calls.

The program learning/sandbox/execute.py runs in the first of a batch's two jails. It holds the
answers' code and setup, never a test: the tests, their expected values and the verdict live in
the other jail (learning/sandbox/verdicts.py), a separate pid namespace the answer cannot see or
signal. For each answer the test jail's supervisor hands over one end of a fresh socket pair (on
the control socket the two supervisors share); this supervisor forks the answer's process, which
runs setup and code, sends the names it defined (plain data as values, anything else as handles,
learning/sandbox/wire.py), then answers calls until the tests close the socket. Whatever the
answer does in its own process (patched builtins, rewritten frames, objects found with gc, exits)
changes only what it replies. When the tests are done, or the answer forks past the process limit,
every process of this jail but its init and this supervisor is killed, and the scratch folder
emptied, before the next answer starts.
"""

import json
import operator
import os
import select
import socket
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the jail's program is these modules' sources joined: no imports there
    from learning.sandbox.jailside import (
        POLL,
        count_processes,
        end_child,
        fresh,
        into_child,
        read_batch,
        reaped,
        run_code,
        say,
        set_limits,
        status_reason,
        undumpable,
    )
    from learning.sandbox.wire import NAME, Channel, WireError, decode, encode, exception_names

BINARY = {"add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "matmul", "and_", "or_", "xor", "lshift", "rshift"}
UNARY = {"neg", "pos", "abs", "invert"}


class Kept:
    """The answer's objects the tests hold handles to, each kept once (same object, same ref)."""

    def __init__(self):
        self.objects, self.refs = [], {}

    def handle(self, value):
        ref = self.refs.get(id(value))
        if ref is None:
            ref = self.refs[id(value)] = len(self.objects)
            self.objects.append(value)
        kind = type(value)
        label = "class:" + str(value.__name__) if isinstance(value, type) else str(kind.__name__)
        return {"h": [ref, label[:NAME]]}

    def out(self, value):
        try:
            return encode(value, self.handle)
        except (RecursionError, ValueError, TypeError):
            return self.handle(value)

    def lookup(self, inner):
        return self.objects[inner if type(inner) is int else inner[0]]


def perform(kept, request):
    """Carry out one call of the tests on the answer's objects; the reply."""
    try:
        target = kept.lookup(request["ref"])
        op, args = request["op"], decode(request["args"], kept.lookup)
        kwargs = decode(request["kwargs"], kept.lookup)
        if op == "call":
            value = target(*args, **kwargs)
        elif op == "getattr":
            value = getattr(target, args[0])
        elif op == "setattr":
            value = setattr(target, args[0], args[1])
        elif op == "getitem":
            value = target[args[0]]
        elif op == "setitem":
            target[args[0]] = args[1]
            value = None
        elif op == "delitem":
            del target[args[0]]
            value = None
        elif op == "len":
            value = len(target)
        elif op == "bool":
            value = bool(target)
        elif op == "iter":
            value = iter(target)
        elif op == "next":
            value = next(target)
        elif op == "str":
            value = str(target)
        elif op == "repr":
            value = repr(target)
        elif op == "isinstance":
            value = isinstance(args[0], target)
        elif op in BINARY:
            fn = getattr(operator, op)
            value = fn(args[0], target) if kwargs.get("swap") else fn(target, args[0])
        elif op in UNARY:
            value = getattr(operator, op)(target)
        else:
            raise TypeError(f"unknown operation {str(op)[:20]!r}")
        return {"v": kept.out(value)}
    except BaseException as exc:
        try:
            return {"x": exception_names(exc), "m": str(exc)[:200]}
        except BaseException:
            return {"x": ["Exception"], "m": ""}


def run_answer(fd, limits, jailed):
    """In the answer's process: read its code and setup from the tests' process (this jail's
    supervisor never holds an answer's code, so no answer can find another's in its memory),
    run setup and code, then serve the tests' calls."""
    channel = Channel(fd)
    set_limits(limits, jailed)
    try:
        job = channel.receive()
    except WireError:
        return
    env, compiled, error = run_code(job)
    kept = Kept()
    names = {} if error else {k: kept.out(v) for k, v in list(env.items()) if not k.startswith("__")}
    channel.send({"compiled": compiled, "error": error, "names": names})
    while error is None:
        try:
            request = channel.receive()
        except WireError:
            return
        channel.send(perform(kept, request))


def serve_one(fd, ctrl, limits, jailed, devnull, scratch, workdir):
    """Fork the answer's process and watch it until the tests' supervisor says the answer is
    done; then end it and everything it started, and empty the scratch folder on its time. The
    reply for that supervisor (None: that supervisor is gone)."""
    pid = os.fork()
    if pid == 0:
        try:
            into_child(devnull, workdir, keep=(fd,))
            run_answer(fd, limits, jailed)
        finally:
            os._exit(0)
    os.close(fd)
    stopped, status = None, None
    while True:
        ready = select.select([ctrl], [], [], POLL if jailed else 0.05)[0]
        if status is None:
            done, code = os.waitpid(pid, os.WNOHANG)
            status = code if done else None
        if jailed and stopped is None and count_processes() > limits["processes"] + 2:
            stopped = f"killed: more than {limits['processes']} processes (a fork bomb?)"
            status = end_child(pid, jailed, status)
        if ready:
            break
    try:
        end = json.loads(ctrl.recv(1 << 16))
    except (OSError, ValueError):
        end = None  # the tests' supervisor is gone
    if end and end.get("gone") and status is None and stopped is None:
        status = reaped(pid, 0.2)  # its tests saw it go: let it finish going, to say how
    if stopped is None:
        status = end_child(pid, jailed, status)
    workdir = fresh(scratch, "answer")
    if workdir is None:  # the next answer would see what this one left: fresh jails for the rest
        stopped = stopped or "killed: the answer left files in the sandbox that could not be removed"
    # How it ended matters only where its tests saw it go early; then this says how.
    reply = {"why": stopped, "status": status_reason(status), "dirty": workdir is None}
    return None if end is None else reply


def main():
    batch = read_batch()
    jailed, limits = batch["jailed"], batch["limits"]
    if jailed:
        undumpable()
    ctrl = socket.socket(fileno=batch["ctrl"])
    devnull = os.open(os.devnull, os.O_RDWR)
    scratch = batch.get("scratch") or "/tmp"
    workdir = fresh(scratch, "answer")
    say("ready")
    # The control messages alternate, one at a time: {"start": i} with the socket's end,
    # {"end": i} when the tests are done, and this side's {"ended": i, "why", "status", "dirty"}.
    while workdir is not None:
        try:
            message, fds, _, _ = socket.recv_fds(ctrl, 1 << 16, 1)
            start, fd = json.loads(message)["start"], fds[0]
        except (OSError, ValueError, KeyError, TypeError, IndexError):
            return  # the tests' supervisor is gone (or broke the protocol: it never does)
        reply = serve_one(fd, ctrl, limits, jailed, devnull, scratch, workdir)
        if reply is None:
            return
        ctrl.sendall(json.dumps({"ended": start, **reply}).encode() + b"\n")
        if reply["dirty"]:
            return
