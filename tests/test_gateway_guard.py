"""`learnloop gateway` bound beyond loopback, started for real as a subprocess: the same token and
Host/Origin rules as the MCP server's HTTP transport, and nothing secret printed on stderr.

The backend is a URL where nothing listens, so no model is loaded: the guard answers before it,
and a call that passes the guard gets the gateway's own 502."""

from __future__ import annotations

import stat
import subprocess

import httpx

from tests.conftest import LEARNLOOP, ROOT, run_cli, subprocess_env
from tests.support.servers import free_port, wait_listening

SECRET_PROMPT = "the-secret-prompt-7f3a"


def _start(home, *extra: str, env: dict | None = None) -> tuple[subprocess.Popen, int]:
    port = free_port()
    backend = f"http://127.0.0.1:{free_port()}"
    proc = subprocess.Popen(
        [
            *LEARNLOOP,
            "gateway",
            "--port",
            str(port),
            "--home",
            str(home),
            "--backend",
            backend,
            "--base",
            "base",
            *extra,
        ],
        env=env or subprocess_env(),
        cwd=ROOT,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_listening(proc, port, "the gateway")
    return proc, port


def _status(port: int, headers: dict[str, str], path: str = "/v1/models") -> int:
    return httpx.get(f"http://127.0.0.1:{port}{path}", headers=headers, timeout=10).status_code


def test_beyond_loopback_the_token_host_and_origin_are_checked(home):
    token = "a-gateway-token-0123456789"
    proc, port = _start(home, "--host", "0.0.0.0", "--token", token)
    try:
        good = {"authorization": f"Bearer {token}"}
        assert _status(port, {}) == 401
        assert _status(port, {"authorization": "Bearer " + "x" * len(token)}) == 401
        assert _status(port, {"authorization": token}) == 401
        assert _status(port, good | {"host": "evil.example"}) == 421
        assert _status(port, good | {"origin": "http://evil.example"}) == 403
        assert _status(port, good | {"origin": f"http://localhost:{port}"}) == 200
        assert _status(port, good) == 200
        body = {"model": "learnloop/coder", "messages": [{"role": "user", "content": SECRET_PROMPT}]}
        refused = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", json=body, timeout=10)
        assert refused.status_code == 401
        answered = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", json=body, headers=good, timeout=10)
        assert answered.status_code == 502  # through the guard, to a backend that is down
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=10)
    assert "WARNING" in err and "0.0.0.0" in err and "--token" in err
    assert token not in err and token[:8] not in err and SECRET_PROMPT not in err


def test_beyond_loopback_without_a_token_one_is_generated_in_the_home(home):
    proc, port = _start(home, "--host", "0.0.0.0")
    try:
        token_file = home / "http_token"
        token = token_file.read_text().strip()
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600 and len(token) >= 32
        assert _status(port, {}) == 401
        assert _status(port, {"authorization": f"Bearer {token}"}) == 200
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=10)
    flat = "".join(err.split())  # the terminal's width may wrap the path
    assert str(token_file) in flat and token not in flat and token[:8] not in flat


def test_a_weak_token_is_refused_before_starting(home):
    out = run_cli(
        "gateway",
        "--host",
        "0.0.0.0",
        "--token",
        "short",
        "--home",
        str(home),
        "--backend",
        "http://x:1",
        "--base",
        "b",
    )
    assert out.returncode == 1 and "at least 16" in out.stderr and "short" not in out.stdout


def test_on_loopback_no_token_is_needed_but_the_host_is_still_checked(home):
    proc, port = _start(home)
    try:
        assert _status(port, {}) == 200
        assert _status(port, {"host": "evil.example"}) == 421
        assert _status(port, {"origin": "http://evil.example"}) == 403
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=10)
    assert "this machine only" in err and "WARNING" not in err
