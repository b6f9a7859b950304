"""Entry point of a job's process: `python -m learning.jobs.runner HOME JOB_ID`.

Marks the job running, calls its target function with a JobContext, and records the
outcome. Anything the function raises becomes the job's error; JobCancelled makes it
cancelled. The store stays consistent if this process is killed at any moment:
learning.jobs.reconcile marks the job failed on the next look.
"""

from __future__ import annotations

import importlib
import os
import signal
import sys
import time
import traceback

from learning.errors import LearnloopError
from learning.jobs.manage import JobCancelled, JobContext, on_job_died
from learning.jobs.queries import job_row, update_job
from learning.store import Store, dumps


def main(argv: list[str]) -> int:
    home, job_id = argv[0], argv[1]
    store = Store(home)
    row = job_row(store, job_id)
    if row is None:
        print(f"no job {job_id} in {home}", file=sys.stderr)
        return 2
    # SIGTERM asks for a graceful stop, like cancel_job.
    signal.signal(signal.SIGTERM, lambda *_: update_job(store, job_id, cancel_requested=1))
    if not update_job(
        store,
        job_id,
        only_if_status=("queued",),
        status="running",
        started=time.time(),
        pid=os.getpid(),
        heartbeat=time.time(),
    ):
        print(f"job {job_id} is not queued; not running it", file=sys.stderr)
        return 2
    ctx = JobContext(store, job_id)
    target: str = row["target"]
    module_name, _, fn_name = OLD_TARGETS.get(target, target).partition(":")
    print(f"[learnloop] job {job_id} ({row['kind']}) started, pid {os.getpid()}", flush=True)
    try:
        fn = getattr(importlib.import_module(module_name), fn_name)
        result = fn(ctx)
    except JobCancelled as exc:
        update_job(
            store,
            job_id,
            status="cancelled",
            finished=time.time(),
            progress=dumps(ctx._progress),
            error=str(exc) or "cancelled on request",
        )
        print(f"[learnloop] job {job_id} cancelled", flush=True)
        return 0
    except LearnloopError as exc:
        _fail(store, ctx, str(exc))
        return 1
    except BaseException as exc:  # noqa: BLE001 - any crash becomes the job's error
        traceback.print_exc()
        _fail(store, ctx, f"{type(exc).__name__}: {exc}. See the job's log for the traceback.")
        return 1
    update_job(
        store,
        job_id,
        status="succeeded",
        finished=time.time(),
        progress=dumps(ctx._progress),
        result=dumps(result if result is not None else {}),
    )
    print(f"[learnloop] job {job_id} succeeded", flush=True)
    return 0


# Jobs recorded before the library was split into packages name their targets by the old
# module paths; a home with such a job queued (or resumed) still runs it.
OLD_TARGETS = {
    "learning.train:run_job": "learning.train.recipe:run_job",
    "learning.evaluate:run_job": "learning.evaluate.evaluation:run_job",
    "learning.cycle:cycle_job": "learning.loop.cycle:cycle_job",
    "learning.export:export_job": "learning.serve.export:export_job",
}


def _fail(store: Store, ctx: JobContext, error: str) -> None:
    print(f"[learnloop] job {ctx.job_id} failed: {error}", flush=True)
    update_job(store, ctx.job_id, status="failed", finished=time.time(), progress=dumps(ctx._progress), error=error)
    on_job_died(store, job_row(store, ctx.job_id))  # the same clean-up as for a dead process


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
