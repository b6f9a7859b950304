"""Jobs: long operations (training, evaluation, cycles) in their own processes.

A job is a row in the store (status, progress, result, error, log path) plus a process
started with `python -m learning.jobs.runner HOME JOB_ID`. The server never waits on the
process; it reads the row. A job whose process died without finishing is marked failed
the next time anyone looks (reconcile), so a restarted server never shows a ghost job.

Statuses: queued -> running -> succeeded | failed | cancelled.
Cancel is cooperative: it sets cancel_requested, the job sees it at its next step
(JobContext.cancelled), saves what it needs to resume, and ends as cancelled.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import secrets
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal

import psutil
from pydantic import BaseModel, Field

from learning.clock import iso, stamp
from learning.errors import Conflict, NotFound, shown
from learning.home import subdir
from learning.jobs.queries import active_job_rows, insert_job, job_row, job_rows, update_job
from learning.store import Store, dumps, loads

ACTIVE = ("queued", "running")
FINAL = ("succeeded", "failed", "cancelled")
MAX_WAIT_SECONDS = 45.0

JobState = Literal["queued", "running", "succeeded", "failed", "cancelled"]


class JobStatus(BaseModel):
    job_id: str
    kind: str = Field(description="train, evaluate, cycle, ...")
    status: JobState
    subject: str | None = Field(description="What the job works on, e.g. the adapter id.")
    progress: dict[str, Any] = Field(description="step, total_steps, loss, tokens_per_s, eta_s, stage, message ...")
    result: dict[str, Any] | None = Field(description="The job's result once it succeeded.")
    error: str | None = Field(description="Why it failed, and what to do.")
    created: str
    started: str | None
    finished: str | None
    elapsed_s: float | None
    log_path: str
    log_tail: list[str] = Field(default_factory=list, description="Last lines of the job's log.")


def new_job_id(kind: str) -> str:
    return f"{kind}-{stamp()}-{secrets.token_hex(2)}"


def _known_job_row(store: Store, job_id: str) -> sqlite3.Row:
    """The row of a job known to exist: jobs are recorded before anything runs and never deleted."""
    row = job_row(store, job_id)
    assert row is not None, f"job {job_id} has no row"
    return row


def _process_alive(pid: int | None, pid_started: float | None) -> bool:
    if not pid:
        return False
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        # Guard against a recycled pid: the process must be the one we started.
        return pid_started is None or abs(proc.create_time() - pid_started) < 1.0
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


def start_job(
    store: Store,
    kind: str,
    target: str,
    params: dict[str, Any],
    subject: str | None = None,
    job_id: str | None = None,
    env: dict[str, str] | None = None,
) -> str:
    """Record a job and start its process; returns at once with the job id.

    target is 'module:function'; the function is called as fn(JobContext) in the new process.
    """
    job_id = job_id or new_job_id(kind)
    log_path = subdir(store.home, "jobs") / f"{job_id}.log"
    insert_job(
        store,
        dict(
            id=job_id,
            kind=kind,
            target=target,
            status="queued",
            params=dumps(params),
            subject=subject,
            created=time.time(),
            progress=dumps({}),
            log_path=str(log_path),
        ),
    )
    launch(store, job_id, env=env)
    return job_id


def launch(store: Store, job_id: str, env: dict[str, str] | None = None) -> None:
    row = _known_job_row(store, job_id)
    log = open(row["log_path"], "ab")
    child_env = {**os.environ, **(env or {})}
    # The job must import this very package, wherever it was imported from.
    root = str(Path(__file__).resolve().parent.parent)
    child_env["PYTHONPATH"] = root + (os.pathsep + child_env["PYTHONPATH"] if child_env.get("PYTHONPATH") else "")
    proc = subprocess.Popen(
        [sys.executable, "-m", "learning.jobs.runner", str(store.home), job_id],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        env=child_env,
    )
    log.close()
    try:
        created = psutil.Process(proc.pid).create_time()
    except psutil.NoSuchProcess:
        created = None
    update_job(store, job_id, pid=proc.pid, pid_started=created)


def reconcile(store: Store) -> list[str]:
    """Mark active jobs whose process is gone as failed. Returns the ids it changed."""
    changed = []
    for row in active_job_rows(store):
        if _process_alive(row["pid"], row["pid_started"]):
            continue
        if row["status"] == "queued" and row["pid"] is None and time.time() - row["created"] < 30:
            continue  # being launched right now
        # Re-read: the process may have finished between the two reads.
        fresh = _known_job_row(store, row["id"])
        if fresh["status"] not in ACTIVE:
            continue
        if update_job(
            store,
            row["id"],
            only_if_status=ACTIVE,
            status="failed",
            finished=time.time(),
            error="The job's process died before finishing (killed, crashed or the machine "
            "restarted). Its log may say why; start it again, with resume where offered.",
        ):
            changed.append(row["id"])
            on_job_died(store, fresh)
            kill_leftovers(row["id"])
    return changed


def kill_leftovers(job_id: str) -> list[int]:
    """SIGKILL what a dead job left running: the launcher and workers of a distributed run,
    found by their command line (`... learning.train.recipe HOME JOB_ID`). Returns their pids.

    On Linux they die with their parents already (die_with_parent); this is the backstop."""
    killed = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        argv = proc.info.get("cmdline") or []
        if proc.info["pid"] == os.getpid() or job_id not in argv or "learning.train.recipe" not in argv:
            continue
        try:
            proc.kill()
            killed.append(proc.info["pid"])
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return killed


_PR_SET_PDEATHSIG = 1


def die_with_parent(sig: int = signal.SIGKILL) -> None:
    """Have the kernel send `sig` (SIGKILL) to this process when its parent dies (Linux; elsewhere a no-op).

    For a process started by another: a launcher started by a job's process, workers started
    by the launcher. Nothing else would stop them when their parent is SIGKILLed: the workers
    of `accelerate launch` (torch.distributed) run in sessions of their own. Safe to call in
    a preexec_fn (after fork, before exec): the setting survives exec.
    """
    if _prctl is not None:
        _prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)


def _load_prctl():
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


_prctl = _load_prctl()  # loaded here, not in a forked child


# What a failed or dead job of a kind leaves to put right, registered by the package that runs
# jobs of that kind (learning/train: the adapter a training job was making is marked failed).
# A hook is called as hook(store, job_id, subject) for a job with a subject.
FailureHook = Callable[[Store, str, str], None]
_failure_hooks: dict[str, list[FailureHook]] = {}


def on_job_failure(kind: str, hook: FailureHook) -> None:
    """Call `hook` whenever a job of this kind fails or its process dies."""
    if hook not in _failure_hooks.setdefault(kind, []):
        _failure_hooks[kind].append(hook)


def on_job_died(store: Store, row) -> None:
    """Leave what the job was making in a consistent state: its kind's failure hooks."""
    subject = row["subject"]
    if not subject:
        return
    # The package whose function the job runs registers its kind's hooks when imported; this
    # process (a server, a CLI reading a job's status) may not have imported it yet.
    with contextlib.suppress(ImportError):
        importlib.import_module(".".join(row["target"].partition(":")[0].split(".")[:2]))
    for hook in _failure_hooks.get(row["kind"], []):
        hook(store, row["id"], subject)


def _tail(path: str, lines: int = 20) -> list[str]:
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - 8192))
            return handle.read().decode("utf-8", "replace").splitlines()[-lines:]
    except OSError:
        return []


def job_status(
    store: Store,
    job_id: Annotated[str, Field(description="The job id train_adapter / evaluate_adapter / run_cycle returned.")],
    log_lines: int = 10,
) -> JobStatus:
    """Where a background job stands: status, progress (step, loss, tokens/s, ETA), result or error."""
    row = job_row(store, job_id)
    if row is None:
        raise NotFound(f"No job {shown(job_id)}. List jobs with `learnloop jobs` (MCP: list_jobs).")
    if row["status"] in ACTIVE:
        reconcile(store)
        row = _known_job_row(store, job_id)
    return status_of(row, log_lines)


def status_of(row: sqlite3.Row, log_lines: int = 10) -> JobStatus:
    """A jobs row as it is recorded, without reconciling (read-only readers such as the dashboard)."""
    end = row["finished"] or (time.time() if row["started"] else None)
    return JobStatus(
        job_id=row["id"],
        kind=row["kind"],
        status=row["status"],
        subject=row["subject"],
        progress=loads(row["progress"]) or {},
        result=loads(row["result"]),
        error=row["error"],
        created=iso(row["created"]),
        started=iso(row["started"]),
        finished=iso(row["finished"]),
        elapsed_s=round(end - row["started"], 1) if row["started"] and end else None,
        log_path=row["log_path"],
        log_tail=_tail(row["log_path"], log_lines) if log_lines else [],
    )


def list_jobs(
    store: Store,
    status: Annotated[
        str | None, Field(description="Only jobs in this state: queued, running, succeeded, failed, cancelled.")
    ] = None,
    limit: Annotated[int, Field(ge=1, le=500, description="At most this many, newest first.")] = 20,
) -> list[JobStatus]:
    """Recent background jobs, newest first."""
    reconcile(store)
    return [job_status(store, row["id"], log_lines=0) for row in job_rows(store, status, limit)]


def wait_job(
    store: Store, job_id: str, timeout: float = MAX_WAIT_SECONDS, poll: float = 0.25, on_progress=None
) -> JobStatus:
    """Wait until the job finishes or `timeout` seconds pass; returns its status either way."""
    deadline = time.monotonic() + timeout
    while True:
        status = job_status(store, job_id, log_lines=0)
        if on_progress is not None:
            on_progress(status)
        if status.status in FINAL or time.monotonic() >= deadline:
            return job_status(store, job_id)
        time.sleep(min(poll, max(0.0, deadline - time.monotonic())))


def follow_job(store: Store, job_id: str, on_progress=None, cancelled=None) -> JobStatus:
    """Wait for a job of any length until it ends (in bounded waits); returns its final status.

    `on_progress(status)` is called at every poll, so a caller can print or report progress;
    when `cancelled()` turns true, the job is asked to stop and is followed to its end.
    """
    while True:
        status = wait_job(store, job_id, timeout=30, on_progress=on_progress)
        if status.status in FINAL:
            return status
        if cancelled is not None and cancelled():
            cancel_job(store, job_id)


def cancel_job(store: Store, job_id: Annotated[str, Field(description="The job to stop.")]) -> JobStatus:
    """Stop a running job gracefully: training saves a checkpoint first, so train_adapter
    with resume=true continues later."""
    status = job_status(store, job_id, log_lines=0)
    if status.status in FINAL:
        raise Conflict(f"Job {job_id} already {status.status}; nothing to cancel.")
    update_job(store, job_id, only_if_status=ACTIVE, cancel_requested=1)
    row = _known_job_row(store, job_id)
    if not _process_alive(row["pid"], row["pid_started"]):
        update_job(
            store,
            job_id,
            only_if_status=ACTIVE,
            status="cancelled",
            finished=time.time(),
            error="cancelled before its process started",
        )
    return job_status(store, job_id, log_lines=0)


class JobCancelled(Exception):
    """Raised inside a job when a cancel was requested and the job has saved its state."""


class JobContext:
    """What a job function gets: its parameters, the store, and ways to report progress."""

    def __init__(self, store: Store, job_id: str):
        self.store = store
        self.job_id = job_id
        row = _known_job_row(store, job_id)
        self.kind = row["kind"]
        self.params: dict[str, Any] = loads(row["params"]) or {}
        self.subject: str | None = row["subject"]
        self._progress: dict[str, Any] = {}
        self._last_write = 0.0

    def progress(self, force: bool = False, **fields: Any) -> None:
        """Merge fields into the job's progress; written at most every 0.5 s unless forced."""
        self._progress.update(fields)
        now = time.time()
        if force or now - self._last_write >= 0.5:
            update_job(self.store, self.job_id, progress=dumps(self._progress), heartbeat=now)
            self._last_write = now

    def cancelled(self) -> bool:
        row = _known_job_row(self.store, self.job_id)
        return bool(row["cancel_requested"])

    def log(self, message: str) -> None:
        print(message, flush=True)
