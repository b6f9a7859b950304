"""The edges of the MCP server: every stdio line gets an answer, and HTTP is guarded.

stdio: the SDK drops a line it cannot parse (JSON nested deeper than its parser allows, a lone
UTF-16 surrogate, broken JSON, something that is not a JSON-RPC message) without a reply, and the
client waits for ever. `Answering` sits between the SDK's reader and the server and answers each
such line with a JSON-RPC error carrying the request's id when it can be read.

HTTP: the SDK checks the Host and Origin headers (DNS-rebinding protection) only on a loopback
bind. `http_app` passes an allowlist on every bind address and puts a bearer-token check in
front of the server; binding anything but loopback requires a token (`token_for`).
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import os
import secrets
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import mcp_types as types
from mcp.shared.message import SessionMessage
from pydantic import ValidationError

from learning.errors import InvalidInput

TOKEN_FILE = "http_token"
TOKEN_ENV = "LEARNLOOP_TOKEN"
MIN_TOKEN_CHARS = 16
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")
PARSE_ERROR, INVALID_REQUEST = -32700, -32600


# ---- stdio: an answer for every line ---------------------------------------------------------


def _request_id(line: Any) -> int | str | None:
    """The id of a request the SDK could not read, when Python's parser can still find it."""
    data = line
    if isinstance(line, str):
        try:
            data = json.loads(line)
        except (ValueError, RecursionError):
            return None
    if isinstance(data, dict):
        rid = data.get("id")
        if isinstance(rid, (int, str)) and not isinstance(rid, bool):
            return rid
    return None


def unreadable_reply(exc: Exception) -> types.JSONRPCError:
    """The JSON-RPC error for a line the SDK could not turn into a message."""
    errors = exc.errors() if isinstance(exc, ValidationError) else []
    first = errors[0] if errors else {}
    if first.get("type") == "json_invalid":
        reason = str(first.get("msg", "invalid JSON"))
        if "recursion limit" in reason:
            reason += " (JSON may be nested at most about 200 levels deep; flatten the arguments)"
        elif "escape" in reason:
            reason += " (a \\u escape needs 4 hex digits; a lone UTF-16 surrogate such as \\ud800 is not valid Unicode)"
        code, message = PARSE_ERROR, f"Parse error: {reason}"
    else:
        code, message = INVALID_REQUEST, "Invalid request: not a JSON-RPC 2.0 request, notification or response"
    return types.JSONRPCError(
        jsonrpc="2.0", id=_request_id(first.get("input")), error=types.ErrorData(code=code, message=message)
    )


class Answering:
    """The SDK's stdio read stream, except that each line it could not parse is answered with an
    error on the write stream instead of reaching the server as an exception it only logs."""

    def __init__(self, inner: Any, write_stream: Any):
        self.inner, self.write_stream = inner, write_stream

    @property
    def last_context(self) -> Any:  # the SDK reads the sender's context from here
        return getattr(self.inner, "last_context", None)

    async def _answered(self, next_item: Callable[[], Awaitable[Any]]) -> SessionMessage:
        while True:
            item = await next_item()
            if not isinstance(item, Exception):
                return item
            await self.write_stream.send(SessionMessage(unreadable_reply(item)))

    async def receive(self) -> SessionMessage:
        return await self._answered(self.inner.receive)

    async def aclose(self) -> None:
        await self.inner.aclose()

    def __aiter__(self) -> Answering:
        return self

    async def __anext__(self) -> SessionMessage:
        return await self._answered(self.inner.__anext__)

    async def __aenter__(self) -> Answering:
        return self

    async def __aexit__(self, exc_type: Any, exc_val: Any, exc_tb: Any) -> bool | None:
        await self.aclose()
        return None


# ---- HTTP: who may connect -------------------------------------------------------------------


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _check_token(token: str, source: str) -> str:
    if len(token) < MIN_TOKEN_CHARS or not token.isascii() or not token.isprintable() or " " in token:
        raise InvalidInput(
            f"The token from {source} must be at least {MIN_TOKEN_CHARS} printable ASCII characters without "
            "spaces; leave it out and learnloop generates one in the home."
        )
    return token


def token_for(home: Path, host: str, given: str | None) -> tuple[str | None, str]:
    """The bearer token HTTP clients must send, and where it came from: --token, else
    $LEARNLOOP_TOKEN, else (off loopback) <home>/http_token, generated with mode 0600 on first use.
    On loopback without a given token: none (only this machine can connect)."""
    if given:
        return _check_token(given, "--token"), "--token"
    if os.environ.get(TOKEN_ENV):
        return _check_token(os.environ[TOKEN_ENV], TOKEN_ENV), TOKEN_ENV
    if is_loopback(host):
        return None, ""
    path = home / TOKEN_FILE
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        os.chmod(path, 0o600)
        return _check_token(path.read_text().strip(), str(path)), str(path)
    with os.fdopen(fd, "w") as handle:
        handle.write(secrets.token_urlsafe(32) + "\n")
    return path.read_text().strip(), f"{path} (new)"


def allowed_hosts(host: str, extra: list[str]) -> list[str]:
    """Host names clients may use to reach the server: loopback, the bind address, this machine's
    names and addresses, and the names given with --allow-host."""
    names = {*LOOPBACK_NAMES, *extra}
    if host not in ("0.0.0.0", "::", ""):
        names.add(host)
    else:
        for name in (socket.gethostname(), socket.getfqdn()):
            names.add(name)
            try:
                names.update(str(info[4][0]) for info in socket.getaddrinfo(name, None))
            except OSError:
                pass
    return sorted(names)


def security_settings(host: str, extra: list[str]) -> Any:
    from mcp.server.transport_security import TransportSecuritySettings

    hosts = [f"[{h}]" if ":" in h else h for h in allowed_hosts(host, extra)]
    return TransportSecuritySettings(
        enable_dns_rebinding_protection=True,
        allowed_hosts=[p for h in hosts for p in (h, f"{h}:*")],
        allowed_origins=[f"{scheme}://{h}{port}" for h in hosts for scheme in ("http", "https") for port in ("", ":*")],
    )


ASGI = Callable[[dict, Callable[[], Awaitable[dict]], Callable[[dict], Awaitable[None]]], Awaitable[None]]


def require_token(app: ASGI, token: str) -> ASGI:
    """An ASGI app that answers 401 to any HTTP request without `Authorization: Bearer <token>`,
    before the server sees it; the comparison takes the same time whatever the token sent."""
    expected = f"Bearer {token}".encode()

    async def guarded(scope: dict, receive: Callable[[], Awaitable[dict]], send: Callable[[dict], Awaitable[None]]):
        if scope["type"] == "http":
            sent = dict(scope.get("headers") or []).get(b"authorization", b"")
            if not hmac.compare_digest(sent, expected):
                body = b"Unauthorized: send the learnloop token as 'Authorization: Bearer <token>'.\n"
                headers = [(b"content-type", b"text/plain"), (b"www-authenticate", b'Bearer realm="learnloop"')]
                await send({"type": "http.response.start", "status": 401, "headers": headers})
                await send({"type": "http.response.body", "body": body})
                return
        await app(scope, receive, send)

    return guarded


def exposure_warning(host: str, port: int, token_source: str) -> str:
    """What start-up says on stderr about who can reach the server."""
    url = f"http://{host}:{port}/mcp"
    if is_loopback(host) and not token_source:
        return f"learnloop MCP server on {url} (this machine only)."
    lines = [f"learnloop MCP server on {url}."]
    if not is_loopback(host):
        lines.append(
            f"WARNING: {host} is reachable from other machines. Anyone who can reach this address and holds "
            "the token can drive learnloop: log and import runs, train, promote, roll back and export adapters."
        )
    lines.append(f"Clients must send 'Authorization: Bearer <token>'; the token is in {token_source}. Keep it secret.")
    return "\n".join(lines)


def require_known_host(app: ASGI, host: str, extra: list[str]) -> ASGI:
    """An ASGI app that answers 421 to a request whose Host header is not one of allowed_hosts
    and 403 to one whose Origin header (when sent) is not (DNS-rebinding protection)."""
    names = set(allowed_hosts(host, extra))

    def known(value: str) -> bool:
        name = value.rsplit("://", 1)[-1]
        name = (
            name[1:].split("]", 1)[0]
            if name.startswith("[")
            else name.rsplit(":", 1)[0]
            if name.count(":") == 1
            else name
        )
        return name in names

    async def guarded(scope: dict, receive: Callable[[], Awaitable[dict]], send: Callable[[dict], Awaitable[None]]):
        if scope["type"] == "http":
            headers = dict(scope.get("headers") or [])
            origin = headers.get(b"origin", b"").decode("latin-1")
            status = 421 if not known(headers.get(b"host", b"").decode("latin-1")) else 0
            status = status or (403 if origin and not known(origin) else 0)
            if status:
                body = b"Unknown Host or Origin: add the name this server is reached by with --allow-host.\n"
                await send(
                    {"type": "http.response.start", "status": status, "headers": [(b"content-type", b"text/plain")]}
                )
                await send({"type": "http.response.body", "body": body})
                return
        await app(scope, receive, send)

    return guarded
