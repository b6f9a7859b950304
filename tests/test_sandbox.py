"""The sandbox's walls: each attempt fails inside the jail while the same code succeeds outside
it (a plain interpreter, or the unjailed LEARNLOOP_SANDBOX=none mode), and hostile or broken
code always gets a result, never an exception in the caller."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from learning.errors import InvalidInput
from learning.sandbox.execute import SANDBOX_ENV, SandboxUnavailable, run_many, run_tests
from tests.conftest import live_processes

needs_bwrap = pytest.mark.skipif(
    shutil.which("bwrap") is None,
    reason="bubblewrap is not installed (apt-get install bubblewrap); CI installs it",
)
OK = ["assert ok"]


@pytest.fixture(autouse=True)
def jailed(monkeypatch):
    monkeypatch.setenv(SANDBOX_ENV, "bwrap")


def outside(code: str, tests: list[str], cwd: Path) -> bool:
    """The same code and tests in a plain interpreter with the server's environment: all pass?"""
    program = code + "\n" + "\n".join(tests) + "\n"
    return (
        subprocess.run([sys.executable, "-I", "-c", program], cwd=cwd, capture_output=True, timeout=30).returncode == 0
    )


def jail(code: str, tests: list[str] = OK, timeout: float = 2.0):
    result = run_tests(code, tests, timeout=timeout)
    assert result.sandbox == "bwrap"
    return result


@needs_bwrap
def test_files_outside_cannot_be_read_written_or_deleted(tmp_path):
    secret, victim, planted = tmp_path / "secret.txt", tmp_path / "victim.txt", tmp_path / "planted.txt"
    secret.write_text("hunter2")
    victim.write_text("keep me")
    read = f"ok = open({str(secret)!r}).read() == 'hunter2'"
    write = f"import os\nos.remove({str(victim)!r})\nopen({str(planted)!r}, 'w').write('x')\nok = True"
    for code in (read, write):
        result = jail(code)
        assert result.passed == 0 and "FileNotFoundError" in (result.error or ""), result
    assert victim.read_text() == "keep me" and not planted.exists()
    assert outside(read, OK, tmp_path) and outside(write, OK, tmp_path)
    assert not victim.exists() and planted.exists()


@pytest.fixture
def listener():
    """A TCP listener on 127.0.0.1 that accepts every connection; yields its port."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.2)
    stop = threading.Event()

    def accept():
        while not stop.is_set():
            try:
                server.accept()[0].close()
            except OSError:
                pass

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join()
    server.close()


@needs_bwrap
def test_no_connection_to_a_listener_on_loopback(listener, tmp_path):
    port = listener
    attempts = {
        "socket": f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2)\nok = True",
        "_socket": (
            "import _socket\ns = _socket.socket(_socket.AF_INET, _socket.SOCK_STREAM)\ns.settimeout(2)\n"
            f"s.connect(('127.0.0.1', {port}))\nok = True"
        ),
        "subprocess": (
            'import subprocess, sys\nconnect = \'import socket; socket.create_connection(("127.0.0.1", '
            f"{port}), timeout=2)'\nok = subprocess.run([sys.executable, '-c', connect], timeout=10).returncode == 0"
        ),
    }
    for how, code in attempts.items():
        assert jail(code, timeout=5).passed == 0, how
        assert outside(code, OK, tmp_path), how


@needs_bwrap
def test_no_programs_of_the_machine(tmp_path):
    for argv in (["id"], ["/usr/bin/id"], ["sh", "-c", "id"]):
        code = f"import subprocess\nok = subprocess.run({argv!r}, capture_output=True).returncode == 0"
        result = jail(code)
        assert result.passed == 0 and "FileNotFoundError" in (result.error or ""), result
    assert outside("import subprocess\nok = subprocess.run(['id']).returncode == 0", OK, tmp_path)


@needs_bwrap
def test_no_environment_of_the_server(monkeypatch, tmp_path):
    monkeypatch.setenv("LEARNLOOP_TEST_SECRET", "hunter2")
    code = (
        "import os\nok = os.environ.get('LEARNLOOP_TEST_SECRET') == 'hunter2'\n"
        "for pid in os.listdir('/proc'):\n"
        "    try:\n"
        "        ok = ok or b'hunter2' in open('/proc/%s/environ' % pid, 'rb').read()\n"
        "    except OSError:\n"
        "        pass\n"
    )
    assert jail(code).passed == 0
    assert outside(code, OK, tmp_path)


DOUBLE_FORK = """
import os, sys
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        os.execv(sys.executable, [sys.executable, "-c", "import time; time.sleep(60)", "{marker}"])
    os._exit(0)
while True:
    pass
"""


@needs_bwrap
@pytest.mark.slow
def test_nothing_outlives_the_timeout_through_a_double_fork(monkeypatch):
    marker = f"learnloop-escape-{os.getpid()}-{time.time_ns()}"
    code = DOUBLE_FORK.format(marker=marker)
    result = jail(code, timeout=1.0)
    assert result.timed_out and result.passed == 0
    assert not live_processes(marker)
    # Without the jail the grandchild escapes the answer's process group and lives on.
    monkeypatch.setenv(SANDBOX_ENV, "none")
    assert run_tests(code, OK, timeout=1.0).sandbox == "none"
    time.sleep(0.5)
    escaped = live_processes(marker)
    for pid in escaped:
        os.kill(pid, signal.SIGKILL)
    assert escaped


FORKS = """
import os, time
pids = []
for i in range(200):
    pid = os.fork()
    if pid == 0:
        time.sleep(2)
        os._exit(0)
    pids.append(pid)
ok = len(pids) == 200
"""


@pytest.mark.slow
@needs_bwrap
def test_a_fork_bomb_is_stopped_and_leaves_nothing(tmp_path):
    started = time.monotonic()
    bomb = jail("import os\nwhile True:\n    os.fork()\n", timeout=2.0)
    assert bomb.passed == 0 and "processes" in (bomb.error or ""), bomb
    assert time.monotonic() - started < 10
    counted = jail(FORKS)
    assert counted.passed == 0 and "processes" in (counted.error or ""), counted
    assert not live_processes("-I", "-S", "-B", "-c")  # no supervisor (nor copy of one) is left
    assert outside(FORKS, OK, tmp_path)  # 200 processes are fine outside the jail


@needs_bwrap
def test_filling_the_disk_stops_at_the_limits(tmp_path):
    big = "data = b'x' * (1 << 20)\nwith open('big', 'wb') as f:\n    for _ in range(40):\n        f.write(data)\nok = True"
    result = jail(big)
    assert result.passed == 0 and "File too large" in (result.error or ""), result
    many = "for i in range(10):\n    open('f%d' % i, 'wb').write(b'x' * (15 << 20))\nok = True"
    result = jail(many)
    assert result.passed == 0 and "No space left" in (result.error or ""), result
    assert outside(big, OK, tmp_path) and (tmp_path / "big").stat().st_size == 40 << 20


@needs_bwrap
def test_answers_of_a_batch_see_nothing_of_each_other():
    leave = (
        "import os, subprocess, sys\nopen('/tmp/left', 'w').write('x')\nopen('here', 'w').write('x')\n"
        "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(30)'], start_new_session=True)\nok = True"
    )
    look = (
        "import os\nprocs = [p for p in os.listdir('/proc') if p.isdigit()]\n"
        "ok = not os.path.exists('/tmp/left') and os.listdir('.') == [] and len(procs) <= 3"
    )
    first, second = run_many([(leave, OK), (look, OK)], workers=1)
    assert first.passed == 1 and second.passed == 1, (first, second)


HOSTILE = {
    "syntax": ("def f(:\n", "SyntaxError"),
    "raise": ("raise ValueError('no')", "ValueError: no"),
    "exit": ("import sys\nsys.exit(3)", "SystemExit: 3"),
    "_exit": ("import os\nos._exit(0)", "exit status 0"),
    "recursion": ("def f(n):\n    return f(n + 1)\nf(0)", "RecursionError"),
    "memory": ("x = bytearray(4 << 30)", "MemoryError"),
    "cpu, signals ignored": (
        "import signal\nfor s in (signal.SIGTERM, signal.SIGINT, signal.SIGXCPU):\n    signal.signal(s, signal.SIG_IGN)\n"
        "while True:\n    pass",
        "timed out",
    ),
    "segfault": ("import ctypes\nctypes.string_at(0)", "killed by SIGSEGV"),
    "kills its supervisor": ("import os\nos.kill(os.getppid(), 9)", "ended its sandbox"),
    "closes its pipes": ("import os\nos.closerange(0, 1024)\nraise SystemExit", "exit status"),
}


@needs_bwrap
def test_hostile_or_broken_code_gets_a_result():
    results = run_many([(code, OK) for code, _ in HOSTILE.values()], timeout=1.0)
    for (name, (_, expected)), result in zip(HOSTILE.items(), results):
        assert result.passed == 0 and result.total == 1 and len(result.errors) == 1, (name, result)
        if expected:
            assert expected in (result.error or ""), (name, result)
    assert not results[0].compiled and results[1].compiled


@needs_bwrap
@pytest.mark.slow
def test_an_answer_that_stops_its_supervisor_is_blamed_alone():
    stop = "import os, signal\nos.kill(os.getppid(), signal.SIGSTOP)\nok = True"
    results = run_many([("ok = True", OK), (stop, OK), ("ok = True", OK)], timeout=0.5, workers=1)
    assert [r.passed for r in results] == [1, 0, 1]
    assert "stopped its supervisor" in (results[1].error or "")


@needs_bwrap
def test_per_test_errors_duration_and_mode():
    result = jail("def f(x):\n    return x + 1", ["assert f(1) == 2", "assert f(2) == 4, 'off'", "f(None)"])
    assert (result.passed, result.total) == (1, 3)
    assert result.errors[0] is None and result.errors[1] == "AssertionError: off"
    assert (result.errors[2] or "").startswith("TypeError") and result.error == result.errors[1]
    assert 0 < result.duration_s < 2 and result.as_dict()["sandbox"] == "bwrap"
    setup = run_tests("y = base + 1", ["assert y == 42"], setup="base = 41")
    assert setup.passed == 1
    broken_setup = run_tests("y = 1", ["assert y == 1"], setup="import nowhere")
    assert broken_setup.passed == 0 and (broken_setup.error or "").startswith("setup: ModuleNotFoundError")


def test_without_bwrap_execution_is_refused_with_what_to_install(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # no bwrap on it
    with pytest.raises(SandboxUnavailable) as refused:
        run_tests("ok = True", OK)
    message = str(refused.value)
    assert "apt-get install bubblewrap" in message and "macOS" in message and "LEARNLOOP_SANDBOX=none" in message
    monkeypatch.setenv(SANDBOX_ENV, "none")  # the weaker mode, chosen explicitly, and recorded
    result = run_tests("ok = True", OK)
    assert result.passed == 1 and result.sandbox == "none"
    monkeypatch.setenv(SANDBOX_ENV, "nope")
    with pytest.raises(InvalidInput, match="LEARNLOOP_SANDBOX"):
        run_tests("ok = True", OK)
