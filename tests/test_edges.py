"""Hostile and unlucky input at the edges: every malformed stdio line gets an answer, HTTP needs the
right Host, Origin and token, and bad values are refused with a message that names them."""

from __future__ import annotations

import json
import os
import select
import stat
import subprocess

import anyio
import httpx
import pytest
from mcp import Client

from learning.errors import InvalidInput
from learning.runs.record import import_runs, log_run
from learning.runs.stats import run_stats
from learning.store import Store
from server.mcp import build_server
from tests.conftest import LEARNLOOP, ROOT, run_cli, subprocess_env
from tests.support.servers import free_port, wait_listening
from tests.support.store_helpers import count_runs

RUN = {"role": "coder", "instruction": "add", "output": "def add(a, b): return a + b", "reward": 1.0}
INIT = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "probe", "version": "1"}},
}

BARE = ("RecursionError", "OverflowError", "Traceback")


def nested(levels: int) -> str:
    return '{"a":' * levels + "1" + "}" * levels


# ---- stdio: an answer for every line ---------------------------------------------------------


def test_every_stdio_line_gets_an_answer(home):
    proc = subprocess.Popen(
        [*LEARNLOOP, "serve", "--home", str(home)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=subprocess_env(),
        cwd=ROOT,
    )
    stdin, stdout = proc.stdin, proc.stdout
    assert stdin is not None and stdout is not None

    def ask(line: str, timeout: float = 20) -> dict:
        stdin.write(line.encode() + b"\n")
        stdin.flush()
        ready, _, _ = select.select([stdout], [], [], timeout)
        assert ready, f"no reply within {timeout} s to {line[:80]}"
        return json.loads(stdout.readline())

    try:
        assert "result" in ask(json.dumps(INIT))
        stdin.write(b'{"jsonrpc":"2.0","method":"notifications/initialized"}\n')
        call = '{"jsonrpc":"2.0","id":%d,"method":"tools/call","params":{"name":"log_run","arguments":%s}}'
        deep = ask(call % (2, '{"role":"coder","output":"x","reward":0.5,"meta":' + nested(300) + "}"), timeout=5)
        assert deep["id"] == 2 and "nested" in deep["error"]["message"]
        lone = ask(call % (3, '{"role":"coder","output":"\\ud800","reward":0.5}'), timeout=5)
        assert lone["id"] == 3 and "surrogate" in lone["error"]["message"]
        broken = ask('{"jsonrpc": "2.0", "id": 4, "method":', timeout=5)
        assert broken["id"] is None and broken["error"]["code"] == -32700
        fine = ask(call % (5, json.dumps(RUN)))
        assert fine["id"] == 5 and not fine["result"].get("isError")
    finally:
        stdin.close()
        proc.terminate()
        proc.wait(timeout=10)
    assert count_runs(Store(home)) == 1


# ---- HTTP: Host, Origin and token ------------------------------------------------------------


def _start_http(home, *extra: str, env: dict | None = None):
    port = free_port()
    proc = subprocess.Popen(
        [*LEARNLOOP, "serve", "--transport", "http", "--port", str(port), "--home", str(home), *extra],
        env=env or subprocess_env(),
        cwd=ROOT,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_listening(proc, port, "the server")
    return proc, port


def _post(port: int, headers: dict[str, str]) -> int:
    base = {"content-type": "application/json", "accept": "application/json, text/event-stream"}
    return httpx.post(f"http://127.0.0.1:{port}/mcp", json=INIT, headers=base | headers, timeout=10).status_code


def test_http_on_all_addresses_needs_the_token_and_checks_host_and_origin(home):
    proc, port = _start_http(home, "--host", "0.0.0.0")
    try:
        token_file = home / "http_token"
        token = token_file.read_text().strip()
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600 and len(token) >= 32
        good = {"authorization": f"Bearer {token}"}
        assert _post(port, {}) == 401
        assert _post(port, {"authorization": "Bearer " + "x" * len(token)}) == 401
        assert _post(port, {"authorization": token}) == 401
        assert _post(port, good | {"host": "evil.example"}) == 421
        assert _post(port, good | {"origin": "http://evil.example"}) == 403
        assert _post(port, good) == 200

        async def main():
            from mcp.client.streamable_http import streamable_http_client

            url = f"http://127.0.0.1:{port}/mcp"
            import httpx2

            async with httpx2.AsyncClient(headers={"authorization": "Bearer wrong-token-wrong-token"}) as bad:
                with pytest.raises(BaseException) as refused:  # the client raises a group holding an MCPError
                    async with Client(streamable_http_client(url, http_client=bad)) as client:
                        await client.call_tool("log_run", RUN)
            assert "MCPError" in repr(refused.value)
            assert count_runs(Store(home)) == 0
            async with httpx2.AsyncClient(headers=good) as http:
                async with Client(streamable_http_client(url, http_client=http)) as client:
                    result = await client.call_tool("log_run", RUN)
                    assert result.structured_content["run_id"] == 1

        anyio.run(main)
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=10)
    assert "WARNING" in err and "0.0.0.0" in err and "token" in err
    assert token not in err and token[:8] not in err
    assert count_runs(Store(home)) == 1


def test_http_token_given_in_the_environment_and_checked(home):
    token = "a-token-from-the-environment-0123"
    proc, port = _start_http(home, "--host", "0.0.0.0", env=subprocess_env() | {"LEARNLOOP_TOKEN": token})
    try:
        assert _post(port, {"authorization": f"Bearer {token}"}) == 200
        assert _post(port, {"authorization": f"Bearer {token[:-1]}"}) == 401
        assert not (home / "http_token").exists()
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=10)
    assert token not in err


def test_a_short_token_is_refused(home):
    out = run_cli("serve", "--transport", "http", "--host", "0.0.0.0", "--token", "short", "--home", str(home))
    assert out.returncode == 1 and "at least 16" in out.stderr


# ---- values that must be refused -------------------------------------------------------------


@pytest.mark.parametrize(
    "change, field",
    [
        ({"signals": {"tests_passed": 100, "tests_total": 1}}, "tests_passed"),
        ({"reward": True}, "reward"),
        ({"reward": "0.5"}, "reward"),
        ({"time": "0001-01-01T00:00:00Z"}, "time"),
        ({"time": "9999-12-31T00:00:00Z"}, "time"),
        ({"meta": json.loads(nested(100))}, "meta"),
    ],
)
def test_bad_values_are_refused_in_the_library_and_over_mcp(store, home, change, field):
    with pytest.raises(InvalidInput, match=field):
        log_run(store, RUN | change)

    async def main():
        async with Client(build_server(str(home))) as client:
            result = await client.call_tool("log_run", RUN | change)
            text = result.content[0].text  # type: ignore[union-attr]
            assert result.is_error and field in text and not any(w in text for w in BARE)

    anyio.run(main)
    assert count_runs(store) == 0


def test_a_deeply_nested_import_line_is_a_line_error(store, home, tmp_path):
    lines = [json.dumps(RUN), '{"role":"coder","output":"x","reward":0.5,"meta":' + nested(5000) + "}", json.dumps(RUN)]
    result = import_runs(store, os.fspath(_write(tmp_path / "runs.jsonl", lines)), skip_invalid=True)
    assert result.imported == 2 and result.errors[0].line == 2 and "nested" in result.errors[0].error
    out = run_cli("import", str(tmp_path / "runs.jsonl"), "--skip-invalid", home=home)
    assert out.returncode == 0 and "Traceback" not in out.stderr and "RecursionError" not in out.stderr + out.stdout

    async def main():
        async with Client(build_server(str(home))) as client:
            result = await client.call_tool("import_runs", {"jsonl": "\n".join(lines), "skip_invalid": True})
            assert not result.is_error and result.structured_content["imported"] == 2

    anyio.run(main)


def _write(path, lines):
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize(
    "args", [{"days": 1e308}, {"since": "0001-01-01"}, {"until": "9999-01-01"}, {"since": "2200-01-01"}]
)
def test_time_windows_out_of_range_are_refused(store, home, args):
    with pytest.raises(InvalidInput, match="days|since|until"):
        run_stats(store, **args)
    with pytest.raises(InvalidInput, match="since"):
        run_stats(store, since=1e300)  # type: ignore[arg-type]  # Python callers may pass a Unix time

    async def main():
        async with Client(build_server(str(home))) as client:
            result = await client.call_tool("run_stats", args)
            text = result.content[0].text  # type: ignore[union-attr]
            assert result.is_error and "must be" in text and not any(w in text for w in BARE)

    anyio.run(main)
