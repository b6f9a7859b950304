"""The dashboard's door: only GET and HEAD, security headers on every answer, and (when a token
is set: always off loopback) the bearer token, or a cookie derived from it. A browser cannot send
a bearer header, so `?token=` is taken once: the answer sets an HttpOnly, SameSite=Strict cookie
and redirects to the same page without the token in its address."""

from __future__ import annotations

import hashlib
import hmac
from http.cookies import SimpleCookie
from urllib.parse import parse_qsl, urlencode

from starlette.responses import PlainTextResponse, RedirectResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

COOKIE = "learnloop_dashboard"
SAFE_METHODS = ("GET", "HEAD")
HEADERS = [
    # Scripts and styles only from the dashboard itself: an injected inline script could not run.
    (
        b"content-security-policy",
        b"default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; form-action 'self'",
    ),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (b"cache-control", b"no-store"),
]


def cookie_value(token: str) -> str:
    """What the cookie holds: derived from the token, so the token itself never sits in a cookie."""
    return hmac.new(token.encode(), b"learnloop dashboard session", hashlib.sha256).hexdigest()


def _same(sent: str, expected: str) -> bool:
    return hmac.compare_digest(sent.encode("utf-8", "replace"), expected.encode())


def guarded(app: ASGIApp, token: str | None) -> ASGIApp:
    """An ASGI app that lets only authorised GET/HEAD requests through to `app`."""
    session = cookie_value(token) if token else ""

    async def guard(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *HEADERS]
            await send(message)

        if scope["method"] not in SAFE_METHODS:
            answer = PlainTextResponse("The dashboard is read-only: only GET and HEAD.\n", 405, {"Allow": "GET, HEAD"})
            await answer(scope, receive, with_headers)
            return
        if token:
            headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope.get("headers") or []}
            jar = SimpleCookie()
            try:
                jar.load(headers.get("cookie", ""))
            except Exception:  # a malformed Cookie header is no cookie
                jar = SimpleCookie()
            query = parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
            given = [v for k, v in query if k == "token"]
            if given and _same(given[-1], token):
                rest = urlencode([(k, v) for k, v in query if k != "token"])
                answer = RedirectResponse(scope["path"] + (f"?{rest}" if rest else ""), 303)
                answer.set_cookie(COOKIE, session, httponly=True, samesite="strict", path="/")
                await answer(scope, receive, with_headers)
                return
            bearer = _same(headers.get("authorization", ""), f"Bearer {token}")
            cookie = COOKIE in jar and _same(jar[COOKIE].value, session)
            if not (bearer or cookie):
                body = "Unauthorized: open the dashboard once with ?token=<token>, or send 'Authorization: Bearer <token>'.\n"
                answer = PlainTextResponse(body, 401, {"WWW-Authenticate": 'Bearer realm="learnloop"'})
                await answer(scope, receive, with_headers)
                return
        await app(scope, receive, with_headers)

    return guard
