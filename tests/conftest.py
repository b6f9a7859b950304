"""Shared fixtures: a fresh home per test, and the CLI / server commands as subprocesses."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from mcp.types import TextContent, TextResourceContents, Tool, ToolAnnotations

ROOT = Path(__file__).resolve().parent.parent


def subprocess_env(home: Path | None = None) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    if home is not None:
        env["LEARNLOOP_HOME"] = str(home)
    return env


# The `learnloop` console script, run from this checkout (equivalent to the installed script).
LEARNLOOP = [sys.executable, "-m", "server"]


def run_cli(
    *args: str, home: Path | None = None, input: str | None = None, timeout: float = 120
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*LEARNLOOP, *args],
        capture_output=True,
        text=True,
        input=input,
        timeout=timeout,
        env=subprocess_env(home),
        cwd=ROOT,
    )


def text_of(block: object) -> str:
    """The text of one MCP content block (of a tool result or a resource), which must be text."""
    assert isinstance(block, (TextContent, TextResourceContents)), block
    return block.text


def annotations_of(tool: Tool) -> ToolAnnotations:
    """A listed tool's annotations, which every learnloop tool declares."""
    assert tool.annotations is not None, tool.name
    return tool.annotations


def live_processes(*args: str) -> set[int]:
    """Pids of live processes whose command line has every one of args as a whole argument."""
    wanted = {a.encode() for a in args}
    pids = set()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = set((proc / "cmdline").read_bytes().split(b"\0"))
        except OSError:
            continue
        if wanted <= argv:
            pids.add(int(proc.name))
    return pids


@pytest.fixture
def home(tmp_path: Path) -> Path:
    path = tmp_path / "home"
    path.mkdir()
    return path


@pytest.fixture
def store(home: Path):
    from learning.store import Store

    s = Store(home)
    yield s
    s.close()


@pytest.fixture(scope="session")
def real_gguf() -> Path:
    """SmolLM2-135M-Instruct (Q4_1 GGUF), fetched once and cached between runs (tests/realmodel.py)."""
    from tests.realmodel import smollm2_gguf

    return smollm2_gguf()


@pytest.fixture(scope="session")
def imported(real_gguf, tmp_path_factory):
    """A home with SmolLM2's GGUF imported as a base (a ~540 MB float32 folder: once per session,
    shared by the real-model and llama-server tests): (store, the import's record)."""
    from learning.jobs import manage as jobs
    from learning.models import gguf_base
    from learning.store import Store

    store = Store(tmp_path_factory.mktemp("real") / "home")
    started = gguf_base.import_base(store, str(real_gguf), wait_s=0)
    assert started.job_id is not None
    status = jobs.wait_job(store, started.job_id, timeout=900)
    assert status.status == "succeeded", (status.error, status.log_tail)
    yield store, status.result
    store.close()
