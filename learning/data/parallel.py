"""Ordered, bounded fan-out of CPU-bound chunks to worker processes.

Curation spends most of its time in per-run Python work (redaction, rendering, encoding) that
needs no shared state, while the decisions that do (per-task caps, duplicates, the limit) must
see the runs in order. `map_chunks` runs `fn(config, payload)` for each chunk and yields the
results in input order: in this process for the first chunks, so a small curation never pays
for starting processes, then in worker processes when the work turns out to be large.

At most two chunks per worker are in flight, so memory stays bounded however long the input
is, and the input is only read as results are consumed: state the consumer updates (a task's
kept count, say) is seen by the code that builds the next chunks.

Workers are plain `python -m learning.data.parallel` processes fed pickled chunks over a pipe, not
multiprocessing's: those re-import the caller's main module (a script without a
`__main__` guard would run again in every worker), and forking the MCP server, which has
threads, can deadlock the child.
"""

from __future__ import annotations

import itertools
import os
import pickle
import queue
import subprocess
import sys
import threading
import traceback
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import Any, TypeVar

Meta = TypeVar("Meta")

# Chunks run in this process before workers start: about a second of work on a slow core, so
# that starting the workers (a few tenths of a second) pays off only for long curations.
SERIAL_CHUNKS = 10


def default_workers() -> int:
    """Worker processes for large curations: the usable cores, at most 4 (beyond that the one
    process that reads, dedupes and writes in order is the bottleneck), or LEARNLOOP_WORKERS
    when set (1 keeps everything in the calling process)."""
    if env := os.environ.get("LEARNLOOP_WORKERS"):
        return max(1, int(env))
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(4, cores))


class _Worker:
    """One worker process; a thread writes its input so that a full pipe never blocks the reader."""

    def __init__(self) -> None:
        env = dict(os.environ)
        package_root = str(Path(__file__).resolve().parent.parent)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "learning.data.parallel"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env
        )
        assert self.proc.stdin is not None and self.proc.stdout is not None  # both are pipes
        self.stdin, self.stdout = self.proc.stdin, self.proc.stdout
        self.jobs: queue.Queue = queue.Queue()
        self.writer = threading.Thread(target=self._write, daemon=True)
        self.writer.start()

    def _write(self) -> None:
        try:
            while (job := self.jobs.get()) is not None:
                pickle.dump(job, self.stdin, protocol=pickle.HIGHEST_PROTOCOL)
                self.stdin.flush()
        except (BrokenPipeError, ValueError, OSError):
            pass  # the worker died; the reader reports it
        finally:
            try:
                self.stdin.close()
            except OSError:
                pass

    def submit(self, fn: Callable, config: Any, payload: Any) -> None:
        self.jobs.put((fn, config, payload))

    def result(self) -> Any:
        try:
            ok, value = pickle.load(self.stdout)
        except EOFError:
            raise RuntimeError(
                f"A curation worker process exited unexpectedly (status {self.proc.wait()}); "
                "see its error output above, and run again."
            ) from None
        if not ok:
            raise RuntimeError(f"A curation worker failed:\n{value}")
        return value

    def close(self, kill: bool) -> None:
        self.jobs.put(None)
        if kill:
            self.proc.kill()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.stdout.close()


def map_chunks(
    fn: Callable[[Any, Any], Any],
    config: Any,
    chunks: Iterator[tuple[Meta, Any]],
    workers: int | None = None,
    serial_chunks: int | None = None,
) -> Generator[tuple[Meta, Any], None, None]:
    """(meta, fn(config, payload)) for each (meta, payload) of chunks, in order.

    fn must be a module-level function, and config and payload picklable. Only the payload
    travels to a worker; meta stays here. Closing the returned generator early (a limit was
    reached) stops the workers.
    """
    workers = default_workers() if workers is None else workers
    serial_chunks = SERIAL_CHUNKS if serial_chunks is None else serial_chunks
    for meta, payload in chunks if workers <= 1 else itertools.islice(chunks, serial_chunks):
        yield meta, fn(config, payload)
    if workers <= 1:
        return
    pool: list[_Worker] = []
    done = False
    try:
        in_flight: list[tuple[Meta, _Worker]] = []
        for i, (meta, payload) in enumerate(chunks):  # no process starts if nothing is left
            if len(pool) < workers:
                pool.append(_Worker())
            worker = pool[i % workers]  # each worker answers in the order it was asked
            worker.submit(fn, config, payload)
            in_flight.append((meta, worker))
            if len(in_flight) >= 2 * workers:
                meta, worker = in_flight.pop(0)
                yield meta, worker.result()
        for meta, worker in in_flight:
            yield meta, worker.result()
        done = True
    finally:
        for worker in pool:
            worker.close(kill=not done)


def _serve() -> None:
    """The worker loop: (fn, config, payload) in, (ok, result or traceback) out, until EOF."""
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr  # a stray print must not corrupt the answers
    while True:
        try:
            fn, config, payload = pickle.load(stdin)
        except EOFError:
            return
        try:
            answer = (True, fn(config, payload))
        except Exception:  # reported to the caller, which raises it there
            answer = (False, traceback.format_exc())
        pickle.dump(answer, stdout, protocol=pickle.HIGHEST_PROTOCOL)
        stdout.flush()


if __name__ == "__main__":
    _serve()
