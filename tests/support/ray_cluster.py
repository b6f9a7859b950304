"""A real two-node Ray cluster on loopback, for the cluster tests.

Ray never advertises a loopback address while the machine has another interface, and tests
may only send traffic to loopback: the cluster lives in a network namespace of its own that has
only `lo` (as root, `unshare --net`), where every node is 127.0.0.1. Whatever must talk to the
cluster (the CLI, the training job it starts) runs in that namespace too (`nsenter --net`).

Each node runs `ray start --block` in a session of its own and is ended by its process group;
Ray's own `ray stop` would end every Ray process of the machine, so it is never used. Every
process left with the cluster's temp dirs in its command line is killed at the end.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from learning.jobs.manage import die_with_parent

GCS_PORT = 6379
CLIENT_PORT = 10001
# Ray 2.60's head hands its Ray Client server the runtime-env agent's port before it is chosen
# (port 0) unless it is given: the client's per-session server then fails to start.
RUNTIME_ENV_AGENT_PORT = 6402
OBJECT_STORE_BYTES = 150 * 1024 * 1024


def _ends_with_the_tests_gently() -> None:
    """SIGTERM to a node's `ray start` when the test process dies, however it dies: `ray start
    --block` then takes its node down instead of outliving it."""
    die_with_parent(signal.SIGTERM)


def unavailable() -> str | None:
    """Why a loopback cluster cannot run here, or None."""
    if not sys.platform.startswith("linux") or os.geteuid() != 0:
        return "needs root on Linux for a network namespace of its own"
    if not (shutil.which("unshare") and shutil.which("nsenter") and shutil.which("ip")):
        return "needs unshare, nsenter and ip (util-linux, iproute2)"
    try:
        import ray  # noqa: F401
    except ImportError:
        return "needs Ray: pip install -e '.[cluster]'"
    return None


@dataclass
class LoopbackCluster:
    root: Path
    holder: subprocess.Popen | None = None
    nodes: list[subprocess.Popen] = field(default_factory=list)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{GCS_PORT}"

    @property
    def client_address(self) -> str:
        return f"ray://127.0.0.1:{CLIENT_PORT}"

    def inside(self, argv: list[str]) -> list[str]:
        """`argv` run in the cluster's network namespace."""
        assert self.holder is not None
        return ["nsenter", f"--net=/proc/{self.holder.pid}/ns/net", "--", *argv]

    def run(self, argv: list[str], timeout: float = 600, env: dict[str, str] | None = None):
        return subprocess.run(self.inside(argv), capture_output=True, text=True, timeout=timeout, env=env)

    def start(self, cpus_per_node: int = 1, nodes: int = 2) -> None:
        # The namespace lives as long as this process: unshare itself is in it (--fork).
        self.holder = subprocess.Popen(
            ["unshare", "--net", "--fork", "--kill-child", "sleep", "infinity"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=die_with_parent,  # SIGKILL: unshare ignores SIGTERM
        )
        time.sleep(0.2)
        subprocess.run(self.inside(["ip", "link", "set", "lo", "up"]), check=True)
        common = [
            "--block",
            "--num-cpus",
            str(cpus_per_node),
            "--num-gpus",
            "0",
            "--object-store-memory",
            str(OBJECT_STORE_BYTES),
            "--disable-usage-stats",
        ]
        ray = str(Path(sys.executable).with_name("ray"))
        head = [ray, "start", "--head", "--port", str(GCS_PORT), "--include-dashboard", "false"]
        head += ["--ray-client-server-port", str(CLIENT_PORT), "--runtime-env-agent-port", str(RUNTIME_ENV_AGENT_PORT)]
        self._node(head + common + ["--temp-dir", str(self.root / "node0")], "node0")
        self.wait_for_nodes(1)
        for i in range(1, nodes):
            worker = [ray, "start", "--address", self.address, *common, "--temp-dir", str(self.root / f"node{i}")]
            self._node(worker, f"node{i}")
        self.wait_for_nodes(nodes)

    def _node(self, argv: list[str], name: str) -> None:
        (self.root / name).mkdir(parents=True, exist_ok=True)
        log = (self.root / f"{name}.log").open("ab")
        self.nodes.append(
            subprocess.Popen(
                self.inside(argv),
                stdout=log,
                stderr=log,
                start_new_session=True,
                preexec_fn=_ends_with_the_tests_gently,
            )
        )

    def wait_for_nodes(self, count: int, timeout: float = 120) -> None:
        probe = f"import ray; ray.init(address='{self.address}', logging_level='ERROR'); print(sum(n['Alive'] for n in ray.nodes()))"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            out = self.run([sys.executable, "-c", probe], timeout=60)
            if out.returncode == 0 and out.stdout.strip().splitlines()[-1:] == [str(count)]:
                return
            time.sleep(1)
        logs = "\n".join((self.root / f"node{i}.log").read_text()[-1500:] for i in range(len(self.nodes)))
        raise RuntimeError(f"the loopback Ray cluster did not reach {count} nodes in {timeout} s:\n{logs}")

    def client_server_logs(self) -> str:
        """The tails of the head's Ray Client server logs, for a failure's message."""
        logs = sorted((self.root / "node0").glob("session_*/logs/ray_client_server*.err"))
        return "\n".join(f"== {log.name}\n{log.read_text(errors='replace')[-1500:]}" for log in logs)

    def leftovers(self) -> list[psutil.Process]:
        """Processes whose command line names this cluster's temp dirs (every Ray process of it)."""
        mark, found = str(self.root), []
        for proc in psutil.process_iter(["cmdline"]):
            try:
                if any(mark in part for part in proc.info["cmdline"] or ()):
                    found.append(proc)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        return found

    def workers(self) -> list[psutil.Process]:
        """The Ray Train workers running now (their process title is ray::RayTrainWorker...)."""
        found = []
        for proc in self.leftovers_and_children():
            try:
                if "RayTrainWorker" in " ".join(proc.cmdline()):
                    found.append(proc)
            except psutil.NoSuchProcess:
                continue
        return found

    def leftovers_and_children(self) -> list[psutil.Process]:
        procs = {}
        for node in self.nodes:
            try:
                top = psutil.Process(node.pid)
                for p in [top, *top.children(recursive=True)]:
                    procs[p.pid] = p
            except psutil.NoSuchProcess:
                continue
        for p in self.leftovers():
            procs[p.pid] = p
        return list(procs.values())

    def stop(self) -> None:
        everyone = self.leftovers_and_children()
        for node in self.nodes:
            try:
                os.killpg(node.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        _, alive = psutil.wait_procs(everyone, timeout=5)  # a node drains for 30 s on SIGTERM: no need here
        for proc in alive + self.leftovers():
            try:
                proc.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(alive, timeout=5)
        for node in self.nodes:
            node.wait(timeout=10)
        if self.holder is not None:
            self.holder.kill()  # unshare ignores SIGTERM while its child runs; --kill-child ends the sleep
            self.holder.wait(timeout=10)
