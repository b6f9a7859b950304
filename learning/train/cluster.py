"""Training on a Ray cluster, as the plan sees it: the target, and what the cluster can place.

`train_adapter(cluster="ray://HOST:PORT")` (Ray Client, from any machine that reaches the head)
or `cluster="HOST:PORT"` (the head's GCS address, from a machine that is a node of the cluster)
runs the same recipe in Ray Train workers (learning/train/on_ray.py). Before any job starts,
the plan asks the cluster (in a child process, so the server never imports Ray) whether it
answers, whether its nodes can place the workers with their resources, whether every node has
this learnloop, and whether the base fits a worker's memory; every problem is refused with
what to do.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from typing import Any

from pydantic import BaseModel, Field

from learning.errors import InvalidInput, check
from learning.train.config import TrainConfig

ENV = "LEARNLOOP_CLUSTER"  # the default cluster when train_adapter names none
INSTALL = "pip install 'learnloop[cluster]'"
ANSWER_S = 5.0  # a head that does not accept a connection in this long does not answer
PROBE_S = 90.0
REFUSED = "Cannot train on the cluster:"
_ADDRESS = re.compile(r"^(ray://)?([A-Za-z0-9.\-]{1,253}|\[[0-9A-Fa-f:]+\]):(\d{1,5})$")


class ClusterTarget(BaseModel):
    """Where and how a job's workers run (recorded in the job's and the adapter's params)."""

    address: str = Field(description="ray://HOST:PORT (Ray Client) or HOST:PORT (the head's GCS address).")
    resources_per_worker: dict[str, float] = Field(description="Ray resources each worker holds: CPU, GPU, memory.")
    use_gpu: bool


def cluster_address(given: str | None) -> str | None:
    """The cluster a run asks for: the argument, else $LEARNLOOP_CLUSTER; 'local' means none."""
    address = given if given is not None else os.environ.get(ENV) or None
    return None if address in (None, "", "local") else address


def check_request(address: str | None, resources: dict[str, float] | None) -> list[str]:
    """What is wrong with a run's cluster arguments, before the cluster is asked."""
    if address is None:
        return ["resources_per_worker is for a cluster: give cluster too"] if resources else []
    problems = check_address(address) + check_resources(resources)
    try:
        import ray  # noqa: F401  (only whether it is installed)
    except ImportError:
        problems.append(f"training on a cluster needs Ray on this machine: {INSTALL}")
    return problems


def check_method(cfg: TrainConfig, nodes: list[dict[str, Any]]) -> list[str]:
    """GRPO scores each worker's answers in the jail of the worker's node, and its workers
    cannot reach the home's store to log samples."""
    if cfg.method != "grpo":
        return []
    problems = []
    if cfg.log_samples:
        problems.append("log_samples writes runs into this machine's store, which a worker cannot reach: leave it off")
    if missing := [n["id"][:8] for n in nodes if not n.get("bwrap")]:
        problems.append(
            f"GRPO's rewards run in the jail on each worker, and node(s) {', '.join(missing)} have no bubblewrap: "
            "install it there (apt-get install bubblewrap)"
        )
    return problems


def check_address(address: str) -> list[str]:
    match = _ADDRESS.match(address)
    if not match or not 0 < int(match.group(3)) < 65536:
        return [
            f"cluster {address!r} is not a Ray address: use ray://HOST:PORT (Ray Client, port 10001 by "
            "default) or HOST:PORT (the head's GCS port, 6379 by default), or 'local'"
        ]
    return []


def check_resources(resources: dict[str, float] | None) -> list[str]:
    unknown = sorted(set(resources or {}) - {"CPU", "GPU", "memory"})
    problems = (
        [f"resources_per_worker: unknown resource {', '.join(unknown)} (use CPU, GPU, memory)"] if unknown else []
    )
    if any(v <= 0 for v in (resources or {}).values()):
        problems.append("resources_per_worker: every amount must be above 0")
    return problems


def _answers(address: str) -> bool:
    match = _ADDRESS.match(address)
    assert match is not None  # check_address passed
    host, port = match.group(2).strip("[]"), int(match.group(3))
    try:
        with socket.create_connection((host, port), timeout=ANSWER_S):
            return True
    except OSError:
        return False


def probe(address: str) -> dict[str, Any]:
    """What the cluster has, asked from a child process: {nodes: [{id, resources, learnloop}], ray}."""
    out = subprocess.run(
        [sys.executable, "-m", "learning.train.ray_probe", address],
        capture_output=True,
        text=True,
        timeout=PROBE_S,
        stdin=subprocess.DEVNULL,
    )
    lines = out.stdout.strip().splitlines()
    if out.returncode != 0 or not lines:
        raise InvalidInput(
            f"Ray at {address} did not answer as a cluster: {(out.stderr.strip().splitlines() or ['no output'])[-1]}"
        )
    return json.loads(lines[-1])


def placeable(nodes: list[dict[str, Any]], need: dict[str, float]) -> int:
    """How many workers needing `need` the nodes can hold at once (a worker lives on one node)."""
    total = 0
    for node in nodes:
        have = node["resources"]
        total += int(min((have.get(name, 0.0) // amount for name, amount in need.items() if amount), default=0))
    return total


def _reach(address: str) -> dict[str, Any]:
    """What the cluster at `address` has; refused when it does not answer."""
    try:
        if _answers(address):
            return probe(address)
        problem = (
            f"no Ray cluster answers at {address} (nothing accepted a connection within {ANSWER_S:.0f} s): "
            "start one (ray start --head) or check the address and that its port is reachable"
        )
    except subprocess.TimeoutExpired:
        problem = f"the Ray cluster at {address} did not answer within {PROBE_S:.0f} s"
    except InvalidInput as exc:
        problem = str(exc)
    raise InvalidInput(f"{REFUSED} {problem}", [problem])


def plan_cluster(
    address: str,
    cfg: TrainConfig,
    workers: int,
    resources: dict[str, float] | None,
    est_memory_mb: float,
    notes: list[str],
) -> ClusterTarget:
    """The target, once the cluster says it can run `workers` workers; every problem refused at once."""
    found = _reach(address)
    nodes = found["nodes"]
    gpus = sum(n["resources"].get("GPU", 0) for n in nodes)
    need = dict(resources or ({"GPU": 1.0} if gpus else {"CPU": 1.0}))
    problems = check_method(cfg, nodes)
    fits = placeable(nodes, need)
    if fits < workers:
        have = "; ".join(
            f"{n['id'][:8]}: {', '.join(f'{k} {v:g}' for k, v in sorted(n['resources'].items()))}" for n in nodes
        )
        problems.append(
            f"the cluster can place {fits} worker(s) needing {need}, not {workers} (its nodes: {have}): "
            "ask for fewer workers (num_processes) or less per worker (resources_per_worker), or add nodes"
        )
    memory_mb = (
        need.get("memory", 0) / 2**20 or max((n["resources"].get("memory", 0) for n in nodes), default=0) / 2**20
    )
    if memory_mb and est_memory_mb > memory_mb:
        problems.append(
            f"the base needs about {est_memory_mb:,.0f} MB per worker, more than a worker can have "
            f"({memory_mb:,.0f} MB): use quantize=4bit, a smaller base, or nodes with more memory"
        )
    from learning import __version__

    stale = sorted({n["learnloop"] or "none" for n in nodes} - {__version__})
    if stale:
        problems.append(
            f"the cluster's nodes run learnloop {', '.join(stale)}, this machine {__version__}: "
            "install the same version on every node"
        )
    notes.append(
        f"cluster {address}: {len(nodes)} node(s), ray {found['ray']}; {workers} worker(s) with {need}, "
        f"{'GPU' if need.get('GPU') else 'CPU'} (gloo on CPU, nccl on GPU)"
    )
    check(problems, REFUSED)
    return ClusterTarget(address=address, resources_per_worker=need, use_gpu=bool(need.get("GPU")))
