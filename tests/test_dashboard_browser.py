"""The dashboard in a real browser (the system's chromium, driven by Playwright): no hostile script
runs on any page, the pages load their CSS and script under the Content-Security-Policy, and the
jobs page updates a running job in place. Screenshots go to the test's tmp folder."""

from __future__ import annotations

import re

import pytest

from learning.jobs.queries import update_job
from learning.store import Store, dumps
from tests.support.dashboard_home import HOSTILE_AGENT, HOSTILE_OUTPUT, build_home
from tests.support.dashboard_serve import chromium, served_app, sync_api

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("dash-browser")
    hostile = build_home(root)
    with served_app(root) as url:
        yield root, hostile, url


@pytest.fixture(scope="module")
def browser():
    with chromium() as launched:
        yield launched


def test_no_hostile_script_runs_and_every_page_loads_cleanly(served, browser, tmp_path):
    root, hostile, url = served
    page = browser.new_page()
    dialogs, errors = [], []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    paths = [
        "/",
        "/runs",
        f"/runs/{hostile}",
        "/runs?role=judge",
        "/adapters",
        "/adapters/coder-a1",
        "/routing",
        "/traffic",
        "/jobs",
    ]
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
    curves = 'tr[data-curves="train-run1"] svg[data-curve="{}"] polyline'
    loss, reward = page.locator(curves.format("loss_curve")), page.locator(curves.format("reward_curve"))
    sync_api.expect(loss).to_have_attribute("points", re.compile(r"^(\S+ ){2}\S+$"))  # 3 points, drawn on load
    page.evaluate("window.notReloaded = true")
    later = {"step": 7, "total_steps": 10, "loss": 0.9, "eta_s": 12, "reward": 0.75, "dropped_share": 0.5}
    later |= {"loss_curve": [[s, 2.0 - s / 5] for s in range(1, 8)], "reward_curve": [[s, s / 8] for s in range(1, 8)]}
    update_job(Store(root), "train-run1", progress=dumps(later))
    sync_api.expect(steps).to_have_text("7/10", timeout=10_000)  # polled every 2 s
    assert page.evaluate("window.notReloaded") is True
    row = page.locator('tr[data-job="train-run1"]')
    assert row.locator('[data-field="loss"]').inner_text() == "0.900"
    assert row.locator('[data-field="reward"]').inner_text() == "0.750"
    assert row.locator('[data-field="dropped_share"]').inner_text() == "0.50"
    assert len(loss.get_attribute("points").split()) == 7 and len(reward.get_attribute("points").split()) == 7
    page.screenshot(path=str(tmp_path / "jobs.png"), full_page=True)
