"""`learnloop dashboard`: a read-only web view of the loop, server-rendered (Starlette, Jinja2
with autoescape on, inline SVG charts). It serves only what ships in this folder; the jobs page's
one small script polls /api/jobs/{id} to update running jobs in place."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, Undefined
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from learning.errors import NotFound
from learning.runs.record import get_run
from learning.store import Store
from server.dashboard import routing_view, traffic_view, views
from server.dashboard.figures import FiguresCache
from server.dashboard.guard import guarded
from server.dashboard.queries import BadRequest, run_filters, window_hours

HERE = Path(__file__).parent
STATIC = {"dashboard.css": "text/css", "jobs.js": "text/javascript"}
MAX_ID_DIGITS = 18  # a run id is a SQLite integer


def _num(value: Any, digits: int = 3) -> str:
    if value is None or isinstance(value, Undefined):  # a field the record does not have
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}" if math.isfinite(value) else str(value)
    return str(value)


def _environment() -> Environment:
    env = Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=True)
    env.filters["num"] = _num
    env.filters["p"] = lambda value: _num(value) if not isinstance(value, float) else f"{value:.3g}"
    env.filters["pretty"] = views.pretty
    return env


def _error_pages(page: Callable[..., HTMLResponse]) -> dict[Any, Any]:
    """404 for an unknown page or id (JSON under /api/), 400 for a refused query."""

    async def not_found(request: Request, exc: Exception) -> Response:
        if request.scope["path"].removeprefix(request.scope.get("root_path", "")).startswith("/api/"):
            return JSONResponse({"error": str(exc)}, 404)
        return page("error.html", 404, title="Not found", message=str(exc))

    async def bad_request(request: Request, exc: Exception) -> Response:
        return page("error.html", 400, title="Bad request", message=str(exc))

    async def no_page(request: Request, exc: Exception) -> Response:
        return page("error.html", 404, title="Not found", message="No such page.")

    return {NotFound: not_found, BadRequest: bad_request, 404: no_page}


def build_app(store: Store, token: str | None = None, base: str = "") -> Any:
    """The dashboard over one home's store; with a token, every request must carry it. `base`:
    the path it is served under (links are made with it), e.g. "/ui" beside the MCP server."""
    env = _environment()
    static = {name: (HERE / "static" / name).read_bytes() for name in STATIC}
    figures = FiguresCache(store)

    def page(template: str, status: int = 200, **context: Any) -> HTMLResponse:
        html = env.get_template(template).render(home=str(store.home), base=base, **context)
        return HTMLResponse(html, status)

    async def overview(request: Request) -> Response:
        return page("overview.html", **views.overview(store, figures.get()))

    async def runs(request: Request) -> Response:
        filters, limit = run_filters(request.query_params)
        return page("runs.html", **views.runs_page(store, figures.get(), filters, limit))

    async def run(request: Request) -> Response:
        text = request.path_params["run_id"]
        if not (text.isdigit() and len(text) <= MAX_ID_DIGITS):
            raise NotFound(f"No run {text[:80]!r}: a run id is a number.")
        return page("run.html", run=get_run(store, int(text)))

    async def adapters(request: Request) -> Response:
        return page("adapters.html", roles=views.adapters_by_role(store))

    async def adapter(request: Request) -> Response:
        return page("adapter.html", **views.adapter_page(store, request.path_params["adapter_id"]))

    async def jobs(request: Request) -> Response:
        return page("jobs.html", **views.jobs_page(store))

    async def job_api(request: Request) -> Response:
        return JSONResponse(views.job_json(store, request.path_params["job_id"]))

    async def routing(request: Request) -> Response:
        return page("routing.html", **routing_view.routing_page(store))

    async def traffic(request: Request) -> Response:
        hours = window_hours(request.query_params)
        return page("traffic.html", **traffic_view.traffic_page(store, hours))

    async def asset(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in static:  # only the files named above, never a path
            raise NotFound(f"No file {name[:80]!r}.")
        return Response(static[name], media_type=STATIC[name])

    routes = [
        Route("/", overview),
        Route("/runs", runs),
        Route("/runs/{run_id}", run),
        Route("/adapters", adapters),
        Route("/adapters/{adapter_id}", adapter),
        Route("/jobs", jobs),
        Route("/api/jobs/{job_id}", job_api),
        Route("/routing", routing),
        Route("/traffic", traffic),
        Route("/static/{name}", asset),
    ]
    return guarded(Starlette(routes=routes, exception_handlers=_error_pages(page)), token)


def beside(app: Any, dashboard: Any, base: str = "/ui") -> Any:
    """One ASGI app: `dashboard` (built with this base) under `base`, `app` everywhere else.
    The path stays whole and root_path names the base, as ASGI mounts do."""

    async def route(scope: dict, receive: Any, send: Any) -> None:
        path = scope.get("path", "")
        if scope["type"] == "http" and (path == base or path.startswith(base + "/")):
            await dashboard({**scope, "root_path": scope.get("root_path", "") + base}, receive, send)
        else:
            await app(scope, receive, send)

    return route
