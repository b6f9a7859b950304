"""Starting the programs that run inside the jails, feeding them a batch and reading their reports.

The programs are joined from the modules below, which import nothing of learnloop (inside the
jail nothing of it is visible): an isolated batch runs `answers` in one jail and `verdicts` in
another, linked by a control socket pair; the in-process mode runs `inprocess` alone.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import psutil

from learning.sandbox.jail import INSTALL_HINT, SandboxUnavailable, jail_command, plain_command

HERE = Path(__file__).parent
START_S = 30.0  # the most a jail may take to start and read its batch
GRACE_S = 6.0  # beyond the timeout, the most a supervisor may take to report an answer


def _program(*modules: str) -> str:
    return "\n".join((HERE / f"{m}.py").read_text(encoding="utf-8") for m in modules) + "\nmain()\n"


PROGRAMS = {
    "answers": _program("jailside", "wire", "answers"),
    "verdicts": _program("jailside", "wire", "remote", "verdicts"),
    "inprocess": _program("jailside", "inprocess"),
}


class Jailed:
    """One program running in a jail (or, in the weaker mode, a plain interpreter)."""

    def __init__(self, program: str, batch: dict, mode: str, tmp_mb: int, pass_fds: tuple[int, ...] = ()):
        command = (jail_command(tmp_mb) if mode == "bwrap" else plain_command()) + [PROGRAMS[program]]
        # bwrap itself gets no environment either: the jail's init is a copy of it, and its
        # /proc/1/environ would show the server's variables to the code inside.
        env = {} if mode == "bwrap" else None
        self.errlog = tempfile.TemporaryFile()
        # The program reports on a pipe of its own, not stdout: the jail's init keeps the standard
        # streams, and any process in the jail can open them through /proc/1/fd.
        report, written = os.pipe()
        try:
            self.proc = subprocess.Popen(
                command,
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                stderr=self.errlog,
                env=env,
                pass_fds=(*pass_fds, written),
            )
        except OSError as exc:
            self.errlog.close()
            os.close(report)
            raise SandboxUnavailable(f"The sandbox could not start ({exc}). {INSTALL_HINT}") from exc
        finally:
            os.close(written)
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(json.dumps({**batch, "report": written}).encode())
            self.proc.stdin.close()
        except OSError:
            pass  # it ended early; what it said on stderr tells why
        self.lines = _Lines(report)

    def wait_ready(self) -> None:
        if self.lines.next(START_S) != b"ready":
            self.proc.kill()
            self.proc.wait()
            self.errlog.seek(0)
            said = self.errlog.read().decode(errors="replace").strip()[-500:]
            raise SandboxUnavailable(f"The sandbox did not start: {said or 'no message'}. {INSTALL_HINT}")

    def end(self, finished: bool) -> None:
        """Let a program that reported everything end by itself, else kill it; return only once
        every process under it is gone."""
        proc = self.proc
        try:
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
        finally:
            self.errlog.close()
            os.close(self.lines.fd)


def supervise(program: str, jobs: list[dict], timeout: float, mode: str, limits: dict, tmp_mb: int, cpu: int | None):
    """Run one batch; (the results reported, why it stopped early or "", whether the program
    itself stopped after blaming the last answer it reported). `cpu`: the processor both jails
    run on; an answer and its tests take turns, and turns on one processor cost the least."""
    scratch = [tempfile.mkdtemp(prefix="learnloop-answers-") for _ in range(2)] if mode == "none" else [None, None]
    base = {"timeout": timeout, "jailed": mode == "bwrap", "limits": limits, "cpu": cpu}
    jails: list[Jailed] = []
    why = "not read"
    try:
        if program == "inprocess":
            reporter = Jailed("inprocess", {**base, "scratch": scratch[0], "jobs": jobs}, mode, tmp_mb)
            jails.append(reporter)
        else:
            ctrl_answers, ctrl_tests = socket.socketpair()
            with ctrl_answers, ctrl_tests:
                # The answers' jail gets no code: each answer's process reads its own from its
                # tests, so no answer finds another's in the memory it was forked from.
                fd_a, fd_t = ctrl_answers.fileno(), ctrl_tests.fileno()
                batch_a = {**base, "scratch": scratch[0], "ctrl": fd_a}
                jails.append(Jailed("answers", batch_a, mode, tmp_mb, (fd_a,)))
                batch_t = {**base, "scratch": scratch[1], "jobs": jobs, "ctrl": fd_t}
                jails.append(Jailed("verdicts", batch_t, mode, tmp_mb, (fd_t,)))
            reporter = jails[-1]
        for jail in jails:
            jail.wait_ready()
        results, why, blamed = _read_results(reporter, len(jobs), timeout)
        return results, why, blamed
    finally:
        for jail in jails:
            jail.end(finished=not why)
        for folder in scratch:
            if folder:
                shutil.rmtree(folder, ignore_errors=True)


def _read_results(reporter: Jailed, count: int, timeout: float) -> tuple[list[dict], str, bool]:
    results: list[dict] = []
    while len(results) < count:
        line = reporter.lines.next(timeout + GRACE_S)
        if line is None and reporter.lines.eof:
            return results, "killed: the answer ended its sandbox's supervisor", False
        if line is None:
            return (
                results,
                f"killed: the answer stopped its supervisor (no result within {timeout + GRACE_S:.0f}s)",
                False,
            )
        if line == b"stopped":
            return results, "stopped", True
        try:
            res = json.loads(line)
            if not isinstance(res, dict) or "errors" not in res:
                raise ValueError
            results.append(res)
        except ValueError:
            return results, "killed: the answer broke its sandbox's report", False
    return results, "", False


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
