"""The plan's side of cluster training, without a cluster: addresses, resources, where workers
fit, and Ray missing (the cluster itself: tests/test_cluster.py)."""

from __future__ import annotations

import os
import subprocess

import pytest

from learning.train.cluster import check_address, check_request, cluster_address, placeable
from tests.conftest import LEARNLOOP, ROOT, subprocess_env


@pytest.mark.parametrize("address", ["ray://10.0.0.5:10001", "head.example.com:6379", "127.0.0.1:6379", "[::1]:6379"])
def test_ray_addresses_are_accepted(address):
    assert check_address(address) == []


@pytest.mark.parametrize(
    "address", ["10.0.0.5", "ray://head", "http://head:8265", "head:0", "head:70000", "a b:1", "; rm -rf /:1"]
)
def test_anything_else_is_refused_with_the_forms_that_work(address):
    (problem,) = check_address(address)
    assert "ray://HOST:PORT" in problem and "HOST:PORT" in problem


def test_the_cluster_comes_from_the_argument_then_the_environment(monkeypatch):
    monkeypatch.delenv("LEARNLOOP_CLUSTER", raising=False)
    assert cluster_address(None) is None and cluster_address("h:1") == "h:1"
    monkeypatch.setenv("LEARNLOOP_CLUSTER", "env:6379")
    assert cluster_address(None) == "env:6379" and cluster_address("local") is None


def test_resources_are_checked_and_need_a_cluster():
    assert check_request(None, {"CPU": 1}) == ["resources_per_worker is for a cluster: give cluster too"]
    assert "unknown resource TPU" in check_request("h:1", {"TPU": 1})[0]
    assert "above 0" in check_request("h:1", {"GPU": 0})[0]
    assert check_request("h:1", {"GPU": 1, "CPU": 8, "memory": 2**34}) == []


def test_a_worker_lives_on_one_node():
    nodes = [{"resources": {"CPU": 3.0, "GPU": 1.0}}, {"resources": {"CPU": 8.0, "GPU": 2.0}}, {"resources": {}}]
    assert placeable(nodes, {"CPU": 1}) == 11
    assert placeable(nodes, {"GPU": 1, "CPU": 4}) == 2  # the first node has 3 CPUs: no GPU worker there
    assert placeable(nodes, {"CPU": 4}) == 2  # 3 + 5 CPUs left over hold none


def test_without_ray_asking_for_a_cluster_says_what_to_install(tmp_path):
    shim = tmp_path / "shim" / "ray"  # an importable `ray` that fails as a missing one does
    shim.mkdir(parents=True)
    (shim / "__init__.py").write_text("raise ImportError('No module named ray')\n")
    out = subprocess.run(
        [*LEARNLOOP, "train", "--role", "coder", "--dataset", "none", "--cluster", "127.0.0.1:6379"],
        env={**subprocess_env(tmp_path / "home"), "PYTHONPATH": os.pathsep.join([str(shim.parent), str(ROOT)])},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode != 0 and "needs Ray on this machine: pip install 'learnloop[cluster]'" in out.stderr


def test_files_a_worker_sends_back_land_only_in_their_folder(tmp_path):
    pytest.importorskip("ray")
    from learning.train.on_ray import _store_checkpoint, write_folder

    home = tmp_path / "adapter"
    write_folder({"adapter_model.safetensors": b"w", "sub/x.json": b"{}"}, home)
    assert (home / "sub" / "x.json").read_bytes() == b"{}"
    for name in ("../outside", "/etc/evil", "sub/../../outside"):
        with pytest.raises(ValueError, match="outside"):
            write_folder({name: b"x"}, home)
    for name in ("../checkpoint-1", "checkpoint-1/../../x", "evil"):
        with pytest.raises(ValueError, match="checkpoint named"):
            _store_checkpoint(home / "checkpoints", name, {"trainer_state.json": b"{}"})
    assert not (tmp_path / "outside").exists() and not (tmp_path / "x").exists()
    _store_checkpoint(home / "checkpoints", "checkpoint-2", {"trainer_state.json": b"{}"})
    assert (home / "checkpoints" / "checkpoint-2" / "trainer_state.json").exists()
