"""The run_tests verb: code scored by execution in the sandbox, over a real MCP client and the
CLI; with log=true the run is logged with reward = passed / total."""

from __future__ import annotations

import json
import shutil

import anyio
import pytest
from mcp import Client

from learning.runs.record import get_run
from learning.sandbox.execute import SANDBOX_ENV
from learning.store import Store
from server.mcp import build_server
from tests.conftest import run_cli, text_of

pytestmark = pytest.mark.skipif(
    shutil.which("bwrap") is None, reason="bubblewrap is not installed (apt-get install bubblewrap); CI installs it"
)

CODE = "def add(a, b):\n    return a + b\n"
TESTS = ["assert add(1, 2) == 3", "assert add(-1, 1) == 0", "assert add(2, 2) == 5, 'two and two'"]


@pytest.fixture(autouse=True)
def jailed(monkeypatch):
    monkeypatch.setenv(SANDBOX_ENV, "bwrap")


def test_run_tests_over_mcp_scores_and_logs_the_measured_reward(home):
    async def main():
        async with Client(build_server(str(home))) as client:
            tools = {t.name: t for t in (await client.list_tools()).tools}
            assert set(tools["run_tests"].input_schema["required"]) == {"code", "tests"}
            scored = await client.call_tool("run_tests", {"code": CODE, "tests": TESTS})
            assert not scored.is_error
            got = scored.structured_content
            assert (got["compiled"], got["passed"], got["total"], got["sandbox"]) == (True, 2, 3, "bwrap")
            assert got["errors"] == [None, None, "AssertionError: two and two"] and got["run_id"] is None
            assert got["duration_s"] > 0
            with_setup = await client.call_tool(
                "run_tests", {"code": "y = base * 2", "setup": "base = 21", "tests": ["assert y == 42"]}
            )
            assert with_setup.structured_content["passed"] == 1
            logged = await client.call_tool(
                "run_tests",
                {"code": CODE, "tests": TESTS, "log": True, "role": "coder", "instruction": "add two numbers"},
            )
            return logged.structured_content

    logged = anyio.run(main)
    assert logged["run_id"] is not None and logged["score"] == pytest.approx(2 / 3)
    run = get_run(Store(home), logged["run_id"])
    assert run.reward == pytest.approx(2 / 3) and run.output == CODE and run.role == "coder"
    assert run.signals == {
        "compiled": True,
        "tests_passed": 2,
        "tests_total": 3,
        "sandbox": "bwrap",
        "isolation": "isolated",
    }


@pytest.mark.parametrize(
    "args, expected",
    [
        ({"code": CODE, "tests": []}, "tests"),
        ({"code": CODE, "tests": ["assert ("]}, "tests[0] is not valid Python"),
        ({"code": CODE, "tests": ["x" * 10_001]}, "tests[0] is 10,001 characters"),
        ({"code": CODE, "tests": ["assert True"] * 201}, "tests"),
        ({"code": CODE, "tests": TESTS, "log": True}, "role is required with log=true"),
        ({"code": CODE, "tests": TESTS, "timeout": 0}, "timeout"),
        ({"code": CODE, "tests": TESTS, "log": True, "role": "Bad Role!"}, "the run was not logged"),
    ],
)
def test_bad_input_is_a_tool_error_and_nothing_is_logged(home, args, expected):
    async def main():
        async with Client(build_server(str(home))) as client:
            result = await client.call_tool("run_tests", args)
            assert result.is_error and expected in text_of(result.content[0]), text_of(result.content[0])
            stats = (await client.call_tool("run_stats", {})).structured_content
            assert stats["total_runs"] == 0

    anyio.run(main)


def test_hostile_code_gets_a_result_not_an_error(home):
    async def main():
        async with Client(build_server(str(home))) as client:
            hang = await client.call_tool("run_tests", {"code": "while True:\n    pass", "tests": TESTS, "timeout": 1})
            broken = await client.call_tool("run_tests", {"code": "def add(:", "tests": TESTS})
            return hang.structured_content, broken.structured_content

    hang, broken = anyio.run(main)
    assert hang["timed_out"] and hang["passed"] == 0 and hang["errors"] == ["timed out after 1.0s"] * 3
    assert not broken["compiled"] and broken["error"].startswith("SyntaxError")


def test_run_tests_from_the_cli(home):
    shown = run_cli("run-tests", "--tests", TESTS[0], "--tests", TESTS[2], home=home, input=CODE)
    assert shown.returncode == 0, shown.stderr
    assert "1/2 tests passed" in shown.stdout and "test 2: AssertionError: two and two" in shown.stdout
    logged = run_cli("run-tests", "--code", CODE, "--tests", TESTS[0], "--log", "--role", "coder", "--json", home=home)
    assert logged.returncode == 0, logged.stderr
    out = json.loads(logged.stdout)
    assert out["passed"] == 1 and out["run_id"] == 1 and out["sandbox"] == "bwrap"
    refused = run_cli("run-tests", "--code", CODE, "--tests", "assert (", "--log", home=home)
    assert refused.returncode == 1 and "tests[0] is not valid Python" in refused.stderr
    assert "role is required" in refused.stderr
