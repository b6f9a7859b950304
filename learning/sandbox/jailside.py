"""Process tools of the programs that run inside the jail: limits, counting, killing, reaping.

Part of the programs learning/sandbox/execute.py joins and runs with `python -I -S -B -c`; it
imports nothing but the standard library (inside the jail nothing of learnloop is visible).
"""

import json
import os
import resource
import signal
import stat
import sys
import time

MESSAGE = 200  # characters kept of an error message
POLL = 0.005  # seconds between process counts in the jail


def why(exc):
    return (type(exc).__name__ + ": " + str(exc))[:MESSAGE]


def _no_network(*args, **kwargs):
    raise OSError("network access is disabled in the learnloop sandbox")


def set_limits(limits, jailed):
    mb = 1 << 20
    resource.setrlimit(resource.RLIMIT_AS, (limits["memory_mb"] * mb, limits["memory_mb"] * mb))
    resource.setrlimit(resource.RLIMIT_CPU, (limits["cpu_s"], limits["cpu_s"]))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if jailed:
        # Outside the jail these would count (or cap) every process and file of the user.
        resource.setrlimit(resource.RLIMIT_FSIZE, (limits["file_mb"] * mb, limits["file_mb"] * mb))
        resource.setrlimit(resource.RLIMIT_NPROC, (limits["processes"], limits["processes"]))
    else:
        import socket  # the unjailed mode's only network guard: socket.socket replaced

        socket.socket = _no_network
        socket.create_connection = _no_network
        socket.getaddrinfo = _no_network


def undumpable():
    """Processes of the jail without capabilities cannot open this one's pipes or memory
    (/proc/PID/fd, /proc/PID/mem) once it is not dumpable; its forks inherit that."""
    try:
        import ctypes

        ctypes.CDLL(None).prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE, 0
    except Exception:
        pass


def run_code(job):
    """In an answer's process: compile the code, run the setup, then the code, in one namespace.
    (namespace, whether the code compiled, the first error or None)."""
    env = {"__name__": "__answer__"}
    try:
        code = compile(job["code"], "<answer>", "exec")
    except BaseException as exc:
        return env, False, why(exc)
    if job.get("setup"):
        try:
            exec(compile(job["setup"], "<setup>", "exec"), env)
        except BaseException as exc:
            return env, True, "setup: " + why(exc)
    try:
        exec(code, env)
    except BaseException as exc:
        return env, True, why(exc)
    return env, True, None


def count_processes():
    return sum(name.isdigit() for name in os.listdir("/proc"))


def kill_the_rest(keep):
    """In the jail's pid namespace: SIGKILL every process but the jail's init and this one.

    kill(-1) walks the task list under a lock that fork also takes, so nothing forks past it."""
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline:
        try:
            os.kill(-1, signal.SIGKILL)
        except ProcessLookupError:
            pass
        if count_processes() <= keep:  # the jail's init, this supervisor (and a child, reaped next)
            return
        time.sleep(0.001)


def status_reason(status):
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        name = signal.Signals(sig).name if sig in signal.Signals._value2member_map_ else str(sig)
        if sig == signal.SIGXCPU:
            return f"killed: CPU time limit ({name})"
        return f"killed by {name}"
    return f"the answer ended its process (exit status {os.WEXITSTATUS(status)}) before its tests ran"


def reaped(pid, wait_s):
    """The child's exit status if it ends within wait_s, else None."""
    deadline = time.monotonic() + wait_s
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return status
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.001)


def end_child(pid, jailed, status=None):
    """Kill the child's process group and, in the jail, every other process; its exit status."""
    try:
        os.killpg(pid, signal.SIGKILL)  # the child's group: whatever it forked and left running
    except (ProcessLookupError, PermissionError):
        pass
    if jailed:
        kill_the_rest(keep=2 if status is not None else 3)
    if status is None:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        status = os.waitpid(pid, 0)[1]
    return status


def into_child(devnull, workdir, keep=()):
    """In a freshly forked child: its own session, standard streams on /dev/null, no other
    inherited descriptor but those in `keep`, the scratch folder as working folder."""
    os.setsid()
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    low = 3
    for fd in sorted(keep):
        os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, 1 << 16)
    os.chdir(workdir)


def fresh(scratch, name):
    """Empty `scratch` but for an empty folder `name` (the next answer's working folder), whatever
    the last one left there: folders it made unreadable, trees too deep to recurse. The folder's
    path, or None when something could not be removed."""
    os.chmod(scratch, 0o700)
    for entry in os.listdir(scratch):
        _remove_tree(os.path.join(scratch, entry))
    try:
        os.mkdir(os.path.join(scratch, name))
    except OSError:
        return None
    return os.path.join(scratch, name) if os.listdir(scratch) == [name] else None


def _remove_tree(top):
    """Remove a file or a folder tree without recursion, making each folder writable first."""
    stack, opened = [top], set()
    while stack:
        path = stack[-1]
        try:
            is_dir = stat.S_ISDIR(os.lstat(path).st_mode)
        except OSError:
            stack.pop()
            continue
        if is_dir and path not in opened:
            opened.add(path)
            try:
                os.chmod(path, 0o700)
                stack.extend(os.path.join(path, e) for e in os.listdir(path))
            except OSError:
                pass
            continue
        stack.pop()
        try:
            os.rmdir(path) if is_dir else os.unlink(path)
        except OSError:
            pass


REPORT = {}  # the descriptor this program reports on (given by execute.py; not stdout)


def read_batch():
    batch = json.loads(sys.stdin.buffer.read())
    REPORT["fd"] = batch["report"]
    if batch.get("cpu") is not None:
        try:
            os.sched_setaffinity(0, {batch["cpu"]})
        except OSError:
            pass
    return batch


def say(message):
    """One line to execute.py, on a descriptor only this supervisor holds: the jail's init keeps
    the standard streams, and an answer can open them through /proc/1/fd."""
    data = (message if isinstance(message, str) else json.dumps(message)).encode() + b"\n"
    while data:
        data = data[os.write(REPORT["fd"], data) :]
