"""The real MCP server driven by the SDK's own client: in-process, over stdio and over HTTP."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time

import anyio
import pytest
from mcp import Client, StdioServerParameters

from server.mcp import build_server
from tests.conftest import LEARNLOOP, ROOT, annotations_of, subprocess_env, text_of

RUN = {
    "role": "coder",
    "instruction": "add two numbers",
    "output": "def add(a, b):\n    return a + b",
    "reward": 1.0,
    "signals": {"compiled": True, "tests_passed": 3, "tests_total": 3},
}


def test_tools_listed_with_schemas_and_annotations(home):
    async def main():
        async with Client(build_server(str(home))) as client:
            tools = {t.name: t for t in (await client.list_tools()).tools}
            assert {"log_run", "import_runs", "run_stats", "job_status", "wait_job", "cancel_job"} <= set(tools)
            log = tools["log_run"]
            assert set(log.input_schema["required"]) == {"role", "output"}  # no reward: pending
            assert log.input_schema.get("additionalProperties") is False
            assert log.output_schema is not None
            assert log.output_schema["properties"]["run_id"]
            assert annotations_of(tools["run_stats"]).read_only_hint is True
            assert annotations_of(tools["log_run"]).read_only_hint is False
            assert "after every task" in (log.description or "")

    anyio.run(main)


def test_log_run_and_stats_in_process(home):
    async def main():
        async with Client(build_server(str(home))) as client:
            first = await client.call_tool("log_run", RUN)
            assert not first.is_error and first.structured_content["run_id"] == 1
            await client.call_tool("log_run", {**RUN, "reward": 0.0, "signals": {"compiled": False}})
            stats = (await client.call_tool("run_stats", {"role": "coder"})).structured_content
            assert stats["total_runs"] == 2
            assert stats["groups"][0]["mean_reward"] == 0.5 and stats["groups"][0]["compile_rate"] == 0.5
            jsonl = "\n".join(json.dumps({**RUN, "output": f"x{i}"}) for i in range(5))
            imported = (await client.call_tool("import_runs", {"jsonl": jsonl})).structured_content
            assert imported["imported"] == 5

    anyio.run(main)


@pytest.mark.parametrize(
    "args, expected",
    [
        ({**RUN, "reward": 1.5}, "reward"),
        ({**RUN, "reward": "lots"}, "reward"),
        ({k: v for k, v in RUN.items() if k != "output"}, "output"),
        ({**RUN, "rewrd": 1}, "rewrd"),
        ({**RUN, "adapter_id": "coder-20990101-000000"}, "Unknown adapter_id"),
    ],
)
def test_bad_input_is_a_tool_error_naming_the_field(home, args, expected):
    async def main():
        async with Client(build_server(str(home))) as client:
            result = await client.call_tool("log_run", args)
            assert result.is_error
            assert expected in text_of(result.content[0])
            stats = (await client.call_tool("run_stats", {})).structured_content
            assert stats["total_runs"] == 0

    anyio.run(main)


def test_stdio_server_spawned_from_the_cli(home):
    params = StdioServerParameters(
        command=LEARNLOOP[0], args=[*LEARNLOOP[1:], "serve", "--home", str(home)], env=subprocess_env(), cwd=str(ROOT)
    )

    async def main():
        async with Client(params) as client:
            for i in range(3):
                result = await client.call_tool("log_run", {**RUN, "output": f"v{i}"})
                assert result.structured_content["run_id"] == i + 1
            stats = (await client.call_tool("run_stats", {})).structured_content
            assert stats["total_runs"] == 3

    anyio.run(main)


def test_server_start_does_not_import_torch(home):
    code = (
        "import sys; from server.mcp import build_server; build_server(sys.argv[1]); "
        "heavy = [m for m in ('torch', 'transformers', 'peft', 'trl', 'datasets') if m in sys.modules]; "
        "print(','.join(heavy))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(home)],
        capture_output=True,
        text=True,
        env=subprocess_env(),
        cwd=ROOT,
        check=True,
    )
    assert out.stdout.strip() == ""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_streamable_http_transport(home):
    port = _free_port()
    proc = subprocess.Popen(
        [*LEARNLOOP, "serve", "--transport", "http", "--port", str(port), "--home", str(home)],
        env=subprocess_env(),
        cwd=ROOT,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.1)

        async def main():
            async with Client(f"http://127.0.0.1:{port}/mcp") as client:
                result = await client.call_tool("log_run", RUN)
                assert result.structured_content["run_id"] == 1

        anyio.run(main)
        # The dashboard beside the tools, under /ui, its links made under /ui too.
        import httpx

        page = httpx.get(f"http://127.0.0.1:{port}/ui/runs", timeout=10)
        assert page.status_code == 200 and 'href="/ui/runs/1"' in page.text and 'href="/runs' not in page.text
        assert httpx.get(f"http://127.0.0.1:{port}/ui/static/dashboard.css", timeout=10).status_code == 200
        assert httpx.post(f"http://127.0.0.1:{port}/ui/runs", timeout=10).status_code == 405
    finally:
        proc.terminate()
        proc.wait(timeout=10)
