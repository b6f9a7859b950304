"""A training job on a Ray cluster: the job process drives Ray Train, the workers run the recipe.

The job process (the Ray driver) packs what the workers need and cannot reach (the dataset,
a local base, the adapter a run starts from, the checkpoint it resumes) into Ray's object
store, and starts a `TorchTrainer` with one worker per process (gloo on CPU, nccl on GPU).
Each worker unpacks into a scratch folder of its node and runs `recipe.train` as a local
process of a distributed run would; the home and its database are never touched from there.

What comes back goes through a `Relay` actor: rank 0's progress (written to the job row as
it comes), each checkpoint as soon as it is complete (so a run that fails can resume from the
home), and at the end the adapter folder. The driver passes a cancel to the relay, and rank 0
broadcasts it to every worker at the same step, as in a local run.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import ray

from learning.jobs.manage import JobCancelled, JobContext
from learning.train.checkpoints import newest_intact
from learning.train.cluster import ClusterTarget
from learning.train.distributed import cancel_message
from learning.train.job import BaseRef, TrainJob
from learning.train.ray_probe import connect

POLL_S = 0.5
KEEP_CHECKPOINTS = 2  # as the trainer keeps them locally (save_total_limit)
Files = dict[str, bytes]  # a folder: relative path -> content
# A larger local base is not copied to every node: the workers read it at the same path
# (shared storage), as they read a hub id from the hub or their cache.
SHIP_BASE_BYTES = 2 * 2**30


@ray.remote(num_cpus=0)
class Relay:
    """Messages from rank 0 to the driver, and the cancel the other way."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, Any]] = []
        self.cancel = False

    def send(self, kind: str, value: Any) -> None:
        self.messages.append((kind, value))

    def take(self) -> list[tuple[str, Any]]:
        taken, self.messages = self.messages, []
        return taken

    def request_cancel(self) -> None:
        self.cancel = True

    def cancelled(self) -> bool:
        return self.cancel


def read_folder(folder: Path, skip: tuple[str, ...] = ()) -> Files:
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not str(p.relative_to(folder)).startswith(skip)
    }


def write_folder(files: Files, folder: Path) -> None:
    for name, content in files.items():
        path = (folder / name).resolve()
        if not path.is_relative_to(folder.resolve()):
            raise ValueError(f"a file named {name!r} would land outside {folder}")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)


# ---- the driver (the job process) ------------------------------------------------------


def pack(job: TrainJob, base_path: str) -> dict[str, Any]:
    """What the workers cannot reach: the dataset, a local base, the start adapter, the checkpoint."""
    home_ckpt = Path(job.adapter_dir) / "checkpoints"
    resume_from, _ = newest_intact(home_ckpt)
    shipped_base = Path(base_path).is_dir() and _size(Path(base_path)) <= SHIP_BASE_BYTES
    return {
        "dataset": read_folder(Path(job.dataset.path)),
        "base": read_folder(Path(base_path)) if shipped_base else None,
        "start_from": read_folder(Path(job.start_from.path)) if job.start_from else None,
        "checkpoint": (Path(resume_from).name, read_folder(Path(resume_from))) if resume_from else None,
    }


def _size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def run_on_ray(ctx: JobContext, job: TrainJob, target: ClusterTarget, base_path: str) -> dict[str, Any]:
    """Train on the cluster and bring the adapter back into the home; the result as a local run's."""
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    started = time.time()
    ctx.progress(force=True, stage="launching", message=f"{job.num_processes} Ray Train workers at {target.address}")
    connect(target.address, logging_level=logging.WARNING, log_to_driver=True)
    out = Path(job.adapter_dir)
    for stale in ("cancelled.json", "result.json"):
        (out / stale).unlink(missing_ok=True)
    relay = Relay.remote()
    config = {
        "job": job.model_dump(),
        "bundle": [ray.put(pack(job, base_path))],
        "relay": relay,
        "home_base": base_path,
    }
    trainer = TorchTrainer(
        worker_loop,
        train_loop_config=config,
        torch_config=TorchConfig(backend="nccl" if target.use_gpu else "gloo"),
        scaling_config=ScalingConfig(
            num_workers=job.num_processes, use_gpu=target.use_gpu, resources_per_worker=target.resources_per_worker
        ),
        run_config=RunConfig(
            name=ctx.job_id,
            storage_path=str(Path(tempfile.gettempdir()) / "learnloop-ray"),
            failure_config=FailureConfig(max_failures=0),  # a lost worker fails the job; resume continues it
        ),
    )
    outcome: dict[str, Any] = {}
    thread = threading.Thread(target=_fit, args=(trainer, outcome), daemon=True)
    thread.start()
    running = True
    while running:
        thread.join(POLL_S)
        running = thread.is_alive()  # once it ended, what it sent is taken one last time
        if ctx.cancelled():
            relay.request_cancel.remote()
        for kind, value in ray.get(relay.take.remote()):
            if kind == "progress":
                if value.get("stage") == "train" and "startup_s" not in ctx._progress:
                    value = {**value, "startup_s": round(time.time() - started, 1)}  # submit to first step
                ctx.progress(force="stage" in value, **value)
            elif kind == "checkpoint":
                _store_checkpoint(out / "checkpoints", *value)
            elif kind == "adapter":
                write_folder(value, out)
    if "error" in outcome:
        raise RuntimeError(_failure_message(job, outcome["error"], out / "checkpoints")) from outcome["error"]
    if (out / "cancelled.json").exists():
        raise JobCancelled(cancel_message(job, json.loads((out / "cancelled.json").read_text()).get("step")))
    if not (out / "result.json").exists():
        raise RuntimeError("the Ray Train run ended without an adapter; see the job's log")
    return json.loads((out / "result.json").read_text())


def _fit(trainer: Any, outcome: dict[str, Any]) -> None:
    try:
        trainer.fit()
    except Exception as exc:  # reported by the driver's loop, with what to do
        outcome["error"] = exc


def _failure_message(job: TrainJob, error: BaseException, ckpt_dir: Path) -> str:
    cause = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    newest, _ = newest_intact(ckpt_dir)
    then = (
        f"its latest checkpoint ({Path(newest).name}) is in the home: continue with train_adapter resume=true "
        f"adapter_id={job.adapter_id} (a different worker count is fine)"
        if newest
        else "no checkpoint was complete yet: train again"
    )
    return f"a Ray Train worker failed ({type(error).__name__}: {cause[:300]}); {then}"


def _store_checkpoint(ckpt_dir: Path, name: str, files: Files) -> None:
    """Write a checkpoint whole, then keep the newest few, as the trainer does locally."""
    if not re.fullmatch(r"checkpoint-\d{1,9}", name):  # a name from a worker: never a path
        raise ValueError(f"a worker sent a checkpoint named {name[:80]!r}")
    partial = ckpt_dir / f".incoming-{name}"
    shutil.rmtree(partial, ignore_errors=True)
    write_folder(files, partial)
    shutil.rmtree(ckpt_dir / name, ignore_errors=True)
    partial.rename(ckpt_dir / name)
    numbered = sorted((p for p in ckpt_dir.glob("checkpoint-*") if p.is_dir()), key=lambda p: int(p.name.split("-")[1]))
    for old in numbered[:-KEEP_CHECKPOINTS]:
        shutil.rmtree(old, ignore_errors=True)


# ---- a worker ----------------------------------------------------------------------------


class RelayContext:
    """The job context a worker's recipe gets: progress and the cancel through the relay."""

    def __init__(self, relay: Any, job_id: str):
        self.relay, self.job_id = relay, job_id
        self.params: dict[str, Any] = {}
        self._progress: dict[str, Any] = {}

    def progress(self, force: bool = False, **fields: Any) -> None:
        self._progress.update(fields)
        self.relay.send.remote("progress", fields)

    def cancelled(self) -> bool:
        return ray.get(self.relay.cancelled.remote())

    def log(self, message: str) -> None:
        print(message, flush=True)  # Ray sends workers' output to the driver, whose log is the job's


def worker_loop(config: dict[str, Any]) -> None:
    """One Ray Train worker: unpack, train, and (rank 0) send the checkpoints and the adapter back."""
    import ray.train

    from learning.train.recipe import train

    rank0 = ray.train.get_context().get_world_rank() == 0
    home_job = TrainJob.model_validate(config["job"])
    scratch = Path(tempfile.mkdtemp(prefix="learnloop-worker-"))
    job = _unpacked(home_job, ray.get(config["bundle"][0]), scratch, config["home_base"])
    ctx = RelayContext(config["relay"], ray.train.get_context().get_experiment_name())
    sender = _CheckpointSender(Path(job.adapter_dir) / "checkpoints", config["relay"]) if rank0 else None
    try:
        result = train(ctx, job)  # type: ignore[arg-type]  # RelayContext stands in for JobContext
    except JobCancelled:
        result = None  # rank 0 wrote cancelled.json, which goes back with the adapter folder
    finally:
        if sender:
            sender.stop()
    if rank0:
        out = Path(job.adapter_dir)
        if result is not None:
            (out / "result.json").write_text(json.dumps(result))
        _home_paths(out, {job.adapter_dir: home_job.adapter_dir, job.base.ref: config["home_base"]}, home_job.base)
        # Waited for: the relay runs one caller's calls in order, so every earlier message is in too.
        ray.get(config["relay"].send.remote("adapter", read_folder(out, skip=("checkpoints",))))
    shutil.rmtree(scratch, ignore_errors=True)


def _unpacked(job: TrainJob, bundle: dict[str, Any], scratch: Path, home_base: str) -> TrainJob:
    """The job with every path in the worker's scratch folder."""
    write_folder(bundle["dataset"], scratch / "dataset")
    update: dict[str, Any] = {
        "adapter_dir": str(scratch / "adapter"),
        "dataset": job.dataset.model_copy(update={"path": str(scratch / "dataset")}),
    }
    if bundle["base"] is not None:
        write_folder(bundle["base"], scratch / "base")
        update["base"] = BaseRef(kind="path", ref=str(scratch / "base"))
    elif job.base.kind != "hub":  # too large to ship: read at the driver's path (shared storage)
        update["base"] = BaseRef(kind="path", ref=home_base)
    if bundle["start_from"] is not None and job.start_from is not None:
        write_folder(bundle["start_from"], scratch / "start_from")
        update["start_from"] = job.start_from.model_copy(update={"path": str(scratch / "start_from")})
    if bundle["checkpoint"] is not None:
        name, files = bundle["checkpoint"]
        write_folder(files, scratch / "adapter" / "checkpoints" / name)
    (scratch / "adapter").mkdir(parents=True, exist_ok=True)
    return job.model_copy(update=update)


def _home_paths(folder: Path, paths: dict[str, str], base: BaseRef) -> None:
    """Name the home's folders and the base as given, not the worker's scratch, in the metadata
    and the result."""
    for name in ("metadata.json", "result.json"):
        path = folder / name
        if path.exists():
            text = path.read_text()
            for scratch, home in paths.items():
                if scratch:
                    text = text.replace(json.dumps(scratch)[1:-1], json.dumps(home)[1:-1])
            data = json.loads(text)
            if "base_model" in data:  # the worker saw a folder; the run was asked for this base
                shipped = {k: v for k, v in data["base_model"].items() if k not in ("kind", "ref")}
                data["base_model"] = {**base.stored(), **shipped}
            path.write_text(json.dumps(data, indent=2))


class _CheckpointSender:
    """Rank 0 sends each checkpoint once it is complete (trainer_state.json is written last)."""

    def __init__(self, ckpt_dir: Path, relay: Any):
        self.ckpt_dir, self.relay, self.sent = ckpt_dir, relay, set()
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._watch, daemon=True)
        self.thread.start()

    def _watch(self) -> None:
        while not self.done.wait(POLL_S):
            self.send_new()

    def send_new(self) -> None:
        newest, _ = newest_intact(self.ckpt_dir)
        if newest and Path(newest).name not in self.sent:
            self.sent.add(Path(newest).name)
            self.relay.send.remote("checkpoint", (Path(newest).name, read_folder(Path(newest))))

    def stop(self) -> None:
        self.done.set()
        self.thread.join()
        self.send_new()
