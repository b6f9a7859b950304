"""The dashboard in a real browser (the system's chromium, driven by Playwright): no hostile script
runs on any page, the pages load their CSS and script under the Content-Security-Policy, and the
jobs page updates a running job in place. Screenshots go to the test's tmp folder."""

from __future__ import annotations

import shutil
import socket
import threading
import time

import pytest
import uvicorn

from learning.jobs.queries import update_job
from learning.store import Store, dumps
from server.dashboard.app import build_app
from tests.support.dashboard_home import HOSTILE_AGENT, HOSTILE_OUTPUT, build_home

pytestmark = pytest.mark.slow
sync_api = pytest.importorskip("playwright.sync_api", reason="needs playwright (pip install playwright)")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """The dashboard on a free loopback port, in a thread of this process."""
    root = tmp_path_factory.mktemp("dash-browser")
    hostile = build_home(root)
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(build_app(Store(root)), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started, "the dashboard did not start"
    yield root, hostile, f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None:
        pytest.skip("needs chromium on PATH (Debian: apt-get install chromium)")
    with sync_api.sync_playwright() as p:
        launched = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield launched
        launched.close()


def test_no_hostile_script_runs_and_every_page_loads_cleanly(served, browser, tmp_path):
    root, hostile, url = served
    page = browser.new_page()
    dialogs, errors = [], []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    paths = ["/", "/runs", f"/runs/{hostile}", "/runs?role=judge", "/adapters", "/adapters/coder-a1", "/routing"]
    for i, path in enumerate(paths):
        answer = page.goto(url + path)
        assert answer is not None and answer.status == 200, path
        page.hover("body")  # an injected onmouseover would fire now
        page.screenshot(path=str(tmp_path / f"page-{i}.png"), full_page=True)
    assert dialogs == [] and errors == [], (dialogs, errors)
    page.goto(f"{url}/runs/{hostile}")
    assert page.inner_text("#output") == HOSTILE_OUTPUT
    assert HOSTILE_AGENT in page.inner_text("main")
    assert page.evaluate("getComputedStyle(document.querySelector('header')).display") == "flex"  # CSS loaded


def test_the_jobs_page_follows_a_running_job_without_reloading(served, browser, tmp_path):
    root, _, url = served
    page = browser.new_page()
    page.goto(url + "/jobs")
    steps = page.locator('tr[data-job="train-run1"] [data-field="steps"]')
    assert steps.inner_text() == "3/10"
    page.evaluate("window.notReloaded = true")
    update_job(Store(root), "train-run1", progress=dumps({"step": 7, "total_steps": 10, "loss": 0.9, "eta_s": 12}))
    sync_api.expect(steps).to_have_text("7/10", timeout=10_000)  # polled every 2 s
    assert page.evaluate("window.notReloaded") is True
    assert page.locator('tr[data-job="train-run1"] [data-field="loss"]').inner_text() == "0.900"
    page.screenshot(path=str(tmp_path / "jobs.png"), full_page=True)
