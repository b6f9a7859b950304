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


def main(address: str) -> None:
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    ray.init(address=address, logging_level=logging.ERROR, log_to_driver=False)
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
