"""`learnloop dashboard`: the pages show the store's own figures, filters are checked, unknown ids
are 404, it is read-only (405, nothing written), hostile text renders as text, and off loopback
it wants the token (bearer, or ?token= once then a cookie)."""

from __future__ import annotations

import html
import re
import statistics

import pytest
import uvicorn
from starlette.testclient import TestClient

from learning.evaluate.gate import paired_comparison
from learning.jobs.queries import insert_job
from learning.registry import adapters as registry
from learning.runs.record import log_run
from learning.runs.rewards import correct_reward, give_reward
from learning.runs.schema import RewardIn
from learning.runs.stats import run_stats
from learning.store import Store, dumps
from server.dashboard.app import build_app
from server.dashboard.guard import COOKIE
from tests.conftest import run_cli
from tests.support.dashboard_home import (
    ADAPTER_PASSES,
    BASE_PASSES,
    CODER_REWARDS,
    CORRECTED_BY,
    FIXER_REWARDS,
    HOSTILE_AGENT,
    HOSTILE_INSTRUCTION,
    HOSTILE_OUTPUT,
    RUNNING_PROGRESS,
    build_home,
)

TOKEN = "dashboard-token-0123456789"
PAGES = ["/", "/runs", "/adapters", "/jobs", "/routing", "/traffic"]


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    root = tmp_path_factory.mktemp("dash")
    return root, build_home(root)


@pytest.fixture(scope="module")
def client(home):
    return TestClient(build_app(Store(home[0])))


def _part(pattern: str, page: str) -> str:
    """The first group of pattern's first match in page (the test fails without one)."""
    found = re.search(pattern, page, re.S)
    assert found, pattern
    return found.group(1)


def _text(page: str) -> str:
    """A page's visible text, tags dropped and entities decoded."""
    return html.unescape(re.sub(r"<[^>]+>", " ", page))


def test_every_page_answers_and_the_overview_counts_match_the_store(client, home):
    for path in PAGES:
        answer = client.get(path)
        assert answer.status_code == 200, (path, answer.text)
        assert "default-src 'self'" in answer.headers["content-security-policy"]
    stats = run_stats(Store(home[0]), group_by="role")
    overview = client.get("/").text
    assert f'<span class="big" id="total-runs">{stats.total_runs}</span>' in overview
    assert stats.total_runs == 9


def test_the_runs_page_shows_each_roles_count_and_mean_reward(client):
    page = client.get("/runs").text
    for role, runs, mean in (
        ("coder", 6, statistics.mean(CODER_REWARDS)),
        ("fixer", 2, statistics.mean(FIXER_REWARDS)),
    ):
        row = re.search(rf'<tr data-role="{role}">(.*?)</tr>', page, re.S)
        assert row, role
        assert f'<td class="runs">{runs}</td>' in row.group(1)
        assert f'<td class="mean">{mean:.3f}</td>' in row.group(1)
    charts = page.split('<svg class="chart"')[1:]
    assert [c.count("<polyline") for c in charts] == [2, 2]  # per role: coder, fixer (the judge's run is pending)
    assert ">base</text>" in charts[1] and ">coder-a1</text>" in charts[1]  # per adapter
    assert page.count('<tr class="run">') == 9


def test_filters_narrow_the_runs_table(client):
    def rows(query: str) -> list[str]:
        page = client.get("/runs" + query)
        assert page.status_code == 200, page.text
        return re.findall(r'<td class="reward">([^<]*)</td>', page.text)

    assert sorted(rows("?role=coder&min_reward=0.5")) == ["0.500", "0.700", "0.900", "1.000"]
    assert rows("?scored_by=" + CORRECTED_BY) == ["0.900"]  # the latest reward event's actor
    assert rows("?scored_by=pending") == ["–"] and len(rows("?scored_by=logged")) == 7
    page = client.get("/runs?role=coder").text
    assert sorted(re.findall(r'<td class="scored-by">([^<]*)</td>', page)) == [CORRECTED_BY] + ["logged"] * 5
    assert sorted(rows("?role=coder&max_reward=0.4")) == ["0.200", "0.400"]
    assert len(rows("?agent=alice")) == 3
    assert sorted(rows("?adapter_id=coder-a1")) == ["0.500", "1.000"]
    assert rows("?role=nobody") == []
    assert len(rows("?limit=2")) == 2


@pytest.mark.parametrize(
    "query",
    ["min_reward=abc", "max_reward=1.5", "min_reward=-0.1", "min_reward=nan", "min_reward=0.9&max_reward=0.1",
     "limit=0", "limit=x", "limit=100000", "role=" + "r" * 300, "scored_by=" + "s" * 300],
)  # fmt: skip
def test_bad_filter_values_are_400_with_a_message(client, query):
    answer = client.get("/runs?" + query)
    assert answer.status_code == 400
    assert "Bad request" in answer.text and re.search(r"must (be|not)", answer.text), answer.text


def test_one_run_shows_its_whole_exchange_and_unknown_ids_are_404(client, home):
    page = client.get("/runs/1")
    assert page.status_code == 200 and "def f0(): return 0" in page.text
    for bad in ["999999", "abc", "1e3", "-1", "..%2F..%2Fetc%2Fpasswd", "%2e%2e", "1%00", "9" * 40]:
        assert client.get(f"/runs/{bad}").status_code == 404, bad
    for bad in ["nope", "..%2Fcoder-a1", "%2e%2e", "coder-a1%00"]:
        assert client.get(f"/adapters/{bad}").status_code == 404, bad
    assert client.get("/api/jobs/nope").status_code == 404
    assert client.get("/static/..%2Fapp.py").status_code == 404
    assert client.get("/static/app.py").status_code == 404
    assert client.get("/nowhere").status_code == 404


def test_hostile_text_renders_as_text_on_every_page(client, home):
    hostile = home[1]
    for path in [*PAGES, f"/runs/{hostile}", "/runs?role=judge", "/runs?agent=" + HOSTILE_AGENT]:
        page = client.get(path).text
        assert "<script>alert" not in page and "<img src=x" not in page, path
        assert 'onmouseover="alert' not in page and '"onmouseover=alert' not in page, path
    page = client.get(f"/runs/{hostile}").text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert HOSTILE_OUTPUT in _text(page) and HOSTILE_AGENT in _text(page) and HOSTILE_INSTRUCTION in _text(page)
    # A filter value echoed back into the form stays an attribute value.
    form = client.get("/runs", params={"role": '"><script>alert(5)</script>'}).text
    assert "<script>alert(5)" not in form and "&#34;&gt;&lt;script&gt;" in form


def test_adapter_lineage_events_metrics_and_loss_curve(client):
    page = client.get("/adapters/coder-a1").text
    assert "gate passed" in page and "candidate" in page and "eval_loss" in page
    assert page.count("<polyline") == 1  # the loss curve from metadata.json
    assert "coder-a1" in client.get("/adapters").text and "candidate" in client.get("/adapters").text


def test_the_gate_evidence_shows_the_paired_comparison_and_each_task(client):
    page = client.get("/adapters/coder-a1").text
    expected = paired_comparison(ADAPTER_PASSES, BASE_PASSES, 0.95, 0.1)  # what the gate computed
    paired = " ".join(re.sub(r"<[^>]+>", "", _part(r'<p id="paired">(.*?)</p>', page)).split())
    assert f"On {len(ADAPTER_PASSES)} tested tasks" in paired
    assert f"adapter passed {sum(ADAPTER_PASSES)}" in paired and f"base passed {sum(BASE_PASSES)}" in paired
    low, high = expected["interval"]
    assert f"[{low:.3f}, {high:.3f}]" in paired and f"difference {expected['difference']:.3f}" in paired
    assert f"p = {expected['mcnemar']['p_value']:.3g}" in paired
    assert '<p id="gate-verdict" class="status-production">passed</p>' in page
    assert re.findall(r'<tr class="condition"><td>(\w+)</td><td>(yes|no)</td>', page) == [
        ("eval_loss_below_base", "yes"),
        ("tests_not_worse_than_base", "yes"),
        ("pass_rate_not_below_base", "yes"),
    ]
    outcomes = re.findall(r'<tr class="task" data-outcome="([^"]+)">', page)
    pairs = list(zip(ADAPTER_PASSES, BASE_PASSES))
    assert outcomes.count("adapter only") == sum(a and not b for a, b in pairs) == 9
    assert outcomes.count("base only") == sum(b and not a for a, b in pairs) == 1
    assert outcomes.count("both fail") == sum(not a and not b for a, b in pairs) == 1
    assert 'class="chart interval"' in page
    assert HOSTILE_OUTPUT not in page and html.escape(HOSTILE_OUTPUT) in page  # a monitor reason, as text


def test_jobs_page_and_the_json_it_polls(client):
    page = client.get("/jobs").text
    assert 'data-job="train-run1"' in page and "3/10" in page and '<script src="/static/jobs.js">' in page
    finished = page[page.index("<h2>Finished</h2>") :]
    assert "train-done" in finished and finished.count("<polyline") == 1  # the finished job's loss curve
    live = _part(r'<tr class="job-curves" data-curves="train-run1">(.*?)</tr>', page)
    assert 'data-curve="loss_curve"' in live and 'data-curve="reward_curve"' in live  # drawn by jobs.js
    row = _part(r'<tr class="job" data-job="train-run1">(.*?)</tr>', page)
    for field, text in (("steps_per_s", "0.25"), ("reward", "0.625"), ("dropped_share", "0.25"), ("eta_s", "42")):
        assert f'data-field="{field}">{text}</td>' in row, field
    api = client.get("/api/jobs/train-run1").json()
    assert {k: api[k] for k in RUNNING_PROGRESS} == RUNNING_PROGRESS | {
        "loss_curve": [[1.0, 2.0], [2.0, 1.75], [3.0, 1.5]],
        "reward_curve": [[1.0, 0.25], [2.0, 0.5], [3.0, 0.625]],
    }
    assert api["status"] == "running"
    assert client.get("/static/jobs.js").headers["content-type"].startswith("text/javascript")


def test_a_curve_keeps_only_finite_number_pairs(tmp_path):
    store = Store(tmp_path)
    junk = [[1, 2.0], ["<b>", 1], [2, float("nan")], [3], [4, 0.5, 9], {"x": 1}, [True, 1], [5, 0.25]]
    job = dict(kind="train", target="x:y", params="{}", subject=None, status="running", created=0.0)
    insert_job(store, job | dict(id="train-junk", progress=dumps({"loss_curve": junk}), log_path=str(tmp_path / "l")))
    api = TestClient(build_app(store)).get("/api/jobs/train-junk").json()
    assert api["loss_curve"] == [[1.0, 2.0], [5.0, 0.25]] and api["reward_curve"] == []


def test_read_only_405_and_nothing_written(client, home):
    store = Store(home[0])
    with store.read() as conn:
        before = list(conn.iterdump())
    for path in [*PAGES, "/api/jobs/train-run1", "/runs/1"]:
        for method in ("POST", "PUT", "DELETE", "PATCH"):
            answer = client.request(method, path)
            assert answer.status_code == 405 and answer.headers["allow"] == "GET, HEAD", (method, path)
        assert client.head(path).status_code == 200
        client.get(path)
    with store.read() as conn:
        assert list(conn.iterdump()) == before  # the running job with a dead pid was not reconciled either


def test_with_a_token_every_request_needs_it_and_a_browser_gets_a_cookie(home):
    client = TestClient(build_app(Store(home[0]), TOKEN), follow_redirects=False)
    assert client.get("/").status_code == 401
    assert client.get("/?token=wrong-token-0123456789").status_code == 401
    assert client.get("/runs", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
    answer = client.get(f"/runs?role=coder&token={TOKEN}")
    assert answer.status_code == 303 and answer.headers["location"] == "/runs?role=coder"
    cookie = answer.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict") and TOKEN not in cookie
    assert client.get("/runs?role=coder").status_code == 200  # the cookie the client kept
    forged = TestClient(build_app(Store(home[0]), TOKEN), cookies={COOKIE: "forged"})
    assert forged.get("/").status_code == 401


def test_beside_another_app_under_ui_the_links_redirects_and_api_keep_the_base(home):
    from starlette.responses import PlainTextResponse

    from server.dashboard.app import beside

    other = PlainTextResponse("the other app")
    client = TestClient(beside(other, build_app(Store(home[0]), TOKEN, base="/ui")), follow_redirects=False)
    assert client.get("/mcp").text == "the other app" and client.get("/uix").text == "the other app"
    assert client.get("/ui/runs").status_code == 401
    answer = client.get(f"/ui/runs?token={TOKEN}")
    assert answer.status_code == 303 and answer.headers["location"] == "/ui/runs"
    page = client.get("/ui/runs")
    assert page.status_code == 200 and 'href="/ui/runs/' in page.text and 'href="/runs' not in page.text
    assert 'data-base="/ui"' in page.text
    assert client.get("/ui/api/jobs/nope").json()["error"]  # a JSON 404 under the base too


def test_the_command_binds_loopback_and_wants_a_token_off_it(home, monkeypatch):
    started = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: started.update(app=app, **kw))
    monkeypatch.delenv("LEARNLOOP_TOKEN", raising=False)
    shown = run_cli("dashboard", home=home[0])
    assert shown.returncode == 0 and started["host"] == "127.0.0.1", shown.stderr
    assert TestClient(started["app"], base_url="http://127.0.0.1").get("/").status_code == 200
    assert TestClient(started["app"], base_url="http://evil.example").get("/").status_code == 421
    shown = run_cli("dashboard", "--host", "0.0.0.0", "--port", "9999", home=home[0])
    assert shown.returncode == 0 and "WARNING" in shown.stderr and started["port"] == 9999
    assert TestClient(started["app"], base_url="http://127.0.0.1").get("/").status_code == 401
    token = (home[0] / "http_token").read_text().strip()
    answer = TestClient(started["app"], base_url="http://127.0.0.1").get(
        "/", headers={"Authorization": f"Bearer {token}"}
    )
    assert answer.status_code == 200


def test_the_run_figures_are_read_again_whenever_runs_change(tmp_path):
    """Kept between loads, the figures follow every change: a new run, a pending run scored, a
    reward corrected (same count, new reward event)."""
    store = Store(tmp_path)
    client = TestClient(build_app(store))

    def coder_row() -> tuple[str, str]:
        row = _part(r'<tr data-role="coder">(.*?)</tr>', client.get("/runs").text)
        return _part(r'<td class="runs">(\d+)</td>', row), _part(r'<td class="mean">([^<]*)</td>', row)

    first = log_run(store, {"role": "coder", "output": "a", "reward": 0.2}).run_id
    assert coder_row() == ("1", "0.200") and coder_row() == ("1", "0.200")
    pending = log_run(store, {"role": "coder", "output": "b"})
    assert coder_row() == ("2", "0.200")
    give_reward(store, pending.run_id, {"reward": 0.6}, reward_token=pending.reward_token)
    assert coder_row() == ("2", "0.400")
    correct_reward(store, first, RewardIn(reward=1.0), "re-checked", "carol")
    assert coder_row() == ("2", "0.800")
    assert '<span class="big" id="total-runs">2</span>' in client.get("/").text


def test_an_evaluation_record_missing_parts_still_renders(tmp_path):
    """A hand-edited or partial evaluation record: the page shows what it has, never a 500."""
    store = Store(tmp_path)
    folder = tmp_path / "adapters" / "coder-x"
    folder.mkdir(parents=True)
    registry.create_adapter(store, "coder-x", "coder", "tiny", str(folder), status="trained")
    gate = {"passed": False, "conditions": [{"name": "tests_not_worse_than_base", "passed": False, "comparison": {}}]}
    tasks = [{"tested": True, "adapter": None}, {"tested": True, "adapter": {"passed": True}, "base": {"passed": 1}}, 7]
    registry.record_evaluation(store, "coder-x", {"gate": gate, "tasks": tasks}, "partial", None)
    answer = TestClient(build_app(store)).get("/adapters/coder-x")
    assert answer.status_code == 200, answer.text
    assert re.findall(r'data-outcome="([^"]+)"', answer.text) == ["unknown", "both pass"]
    assert '<p id="paired">' not in answer.text


def test_a_limit_in_other_digits_is_400(client):
    assert client.get("/runs?limit=²").status_code == 400
