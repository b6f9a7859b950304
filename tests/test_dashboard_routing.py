"""The dashboard's Routing page: each running Thompson experiment's arm posteriors (mean,
credible interval, P(best)) equal those computed here from the runs logged, a canary shows its
split, every running experiment's verdict is detect_drift's on its traffic without a check being
recorded, and each role's recorded checks are charted over time. Free text renders as text."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pytest
from scipy import integrate, stats
from starlette.testclient import TestClient

from learning.registry import adapters as registry
from learning.routing import drift
from learning.routing.experiments import start_experiment
from learning.routing.router import select_adapter
from learning.runs.record import log_run
from learning.store import Store
from server.dashboard.app import build_app
from server.dashboard.charts import number
from server.dashboard.routing_view import p_best

HOSTILE_REASON = "<script>alert('exp')</script>"
TASKS = 120
CHECK_EVERY = 10  # the canary is checked (and the check recorded) after every 10 tasks


def _promote(store: Store, adapter_id: str, role: str) -> None:
    registry.create_adapter(store, adapter_id, role, "tiny", f"/a/{adapter_id}", status="candidate")
    registry.set_production(store, adapter_id, "test", "test")


def _serve(store: Store, role: str, means: dict[str, float], rng: random.Random, key: str) -> tuple[str, float]:
    """Route one task through the router (recording its decision) and log the run it served."""
    chosen = select_adapter(store, role, task_key=key)
    assert chosen.arm is not None
    reward = round(min(1.0, max(0.0, rng.gauss(means[chosen.arm], 0.15))), 3)
    log_run(store, {"role": role, "output": "x", "reward": reward, "decision_id": chosen.decision_id})
    return chosen.arm, reward


def _build(root: Path) -> dict:
    """coder: a Thompson experiment whose candidate earns far more; fixer: a 50% canary whose
    candidate earns less, checked with detect_drift as its runs come in."""
    store = Store(root)
    _promote(store, "coder-prod", "coder")
    registry.create_adapter(store, "coder-cand", "coder", "tiny", "/a/coder-cand", status="candidate")
    thompson = start_experiment(store, "coder", "coder-cand", "thompson", seed=3, reason=HOSTILE_REASON)
    _promote(store, "fixer-prod", "fixer")
    registry.create_adapter(store, "fixer-cand", "fixer", "tiny", "/a/fixer-cand", status="candidate")
    canary = start_experiment(store, "fixer", "fixer-cand", "canary", fraction=0.5, seed=1)
    rng = random.Random(7)
    logged: dict[str, dict[str, list[float]]] = {"coder": {}, "fixer": {}}
    for i in range(TASKS):
        arm, reward = _serve(store, "coder", {"candidate": 0.85, "control": 0.3}, rng, f"c{i}")
        logged["coder"].setdefault(arm, []).append(reward)
        arm, reward = _serve(store, "fixer", {"candidate": 0.5, "control": 0.7}, rng, f"f{i}")
        logged["fixer"].setdefault(arm, []).append(reward)
        if (i + 1) % CHECK_EVERY == 0:
            drift.detect_drift(store, experiment_id=canary.id)
    drift.detect_drift(store, experiment_id=thompson.id)
    return {"thompson": thompson.id, "canary": canary.id, "logged": logged}


@pytest.fixture(scope="module")
def routed(tmp_path_factory):
    root = tmp_path_factory.mktemp("routing")
    return root, _build(root)


@pytest.fixture(scope="module")
def page(routed):
    answer = TestClient(build_app(Store(routed[0]))).get("/routing")
    assert answer.status_code == 200, answer.text
    return answer.text


def _section(page: str, attribute: str, value: str) -> str:
    found = re.search(rf'<section [^>]*{attribute}="{re.escape(value)}"[^>]*>(.*?)</section>', page, re.S)
    assert found, value
    return found.group(1)


def _cells(row: str) -> dict[str, str]:
    """A row's figures by class: <td class="mean">0.8123</td> -> {"mean": "0.8123"}."""
    return dict(re.findall(r'class="([\w-]+)">([^<]*)<', row))


def _arm_rows(section: str) -> dict[str, dict[str, str]]:
    rows = re.findall(r'<tr data-arm="(\w+)">(.*?)</tr>', section, re.S)
    return {arm: _cells(row) for arm, row in rows}


def test_thompson_posteriors_are_the_routers_beta_over_the_logged_runs(routed, page):
    _, built = routed
    arms = _arm_rows(_section(page, "data-experiment", built["thompson"]))
    assert set(arms) == {"control", "candidate"}
    for arm, rewards in built["logged"]["coder"].items():
        n, s = len(rewards), sum(rewards)
        a, b = 1 + s, 1 + n - s
        shown = arms[arm]
        assert int(shown["runs"]) == n and float(shown["sum"]) == pytest.approx(s, abs=1e-4)
        assert shown["mean"] == f"{(1 + s) / (2 + n):.4f}"
        low, mean, high = float(shown["low"]), float(shown["mean"]), float(shown["high"])
        assert 0 <= low < mean < high <= 1
        assert shown["low"] == f"{stats.beta.ppf(0.025, a, b):.4f}"
        assert shown["high"] == f"{stats.beta.ppf(0.975, a, b):.4f}"
    best = {arm: float(cells["p-best"]) for arm, cells in arms.items()}
    assert abs(sum(best.values()) - 1) < 0.01 and best["candidate"] > 0.9


def test_p_best_agrees_with_numeric_integration():
    params = [(12.0, 9.0), (15.0, 8.0)]
    exact, _ = integrate.quad(lambda x: stats.beta.pdf(x, *params[1]) * stats.beta.cdf(x, *params[0]), 0, 1)
    shares = p_best(params)
    assert shares == p_best(params)  # seeded: the same data, the same figure
    assert abs(shares[1] - exact) < 0.01 and abs(sum(shares) - 1) < 1e-9


def test_a_canary_shows_its_split_and_each_arms_runs_and_mean(routed, page):
    _, built = routed
    section = _section(page, "data-experiment", built["canary"])
    assert 'class="posterior"' not in section
    arms = _arm_rows(section)
    for arm, rewards in built["logged"]["fixer"].items():
        assert arms[arm]["share"] == "0.50"
        assert int(arms[arm]["runs"]) == len(rewards)
        assert arms[arm]["mean"] == f"{round(sum(rewards) / len(rewards), 4):.4f}"


def _drift_rows(store: Store) -> list[tuple]:
    with store.read() as conn:
        return [tuple(r) for r in conn.execute("SELECT * FROM drift_checks ORDER BY id")]


def test_each_verdict_is_detect_drifts_and_the_page_records_nothing(routed):
    root, built = routed
    store = Store(root)
    with store.read() as conn:
        before = list(conn.iterdump())
    checks = _drift_rows(store)
    page = TestClient(build_app(store)).get("/routing").text
    assert _drift_rows(store) == checks
    with store.read() as conn:
        assert list(conn.iterdump()) == before
    for key in ("thompson", "canary"):
        verdict = re.search(
            r'<table class="verdict">(.*?)</table>', _section(page, "data-experiment", built[key]), re.S
        )
        assert verdict
        shown = _cells(verdict.group(1))
        checked = drift.detect_drift(store, experiment_id=built[key], record=False)
        assert shown["decision"] == checked.decision
        assert shown["needed"] == str(checked.more_runs_needed)
        for cls, value in (("change", checked.relative_change), ("p-value", checked.p_value)):
            assert shown[cls] == (f"{value:.4f}" if value is not None else "–")
    assert _drift_rows(store) == checks
    canary = drift.detect_drift(store, experiment_id=built["canary"], record=False)
    assert canary.decision == "regression"  # the candidate earns 0.5 against 0.7 on 120 runs


def test_drift_history_charts_every_recorded_check(routed, page):
    root, _ = routed
    section = _section(page, "data-role", "fixer")
    assert section.count("<polyline") == 3  # change, its low and its high end
    with Store(root).read() as conn:
        rows = conn.execute("SELECT ts, result FROM drift_checks WHERE role = 'fixer' ORDER BY id").fetchall()
    results = [json.loads(r["result"]) for r in rows]
    assert len(results) == TASKS // CHECK_EVERY
    charted = [r for r in results if r["ci_low"] is not None]
    assert charted and section.count("<circle") == 3 * len(charted)
    for r in charted:
        assert f"→ {number(r['relative_change'])}</title>" in section
        assert f"→ {number(r['ci_low'])}</title>" in section and f"→ {number(r['ci_high'])}</title>" in section
    table = re.findall(r'<tr class="check">(.*?)</tr>', section, re.S)
    assert len(table) == 10
    newest = results[::-1][:10]
    assert [_cells(row)["decision"] for row in table] == [r["decision"] for r in newest]
    assert "<polyline" in _section(page, "data-role", "coder")  # its one check, charted as points


def test_free_text_renders_as_text(page):
    assert "<script>alert" not in page
    assert "&lt;script&gt;alert(&#39;exp&#39;)&lt;/script&gt;" in page


def test_a_drift_check_that_no_longer_reads_is_left_out_of_the_history(tmp_path):
    store = Store(tmp_path)
    log_run(store, {"role": "coder", "output": "x", "reward": 0.5})
    drift.insert_drift_check(store, 1.0, "coder", None, None, "no_change", '{"edited": "by hand"')
    drift.insert_drift_check(store, 2.0, "coder", None, None, "no_change", '{"role": "coder"}')
    assert drift.drift_history(store, "coder") == []
    assert TestClient(build_app(store)).get("/routing").status_code == 200
