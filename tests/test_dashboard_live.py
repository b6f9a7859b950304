"""The dashboard over a home the loop itself filled, in a real browser (the system's chromium, by
Playwright): two adapters really trained on the tiny base and evaluated by the gate, one promoted
to production and the other running beside it in a Thompson experiment, and a training job running
while the jobs page draws its loss curve without reloading. Screenshots go to the test's tmp folder."""

from __future__ import annotations

import json
import shutil
import time

import pytest

from learning.jobs.queries import job_row
from learning.registry.adapters import get_adapter
from learning.routing.experiments import list_experiments
from learning.routing.router import experiment_arm_rewards, select_adapter
from learning.runs.record import log_run
from learning.runs.stats import run_stats
from learning.store import Store, loads
from tests.conftest import run_cli
from tests.support.dashboard_serve import chromium, served_app, sync_api
from tests.support.tiny import tiny_base
from tests.support.train_helpers import make_dataset

pytestmark = pytest.mark.slow
RUNS = 24
PAGES = ["/", "/runs", "/runs/1", "/adapters", "/jobs", "/routing", "/traffic"]
TRAIN = ["train", "--role", "coder", "--dataset", "ds-coder", "--base", "embedded:tiny", "--json"]


def _cli(home, *args: str) -> dict:
    out = run_cli(*args, "--json", home=home) if "--json" not in args else run_cli(*args, home=home)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout)


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    """Adapter A trained, evaluated by the gate and promoted to production; B (A's weights copied
    and registered, as an adapter trained elsewhere would be) a candidate in a Thompson experiment."""
    root = tmp_path_factory.mktemp("dash-live")
    store = Store(root)
    tiny_base(store)
    make_dataset(store, "ds-coder", rows=24)
    production = _cli(root, *TRAIN, "--max-steps", "12", "--wait")["adapter_id"]
    _cli(root, "eval", production, "--max-generate", "2", "--wait")
    assert get_adapter(store, production).status == "candidate", get_adapter(store, production).metrics
    _cli(root, "promote", production, "--to", "production", "--reason", "passed the gate", "--yes")
    copy = root / "elsewhere" / "b"
    shutil.copytree(get_adapter(store, production).path, copy)
    base = get_adapter(store, production).base_model
    candidate = _cli(root, "register", str(copy), "--role", "coder", "--base", base)["id"]
    _cli(root, "promote", candidate, "--to", "candidate", "--force", "--reason", "to compare", "--yes")
    _cli(root, "experiment", "start", "--role", "coder", "--candidate", candidate, "--mode", "thompson")
    for i in range(RUNS):  # as an agent works: ask which adapter, do the task, log the run with its reward
        chosen = select_adapter(store, "coder", task_key=f"task-{i}")
        run = {"role": "coder", "output": f"def f(): return {i}", "decision_id": chosen.decision_id}
        log_run(store, run | ({"reward": round(0.1 + 0.8 * (i % 5) / 4, 3)} if i % 6 else {}))  # some pending
    yield root, (production, candidate)
    store.close()


@pytest.fixture(scope="module")
def browser():
    with chromium() as launched:
        yield launched


def test_a_trained_evaluated_promoted_adapter_and_its_experiment_show_as_stored(home, browser, tmp_path):
    root, (production, candidate) = home
    with served_app(root) as url:
        page = browser.new_page()
        page.goto(f"{url}/adapters/{production}")
        adapter = get_adapter(Store(root), production)
        assert adapter.status == "production" and "production" in page.inner_text("main")
        verdict = page.inner_text("#gate-verdict")
        assert verdict == ("passed" if adapter.metrics["gate_passed"] else "failed")
        rows = page.locator("#gate-conditions tr.condition").count()
        assert rows == len(adapter.metrics["gate"]["conditions"])
        assert page.locator("svg.chart polyline").count() == 1  # its real loss curve from metadata.json
        page.screenshot(path=str(tmp_path / "adapter.png"), full_page=True)
        page.goto(f"{url}/routing")
        text = page.inner_text("main")
        assert production in text and candidate in text and "thompson" in text
        page.screenshot(path=str(tmp_path / "routing.png"), full_page=True)
        store = Store(root)
        page.goto(f"{url}/")
        assert page.inner_text("#total-runs") == str(run_stats(store).total_runs) == str(RUNS)
        with store.read() as conn:  # each arm's scored runs, as the router counts them
            arms = {r["arm"]: r["runs"] for r in experiment_arm_rewards(conn, list_experiments(store)[0].id)}
        page.goto(f"{url}/routing")
        for arm, runs in arms.items():
            assert page.locator(f'tr[data-arm="{arm}"] td.runs').first.inner_text() == str(runs), arm
        assert sum(arms.values()) == RUNS - len(range(0, RUNS, 6))  # the pending runs are not an arm's yet


def test_every_page_loads_cleanly_on_the_home_the_loop_filled(home, browser, tmp_path):
    root, _ = home
    with served_app(root) as url:
        page = browser.new_page()
        errors: list[str] = []
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        for i, path in enumerate(PAGES):
            answer = page.goto(url + path)
            assert answer is not None and answer.status == 200, path
            page.screenshot(path=str(tmp_path / f"page-{i}.png"), full_page=True)
        assert errors == []


def test_the_jobs_page_draws_a_running_jobs_loss_curve_as_it_grows(home, browser, tmp_path):
    root, _ = home
    started = _cli(root, *TRAIN, "--max-steps", "100000", "--overrides", '{"logging_steps": 1}', "--no-wait")
    job_id = started["job_id"]
    store = Store(root)
    try:
        _wait_for(lambda: len(_progress(store, job_id).get("loss_curve") or []) >= 2, "two points of the loss curve")
        with served_app(root) as url:
            page = browser.new_page()
            page.goto(url + "/jobs")
            page.evaluate("window.notReloaded = true")
            line = page.locator(f'tr[data-curves="{job_id}"] svg[data-curve="loss_curve"] polyline')
            first = _points(line)
            assert first >= 2
            sync_api.expect(page.locator(f'tr[data-job="{job_id}"] [data-field="steps_per_s"]')).not_to_have_text("–")
            deadline = time.monotonic() + 60
            while _points(line) <= first and time.monotonic() < deadline:
                time.sleep(0.5)
            assert _points(line) > first, "the curve did not grow"
            assert page.evaluate("window.notReloaded") is True
            page.screenshot(path=str(tmp_path / "jobs-live.png"), full_page=True)
    finally:
        run_cli("jobs", job_id, "--cancel", home=root)
        _wait_for(lambda: _status(store, job_id) not in ("queued", "running"), "the job to stop", 120)


def _status(store: Store, job_id: str) -> str | None:
    row = job_row(store, job_id)
    return row["status"] if row is not None else None


def _points(line) -> int:
    return len((line.get_attribute("points") or "").split())


def _progress(store: Store, job_id: str) -> dict:
    row = job_row(store, job_id)
    return loads(row["progress"]) if row is not None and row["progress"] else {}


def _wait_for(check, what: str, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.5)
    raise AssertionError(f"waited {timeout} s for {what}")
