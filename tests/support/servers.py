"""Servers the tests run for real on loopback: a free port, a server process waited for until it
listens, and an ASGI app served by uvicorn in a thread for the length of a `with` block."""

from __future__ import annotations

import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_listening(proc: subprocess.Popen, port: int, what: str, timeout: float = 30) -> None:
    """Wait until `proc` accepts connections on `port`; kill it and fail with its stderr if it
    exits or does not listen within `timeout` seconds."""
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise AssertionError(f"{what} did not start: " + (proc.communicate()[1] or ""))


@contextmanager
def served(app: Any) -> Iterator[str]:
    """Serve `app` on a free loopback port; yields its base URL (http://127.0.0.1:PORT)."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    for _ in range(200):
        if server.started:
            break
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
