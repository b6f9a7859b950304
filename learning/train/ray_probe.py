"""`python -m learning.train.ray_probe ADDRESS`: what a Ray cluster has, as one JSON line.

Run by the plan (learning/train/cluster.py) in a child process: connecting makes Ray part of
the process for good, which the server must not be. For each alive node: its id, its total
resources, the learnloop version a task placed on it imports (None where it has none), and
whether it has bubblewrap (GRPO's rewards run in the jail on each worker).
"""

from __future__ import annotations

import json
import logging
import sys


def node_facts() -> dict:
    """On a node: its learnloop version (None without one) and whether it has the jail."""
    import shutil

    try:
        from learning import __version__ as version
    except ImportError:
        version = None
    return {"learnloop": version, "bwrap": shutil.which("bwrap") is not None}


# Ray Client's head starts a server process for each connection; on a busy head that start can
# fail once ("Starting Ray client server failed") and succeed on the next connection.
CONNECT_TRIES = 3


def connect(address: str, logging_level: int = logging.ERROR, log_to_driver: bool = False) -> None:
    """`ray.init` on `address`, again after a failed start of Ray Client's server."""
    import time

    import ray

    for attempt in range(1, CONNECT_TRIES + 1):
        try:
            ray.init(address=address, logging_level=logging_level, log_to_driver=log_to_driver)
            return
        except (ConnectionError, RuntimeError) as e:
            if attempt == CONNECT_TRIES or not address.startswith("ray://"):
                raise
            print(f"connecting to {address} failed ({e}); trying again", file=sys.stderr)
            ray.shutdown()
            time.sleep(2 * attempt)


def main(address: str) -> None:
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    connect(address)
    nodes = [n for n in ray.nodes() if n["Alive"]]
    facts = ray.remote(num_cpus=0)(node_facts)
    asked = [
        facts.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote()
        for n in nodes
    ]
    answers = ray.get(asked, timeout=60)
    found = [
        {
            "id": n["NodeID"],
            "resources": {k: v for k, v in n["Resources"].items() if k in ("CPU", "GPU", "memory")},
            **answer,
        }
        for n, answer in zip(nodes, answers)
    ]
    print(json.dumps({"ray": ray.__version__, "nodes": found}))


if __name__ == "__main__":
    main(sys.argv[1])
