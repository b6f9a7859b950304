"""A training job over several processes: the job's process runs `accelerate launch` of
`python -m learning.train.recipe HOME JOB_ID`, one worker per device (gloo on CPU); rank 0
reports progress and writes the artifacts, and the job's process reads what it left.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

from learning.jobs.manage import JobCancelled, JobContext, die_with_parent
from learning.jobs.queries import job_row
from learning.store import loads
from learning.train.job import TrainJob

CANCELLED_FILE = "cancelled.json"  # in the adapter's folder: rank 0's step at a cancel
RESULT_FILE = "result.json"  # rank 0's result


def launch_distributed(ctx: JobContext, job: TrainJob) -> dict[str, Any]:
    """Run the recipe in N processes with accelerate (DDP, or FSDP with sharding fsdp; gloo on CPU)
    and wait for them."""
    # --multi_gpu selects torch.distributed's launcher; without CUDA the trainer's use_cpu makes
    # it DDP over gloo (accelerate's --cpu flag would start a single process).
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        str(job.num_processes),
        "--num_machines",
        "1",
        "--main_process_port",  # a free one: jobs side by side would all take 29500
        str(_free_port()),
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "-m",
        "learning.train.recipe",
        str(ctx.store.home),
        ctx.job_id,
    ]
    out = Path(job.adapter_dir)
    for stale in (CANCELLED_FILE, RESULT_FILE):
        (out / stale).unlink(missing_ok=True)
    ctx.progress(force=True, stage="launching", message=f"accelerate launch with {job.num_processes} processes")
    # The launcher dies with this process (SIGKILL included), and its workers with it (recipe.main).
    code = subprocess.call(cmd, stdin=subprocess.DEVNULL, preexec_fn=die_with_parent)
    row = job_row(ctx.store, ctx.job_id)
    assert row is not None  # this job's own row
    ctx._progress = loads(row["progress"]) or {}  # what rank 0 reported
    if (out / CANCELLED_FILE).exists():
        raise JobCancelled(cancel_message(job, _read_json(out / CANCELLED_FILE).get("step")))
    if code != 0 or not (out / RESULT_FILE).exists():
        raise RuntimeError(f"accelerate launch exited with status {code}; see the job's log")
    return _read_json(out / RESULT_FILE)


def leave_process_group() -> None:
    """Tear down torch.distributed before exit: left to the interpreter's shutdown, gloo's
    threads can abort the process ("terminate called without an active exception")."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def bound_to_launcher(job_id: str) -> bool:
    """Make this worker die with the launcher that started it (whose command line names the
    job); False when that launcher is gone already (this process was re-parented)."""
    die_with_parent()
    if not sys.platform.startswith("linux"):
        return True
    try:
        parent = Path(f"/proc/{os.getppid()}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return job_id.encode() in parent


def cancel_message(job: TrainJob, step: int | None) -> str:
    return (
        f"cancelled at step {step}; checkpoint saved. Continue with train_adapter resume=true "
        f"adapter_id={job.adapter_id} (CLI: learnloop train --role {job.role} --dataset {job.dataset.id} "
        f"--resume --adapter-id {job.adapter_id})"
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
