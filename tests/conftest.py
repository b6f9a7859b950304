"""Shared fixtures: a fresh home per test, the CLI run in process (or as a process of its own), and
the `gpu` marker skipped without CUDA. Helpers the tests share live in tests/support/."""

from __future__ import annotations

import os
import subprocess
import sys
import traceback
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
    """`learnloop ARGS` run in this process (click's CliRunner isolation: its own argv, stdin,
    stdout, stderr and environment, through the same entry point as the console script), as a
    finished process: its exit status and its two outputs. For what needs a process of its own
    (start-up imports, signals, a server), use run_cli_process. `timeout` bounds only that one;
    here pytest's timeout does."""
    from click.testing import CliRunner

    from server.entry import main

    env = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    if home is not None:
        env["LEARNLOOP_HOME"] = str(home)
    argv, cwd = sys.argv, os.getcwd()
    with CliRunner().isolation(input=input, env=env) as (out, err, _):
        sys.argv = ["learnloop", *args]
        os.chdir(ROOT)
        try:
            main()
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
            if exc.code is not None and not isinstance(exc.code, int):
                print(exc.code, file=sys.stderr)
        except Exception:  # what the interpreter prints for an uncaught exception
            traceback.print_exc()
            code = 1
        finally:
            sys.argv = argv
            os.chdir(cwd)
            sys.stdout.flush()
            sys.stderr.flush()
        stdout, stderr = out.getvalue().decode(), err.getvalue().decode()
    return subprocess.CompletedProcess([*LEARNLOOP, *args], code, stdout, stderr)


def run_cli_process(
    *args: str, home: Path | None = None, input: str | None = None, timeout: float = 120
) -> subprocess.CompletedProcess:
    """`learnloop ARGS` as a process of its own (`python -m server`), for what in-process can't show."""
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
    """SmolLM2-135M-Instruct (Q4_1 GGUF), fetched once and cached between runs (tests/support/realmodel.py)."""
    from tests.support.realmodel import smollm2_gguf

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


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked `gpu` are skipped without CUDA (torch is imported only when one is collected)."""
    wanting = [item for item in items if item.get_closest_marker("gpu") is not None]
    if not wanting:
        return
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in wanting:
        item.add_marker(skip)
