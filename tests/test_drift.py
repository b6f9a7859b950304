"""Drift: the statistics on known data, a seeded simulation study of false alarms and power,
detect_drift on a real store with auto-rollback, bad input, the MCP tool and the CLI.

Simulated rewards: Beta with mean 0.65 and sd 0.20 (graded agent rewards such as a share of
tests passed), and Bernoulli(0.65) (pass/fail). Repetitions are vectorised with numpy.
Binomial slack for false-alarm rates: 3 standard errors of a proportion at 5%
(4,000 repetitions: 0.05 + 3 * 0.0034 = 0.060).
"""

from __future__ import annotations

import io
import json
import math

import anyio
import numpy as np
import pytest
from mcp import Client
from scipy import integrate, stats

from learning.errors import Conflict, InvalidInput, NotFound
from learning.registry import adapters as registry
from learning.routing import drift, router
from learning.routing import drift_stats as st
from learning.runs import record as runs
from server.mcp import build_server
from tests.conftest import run_cli, text_of
from tests.support import drift_simulation as sim

REPS = 4000
SLACK = 3 * math.sqrt(0.05 * 0.95 / REPS)
LOOKS = list(range(20, 401, 20))


# ---- statistics on known data -------------------------------------------------------------


def test_welch_matches_scipy():
    rng = np.random.default_rng(1)
    new, old = rng.beta(2, 2, 40), rng.beta(3, 2, 55)
    w = st.welch(len(new), new.mean(), new.var(ddof=1), len(old), old.mean(), old.var(ddof=1))
    ref = stats.ttest_ind(new, old, equal_var=False, alternative="less")
    # scipy builds TtestResult's fields at run time, where pyright cannot see them
    statistic, pvalue = ref.statistic, ref.pvalue  # pyright: ignore[reportAttributeAccessIssue]
    assert w["t"] == pytest.approx(statistic) and w["p_drop"] == pytest.approx(pvalue)
    assert w["p_rise"] == pytest.approx(1 - pvalue)


def test_relative_change_and_interval():
    rel, lo, hi = st.relative_ci(100, 0.6, 0.04, 100, 0.8, 0.04, df=198.0)
    assert rel == pytest.approx(-0.25)
    se = math.sqrt(0.04 / 100 + 0.75**2 * 0.04 / 100) / 0.8
    q = stats.t.ppf(0.975, 198)
    assert lo == pytest.approx(-0.25 - q * se) and hi == pytest.approx(-0.25 + q * se)
    assert np.isnan(st.relative_ci(10, 0.5, 0.1, 10, 0.0, 0.0, df=18.0)[0])


def test_msprt_matches_the_mixture_integral():
    d, se, tau = -0.05, 0.02, 0.065
    V = se**2

    def lr(theta):  # likelihood ratio of theta against 0 times the half-normal density
        return 2 * stats.norm.pdf(theta, 0, tau) * math.exp((theta * d - theta**2 / 2) / V)

    expected = integrate.quad(lr, -1, 0)[0]
    log_drop, log_rise = st.msprt(np.array(d), np.array(se), tau)
    assert float(log_drop) == pytest.approx(math.log(expected), rel=1e-6)
    assert float(log_rise) == pytest.approx(math.log(integrate.quad(lr, 0, 1)[0]), rel=1e-6)


def test_decision_rule_on_known_summaries():
    # A clear 15% drop, a tiny but significant drop (below the threshold), no change, all equal.
    big = st.compare(400, 0.55, 0.04, 400, 0.65, 0.04)
    tiny = st.compare(100_000, 0.64, 0.04, 100_000, 0.65, 0.04)
    same = st.compare(400, 0.65, 0.04, 400, 0.65, 0.04)
    flat = st.compare(50, 1.0, 0.0, 50, 1.0, 0.0)
    up = st.compare(400, 0.75, 0.04, 400, 0.65, 0.04)
    assert [int(x["code"]) for x in (big, tiny, same, flat, up)] == [
        st.REGRESSION,
        st.NO_CHANGE,
        st.NO_CHANGE,
        st.NO_CHANGE,
        st.IMPROVEMENT,
    ]
    assert float(flat["p_drop"]) == 1.0 and float(tiny["p_drop"]) < 0.05


def test_runs_needed_formula():
    # Beta(0.65, sd 0.2): s2 = 0.08, effect 0.065, z 1.645 + 0.842 -> ~117 per arm.
    n = st.runs_per_arm_needed(0.04, 0.04, 0.65)
    assert n == math.ceil(0.08 * ((stats.norm.ppf(0.95) + stats.norm.ppf(0.8)) / 0.065) ** 2)
    assert st.runs_per_arm_needed(0.2275, 0.2275, 0.65) > 600  # pass/fail rewards need far more


# ---- simulation study (seeded) ------------------------------------------------------------


@pytest.mark.parametrize("kind", ["beta", "bernoulli"])
def test_false_alarm_rate_at_most_alpha(kind):
    rate = sim.simulate(np.random.default_rng(11), REPS, 200, 0.65, 0.0, kind=kind)
    assert rate <= 0.05 + SLACK


@pytest.mark.parametrize("kind", ["beta", "bernoulli"])
def test_sequential_false_alarm_under_repeated_looks(kind):
    rng = np.random.default_rng(12)
    seq = sim.simulate(rng, REPS, 400, 0.65, 0.0, kind=kind, looks=LOOKS, sequential=True)
    assert seq <= 0.05 + SLACK
    # The fixed-horizon test checked at the same 20 looks would alarm far more often.
    naive = sim.simulate(rng, REPS, 400, 0.65, 0.0, kind=kind, looks=LOOKS, sequential=False)
    assert naive > 0.10


def test_power_for_a_10_percent_drop_with_200_runs_per_arm():
    rng = np.random.default_rng(13)
    assert sim.simulate(rng, 2000, 200, 0.65, 0.10) >= 0.80
    # The sequential test, looking every 20 runs up to 400, finds it too.
    assert sim.simulate(rng, 2000, 400, 0.65, 0.10, looks=LOOKS, sequential=True) >= 0.80


# ---- detect_drift on a real store ---------------------------------------------------------


def put_runs(store, n, mean, adapter_id=None, role="coder", seed=0, sd=0.2, equal=None, **fields):
    rng = np.random.default_rng(seed)
    rewards = [equal] * n if equal is not None else rng.beta(*sim.beta_params(mean, sd), n)
    lines = [
        json.dumps(
            {
                "role": role,
                "output": "x",
                "reward": float(r),
                **fields,
                **({"adapter_id": adapter_id} if adapter_id else {}),
            }
        )
        for r in rewards
    ]
    runs.import_runs(store, io.StringIO("\n".join(lines)))


def promote(store, adapter_id, role="coder"):
    registry.create_adapter(store, adapter_id, role, "tiny", f"/a/{adapter_id}", status="candidate")
    registry.set_production(store, adapter_id, "test", "test")


def test_regression_rolls_back_to_the_replaced_adapter(store):
    promote(store, "a1")
    put_runs(store, 250, 0.65, "a1", seed=1)
    promote(store, "a2")
    put_runs(store, 250, 0.55, "a2", seed=2)
    checked = drift.detect_drift(store, "coder")
    assert checked.decision == "regression" and not checked.rolled_back
    assert (checked.new.adapter_id, checked.old.adapter_id) == ("a2", "a1")
    assert checked.ci_high is not None and checked.p_value is not None and checked.relative_change is not None
    assert checked.ci_high < 0 and checked.p_value < 0.05 and checked.relative_change < -0.05
    result = drift.detect_drift(store, "coder", auto_rollback=True, confirm=True)
    assert result.rolled_back and "a1" in (result.rollback or "")
    assert router.select_adapter(store, "coder").adapter_id == "a1"
    latest = drift.latest_drift(store, "coder")
    assert latest is not None
    assert latest.rolled_back


def test_regression_against_the_base_archives_the_adapter(store):
    put_runs(store, 100, 0.65, seed=3)
    promote(store, "a1")
    put_runs(store, 100, 0.45, "a1", seed=4)
    result = drift.detect_drift(store, "coder", auto_rollback=True, confirm=True)
    assert result.old.adapter_id is None and result.decision == "regression" and result.rolled_back
    assert router.select_adapter(store, "coder").route == "base"


def test_improvement_and_no_change_do_not_roll_back(store):
    promote(store, "a1")
    put_runs(store, 200, 0.55, "a1", seed=5)
    promote(store, "a2")
    put_runs(store, 200, 0.70, "a2", seed=6)
    result = drift.detect_drift(store, "coder", auto_rollback=True, confirm=True, sequential=True)
    assert result.decision == "improvement" and result.method == "msprt" and not result.rolled_back
    assert registry.get_adapter(store, "a2").status == "production"


def test_insufficient_data_never_rolls_back(store):
    promote(store, "a1")
    put_runs(store, 200, 0.9, "a1", seed=7)
    promote(store, "a2")
    put_runs(store, 10, 0.1, "a2", seed=8)  # dreadful, but only 10 runs
    result = drift.detect_drift(store, "coder", auto_rollback=True, confirm=True)
    assert result.decision == "insufficient_data" and not result.rolled_back
    assert result.more_runs_needed >= 20 and "more needed" in result.message
    assert registry.get_adapter(store, "a2").status == "production"


def test_windows_and_equal_rewards(store):
    promote(store, "a1")
    put_runs(store, 50, 0, "a1", equal=1.0, time="2026-01-01T00:00:00Z")
    promote(store, "a2")
    put_runs(store, 50, 0, "a2", equal=1.0, time="2026-01-02T00:00:00Z")
    flat = drift.detect_drift(store, "coder")
    assert flat.decision == "no_change" and flat.p_value == 1.0 and flat.relative_change == 0.0
    empty = drift.detect_drift(store, "coder", since="2030-01-01")
    assert empty.decision == "insufficient_data" and empty.new.runs == 0 and empty.p_value is None
    only_new = drift.detect_drift(store, "coder", since="2026-01-01T12:00:00Z")
    assert only_new.decision == "insufficient_data" and only_new.old.runs == 0 and only_new.new.runs == 50
    last = drift.detect_drift(store, new_id="a2", old_id="a1", last_n=10)
    assert last.new.runs == 10 and last.old.runs == 10 and last.decision == "insufficient_data"


def test_bad_input_is_a_clear_answer(store):
    promote(store, "a1")
    promote(store, "j1", role="judge")
    with pytest.raises(NotFound, match="Known roles"):
        drift.detect_drift(store, "nobody")
    with pytest.raises(InvalidInput, match="different roles"):
        drift.detect_drift(store, new_id="a1", old_id="j1")
    with pytest.raises(InvalidInput, match="same adapter"):
        drift.detect_drift(store, new_id="a1", old_id="a1")
    with pytest.raises(InvalidInput, match="threshold"):
        drift.detect_drift(store, "coder", threshold=5)
    put_runs(store, 5, 0.5, role="fixer")
    with pytest.raises(Conflict, match="no production adapter"):
        drift.detect_drift(store, "fixer")


def test_mcp_detect_drift_needs_confirm_to_roll_back(home):
    from learning.store import Store

    store = Store(home)
    promote(store, "a1")
    put_runs(store, 200, 0.7, "a1", seed=9)
    promote(store, "a2")
    put_runs(store, 200, 0.5, "a2", seed=10)

    async def main():
        async with Client(build_server(str(home))) as client:
            refused = await client.call_tool("detect_drift", {"role": "coder", "auto_rollback": True})
            assert refused.is_error and "confirm" in text_of(refused.content[0])
            checked = (await client.call_tool("detect_drift", {"role": "coder"})).structured_content
            assert checked["decision"] == "regression" and checked["rolled_back"] is False
            done = (
                await client.call_tool("detect_drift", {"role": "coder", "auto_rollback": True, "confirm": True})
            ).structured_content
            assert done["rolled_back"] is True
            unknown = await client.call_tool("detect_drift", {"role": "nobody"})
            assert unknown.is_error and "Known roles" in text_of(unknown.content[0])

    anyio.run(main)
    assert registry.get_adapter(store, "a1").status == "production"


def test_cli_drift_and_report(home, tmp_path):
    from learning.store import Store

    store = Store(home)
    put_runs(store, 60, 0.6, seed=11)
    promote(store, "a1")
    put_runs(store, 60, 0.65, "a1", seed=12)
    out = run_cli("drift", "--role", "coder", "--json", home=home)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["decision"] in ("regression", "improvement", "no_change", "insufficient_data")
    assert result["old"]["adapter_id"] is None and result["new"]["runs"] == 60
    refused = run_cli("drift", "--role", "coder", "--auto-rollback", home=home)
    assert refused.returncode != 0 and "--yes" in refused.stderr
    png = tmp_path / "r.png"
    out = run_cli("report", "--role", "coder", "--out", str(png), home=home)
    assert out.returncode == 0, out.stderr
    assert str(png) in out.stdout.replace("\n", "") and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    out = run_cli("drift", "--role", "nobody", home=home)
    assert out.returncode == 1 and "Known roles" in out.stderr


def test_experiment_arms_compared_on_their_own_traffic(store, monkeypatch):
    from learning.routing import experiments

    promote(store, "prod")
    put_runs(store, 300, 0.2, "prod", seed=14)  # old history outside the experiment: ignored
    registry.create_adapter(store, "cand", "coder", "tiny", "/a/cand", status="candidate", task_type="refactor")
    exp = experiments.start_experiment(store, "coder", "cand", "canary", fraction=0.5, seed=1)
    assert exp.control_id == "prod"  # the role-level adapter serves refactor tasks today
    rng = np.random.default_rng(15)
    for i in range(240):
        s = router.select_adapter(store, "coder", task_type="refactor", task_key=f"k{i}")
        mean = 0.5 if s.arm == "candidate" else 0.7
        runs.log_run(
            store,
            {
                "role": "coder",
                "output": "x",
                "reward": float(rng.beta(*sim.beta_params(mean, 0.2))),
                "decision_id": s.decision_id,
            },
        )  # no task_type repeated: the decision knows
    result = drift.detect_drift(store, experiment_id=exp.id)
    assert result.new.adapter_id == "cand" and result.old.adapter_id == "prod"
    assert result.old.mean_reward is not None
    assert result.new.runs + result.old.runs == 240 and abs(result.old.mean_reward - 0.7) < 0.06
    assert result.decision == "regression" and result.experiment_id == exp.id
