"""The dashboard's /traffic page: the gateway's runs (recorded for real: two gateways served on
loopback over one home, answered by an in-process stand-in backend), some scored with their reward
tokens, one failed, one left mid-stream; a run the gateway did not record and runs outside the
window must not count. Every figure is checked against the store, computed here on its own."""

from __future__ import annotations

import asyncio
import html
import json
import math
import re
import time
from collections.abc import AsyncIterator
from datetime import datetime, timedelta, timezone
from typing import Any

import httpx
import numpy as np
import pytest
from markupsafe import escape
from starlette.testclient import TestClient

from learning.errors import InvalidInput
from learning.gateway.app import build_app as gateway_app
from learning.gateway.inprocess import BackendError
from learning.gateway.protocol import Call, Generation
from learning.gateway.traffic import MAX_POINTS, traffic
from learning.runs.record import log_run, log_runs
from learning.runs.rewards import log_reward
from learning.store import Store
from server.dashboard.app import build_app
from tests.support.servers import served

HOSTILE_BACKEND = '<img src=x onerror=alert(7)>"'
HOSTILE_MODEL = '"><script>alert(8)</script>'
WAITS_MS = [0, 5, 10, 20, 30, 45, 60, 80]  # the stand-in's delay per coder request: latencies that differ


class StandIn:
    """An in-process backend: "fail" in the prompt is a backend failure, "slow" streams until the
    client leaves, "wait N" answers after N ms."""

    many_choices = False

    def __init__(self, name: str):
        self.name = name

    @staticmethod
    def _text(call: Call) -> str:
        return call.messages[-1]["content"] if call.kind == "chat" else call.prompt

    async def complete(self, call: Call, target: Any) -> Generation:
        text = self._text(call)
        if "fail" in text:
            raise BackendError("the stand-in failed, as asked")
        wait = re.search(r"wait (\d+)", text)
        await asyncio.sleep(int(wait.group(1)) / 1000 if wait else 0)
        return Generation(text="x = 1", prompt_tokens=len(text.split()), completion_tokens=3 + len(text) % 5)

    async def stream(self, call: Call, target: Any) -> AsyncIterator[str | Generation]:
        yield "x ="
        while "slow" in self._text(call):
            await asyncio.sleep(0.05)
            yield " 1"
        yield Generation(text="x = 1", prompt_tokens=2, completion_tokens=4)


def _chat(url: str, model: str, content: str) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": content}]}
    answer = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=30)
    assert answer.status_code in (200, 502), answer.text
    return answer


def _leave_mid_stream(url: str) -> None:
    body = {"model": "learnloop/coder", "messages": [{"role": "user", "content": "slow"}], "stream": True}
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=30) as answer:
        lines = answer.iter_lines()
        assert any("x =" in next(lines) for _ in range(4))


def _gateway_runs(store: Store) -> list[dict[str, Any]]:
    with store.read() as conn:
        rows = conn.execute("SELECT id, ts, role, model, reward, meta FROM runs").fetchall()
    runs = [dict(r) | {"meta": json.loads(r["meta"])} for r in rows]
    return [r for r in runs if isinstance(r["meta"].get("gateway"), dict)]


def _wait_for_aborted(store: Store) -> None:
    for _ in range(200):
        if any(r["meta"]["gateway"]["finish_reason"] == "aborted" for r in _gateway_runs(store)):
            return
        time.sleep(0.05)
    raise AssertionError("the run of the stream the client left was not recorded")


def _record(store: Store) -> list[tuple[int, str]]:
    """Answer requests through two gateways; returns (run id, reward token) of each answer."""
    tokens = []
    with served(gateway_app(store, StandIn("stand-in"), record_failures=True)) as url:
        for i, wait in enumerate(WAITS_MS):
            tokens.append(_chat(url, "learnloop/coder", f"wait {wait} task {i}"))
        for i in range(3):
            tokens.append(_chat(url, "learnloop/fixer", f"wait {5 * i} fix {i}"))
        assert _chat(url, "learnloop/coder", "fail now").status_code == 502  # a failed run: reward 0.0
        _leave_mid_stream(url)
        _wait_for_aborted(store)
    with served(gateway_app(store, StandIn(HOSTILE_BACKEND))) as url:
        tokens += [_chat(url, HOSTILE_MODEL, f"wait {w} plain") for w in (1, 2)]
    return [(int(a.headers["x-learnloop-run-id"]), a.headers["x-learnloop-reward-token"]) for a in tokens]


def _outside_runs(store: Store, like: dict[str, Any]) -> None:
    """Gateway runs like `like` but 3 hours, 10 days and 40 days old; a run now that the gateway
    did not record."""
    now = datetime.now(timezone.utc)
    copy = {"role": like["role"], "model": like["model"], "meta": like["meta"], "agent": "gateway", "output": "old"}
    old = [
        copy | {"time": now - age, "reward": reward}
        for age, reward in ((timedelta(hours=3), 0.5), (timedelta(days=10), None), (timedelta(days=40), 1.0))
    ]
    log_runs(store, old)
    log_run(store, {"role": "coder", "output": "by hand", "reward": 0.9, "meta": {"note": "not the gateway"}})


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    store = Store(tmp_path_factory.mktemp("traffic"))
    answered = _record(store)
    for (run_id, token), reward in zip(answered[::3], (1.0, 0.25, 0.5, 0.75)):
        log_reward(store, run_id, reward, reward_token=token)
    _outside_runs(store, _gateway_runs(store)[0])
    return store


@pytest.fixture(scope="module")
def client(home):
    return TestClient(build_app(home))


def nearest_rank(values: list[float], p: float) -> float:
    return float(np.percentile(values, p, method="inverted_cdf"))


def _expected(store: Store, hours: int, key: str | None = None) -> dict[str, dict[str, Any]]:
    """The figures of the window's gateway runs, per value of key (one group "all" without)."""
    since = time.time() - hours * 3600
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in _gateway_runs(store):
        if r["ts"] >= since:
            name = "all" if key is None else r["meta"]["gateway"]["backend"] if key == "backend" else r[key]
            groups.setdefault(name, []).append(r)
    out = {}
    for name, runs in groups.items():
        latencies = [r["meta"]["gateway"]["latency_ms"] for r in runs]
        finishes = [r["meta"]["gateway"]["finish_reason"] for r in runs]
        out[name] = {
            "requests": len(runs),
            "scored": sum(r["reward"] is not None for r in runs) / len(runs),
            "errors": finishes.count("error") / len(runs),
            "aborted": finishes.count("aborted") / len(runs),
            "p50": nearest_rank(latencies, 50),
            "p95": nearest_rank(latencies, 95),
            "mean": sum(latencies) / len(latencies),
            "prompt": sum(r["meta"]["gateway"]["prompt_tokens"] for r in runs),
            "completion": sum(r["meta"]["gateway"]["completion_tokens"] for r in runs),
        }
    return out


def _share(value: float) -> str:
    return "%.1f%%" % (value * 100)  # noqa: UP031 - as the template's format filter writes it


def _row(page: str, group: str, name: str) -> dict[str, str]:
    row = re.search(rf'<tr data-group="{group}" data-name="{re.escape(escape(name))}">(.*?)</tr>', page, re.S)
    assert row, (group, name)
    return dict(re.findall(r'<td class="(\w+)">(?:<a [^>]*>)?([^<]*)', row.group(1)))


def test_the_totals_match_the_gateway_runs_in_the_window(client, home):
    page = client.get("/traffic").text
    want = _expected(home, 24)["all"]
    assert want["requests"] == len(WAITS_MS) + 3 + 1 + 1 + 2 + 1  # the answered, failed, aborted, plain; 3 h old
    assert f'<span class="big" id="requests">{want["requests"]}</span>' in page
    assert f'id="scored-share">{_share(want["scored"])}<' in page
    assert (
        f'id="error-share">{_share(want["errors"])}<' in page
        and f'id="aborted-share">{_share(want["aborted"])}<' in page
    )
    assert f'id="latency-p50">{want["p50"]:.1f}<' in page and f'id="latency-p95">{want["p95"]:.1f}<' in page
    assert f'id="prompt-tokens">{want["prompt"]}<' in page and f'id="completion-tokens">{want["completion"]}<' in page
    assert "Requests per minute (6-minute buckets, UTC)" in page and page.count("<polyline") == 2


@pytest.mark.parametrize("group, key", [("role", "role"), ("backend", "backend"), ("model", "model")])
def test_each_role_backend_and_model_has_its_row(client, home, group, key):
    page = client.get("/traffic").text
    want = _expected(home, 24, key)
    assert len(re.findall(rf'<tr data-group="{group}"', page)) == len(want)
    for name, figures in want.items():
        row = _row(page, group, name)
        assert row["requests"] == str(figures["requests"]), (name, row)
        for field in ("scored", "errors", "aborted"):
            assert row[field] == _share(figures[field]), (name, field, row)
        for field in ("p50", "p95"):
            assert row[field] == f"{figures[field]:.1f}", (name, field, row)
        assert abs(float(row["mean"]) - figures["mean"]) <= 0.05 + 1e-9, (name, row)  # summed in another order
        assert row["prompt"] == str(figures["prompt"]) and row["completion"] == str(figures["completion"])


def test_the_window_filter(client, home):
    for hours, runs, bucket in ((1, 15, "1-minute"), (24, 16, "6-minute"), (720, 17, "3-hour")):
        page = client.get(f"/traffic?hours={hours}").text
        assert f'<span class="big" id="requests">{runs}</span>' in page, hours
        assert _expected(home, hours)["all"]["requests"] == runs and f"({bucket} buckets, UTC)" in page
        shown = traffic(home, hours)
        assert len(shown.buckets) <= MAX_POINTS and sum(b.requests for b in shown.buckets) == runs
    assert 'href="/traffic"' in client.get("/").text  # the nav link


def test_an_empty_window_says_so(tmp_path):
    page = TestClient(build_app(Store(tmp_path))).get("/traffic?hours=1")
    assert page.status_code == 200 and "No gateway traffic in this window" in page.text


@pytest.mark.parametrize("hours", ["0", "721", "abc", "-1", "1.5", "1e2", "²", "9" * 40, "%00"])
def test_bad_hours_are_400_with_a_message(client, hours):
    answer = client.get("/traffic", params={"hours": hours})
    assert answer.status_code == 400, hours
    assert "Bad request" in answer.text and "hours must be a whole number from 1 to 720" in answer.text


def test_hostile_backend_and_model_names_render_as_text(client, home):
    page = client.get("/traffic").text
    assert "<script>alert(8)" not in page and "<img src=x" not in page and '"><script' not in page
    text = html.unescape(re.sub(r"<[^>]+>", " ", page))
    assert HOSTILE_MODEL in text and HOSTILE_BACKEND in text
    assert {r["model"] for r in _gateway_runs(home)} >= {HOSTILE_MODEL}  # recorded as sent


def test_a_stored_meta_that_is_not_json_is_not_traffic_and_breaks_nothing(tmp_path):
    """NaN in meta, as an older learnloop could write it (log_run refuses it now): not valid JSON,
    so not a gateway run, and the page still answers."""
    store = Store(tmp_path)
    with pytest.raises(InvalidInput, match="NaN or Infinity"):
        log_run(store, {"role": "coder", "output": "x", "reward": 0.5, "meta": {"gateway": {"latency_ms": math.nan}}})
    with store.write() as conn:
        conn.execute(
            "INSERT INTO runs (ts, agent, role, task_key, output, reward, meta) VALUES (?, 'a', 'coder', 'k', 'x', 0.5, ?)",
            (time.time() - 60, '{"gateway":{"latency_ms":NaN}}'),
        )
    assert traffic(store, 1).total.requests == 0
    answer = TestClient(build_app(store)).get("/traffic?hours=1")
    assert answer.status_code == 200, answer.text


def test_a_window_of_uneven_buckets_cuts_only_the_oldest_and_rates_it_over_its_length(tmp_path):
    store = Store(tmp_path)
    now = 1_796_000_000.0
    # One gateway request every 10 minutes, for 241 hours: 2-hour buckets, the oldest one hour.
    runs = [
        {"role": "coder", "output": "x", "time": now - 300 - 600 * i, "meta": {"gateway": {"latency_ms": 5.0}}}
        for i in range(241 * 6)
    ]
    log_runs(store, runs)
    shown = traffic(store, 241, now=now)
    assert shown.bucket_s == 7200 and len(shown.buckets) == 121
    assert shown.buckets[0].seconds == 3600 and all(b.seconds == 7200 for b in shown.buckets[1:])
    assert shown.buckets[-1].start + 7200 == now  # the newest bucket ends now, whole
    assert {round(b.per_minute, 6) for b in shown.buckets} == {0.1} and shown.peak_per_minute == pytest.approx(0.1)
