"""Pending rewards: a run logged without a reward is counted apart by run_stats, left out of
curation, drift and experiments, until log_reward scores it with its reward token (library, MCP
and CLI); the store migrates a database made by the schema before, keeping every row and index.
Rewards set once: tests/test_rewards_once.py."""

from __future__ import annotations

import json
import math
import sqlite3
from pathlib import Path

import anyio
import pytest
from mcp import Client

from learning.data import curate
from learning.errors import InvalidInput, NotFound
from learning.routing.drift_arms import arm_rewards
from learning.routing.reward_plot import role_rewards
from learning.runs import record as runs
from learning.runs.rewards import log_reward
from learning.runs.schema import Signals
from learning.runs.stats import run_stats
from learning.store import MIGRATIONS, Store
from server.mcp import build_server
from tests.conftest import run_cli, text_of

PENDING_OUTPUT = "def pending_answer():\n    return 'not scored yet'\n"


def scored(k: int, reward: float = 0.8) -> dict:
    return {
        "role": "coder",
        "instruction": f"write function f{k} returning {k}",
        "output": f"def f{k}():\n    return {k}\n",
        "reward": reward,
    }


def test_a_database_of_the_schema_before_keeps_every_row_and_index(tmp_path):
    db = sqlite3.connect(tmp_path / "learnloop.db")
    for number in range(6):  # the schema as it was before rewards could be pending
        db.executescript(MIGRATIONS[number])
    db.execute("PRAGMA user_version = 6")
    db.executemany(
        "INSERT INTO runs (ts, agent, role, task_key, output, reward, signals, tests, import_key, meta) "
        "VALUES (?, 'a', 'coder', ?, ?, ?, '{\"compiled\":true}', ?, ?, '{\"k\":1}')",
        [
            (1.0e9, "k1", "x = 1", 0.5, '["assert x == 1"]', "abc:1"),
            (1.1e9, "k2", "x = 2", 1.0, None, None),
            (1.2e9, "k3", "x = 3", 0.0, None, "abc:3"),
        ],
    )
    db.execute("DELETE FROM runs WHERE id = 2")  # a gap in the ids must survive too
    db.commit()
    columns = [r[1] for r in db.execute("PRAGMA table_info(runs)")]  # the columns of that schema
    select = f"SELECT {', '.join(columns)} FROM runs ORDER BY id"
    before = [tuple(r) for r in db.execute(select)]
    indexes = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'runs'")}
    db.close()

    store = Store(tmp_path)
    assert store.schema_version() == len(MIGRATIONS)
    with store.read() as conn:
        assert [tuple(r) for r in conn.execute(select)] == before
        names = {
            r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'runs'")
        }
        assert indexes <= names and "runs_import_key" in names
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        # AUTOINCREMENT since migration 8: the highest id given is kept, so ids can be reserved
        assert conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'runs'").fetchone()[0] == 3
        with pytest.raises(sqlite3.IntegrityError):  # the import key is still unique
            conn.execute(
                "INSERT INTO runs (ts, agent, role, task_key, output, import_key) VALUES (1, 'a', 'c', 'k', 'o', 'abc:1')"
            )
        with pytest.raises(sqlite3.IntegrityError):  # and a reward still within [0, 1]
            conn.execute(
                "INSERT INTO runs (ts, agent, role, task_key, output, reward) VALUES (1, 'a', 'c', 'k', 'o', 2)"
            )
    assert runs.get_run(store, 1).tests == ["assert x == 1"]
    new = runs.log_run(store, {"role": "coder", "output": "x = 4"}).run_id
    assert new == 4 and runs.get_run(store, new).reward is None
    store.close()


def test_pending_is_counted_apart_left_out_then_counts_once_scored(store):
    for k in range(12):
        runs.log_run(store, scored(k, 0.5 + k / 100))
    pending = runs.log_run(store, {"role": "coder", "instruction": "an unscored task", "output": PENDING_OUTPUT})
    run_id = pending.run_id
    assert runs.get_run(store, run_id).reward is None

    stats = run_stats(store)
    assert (stats.total_runs, stats.pending) == (13, 1)
    assert (stats.groups[0].runs, stats.groups[0].pending) == (13, 1)
    assert stats.groups[0].mean_reward == pytest.approx(sum(0.5 + k / 100 for k in range(12)) / 12, abs=1e-4)

    dry = curate.make_sft(store, "coder", min_reward=0.0, min_rows=1, dry_run=True)
    assert [(s.step, s.runs_left) for s in dry.funnel] == [("role", 13), ("scored", 12), ("min_reward", 12)]
    made = curate.make_sft(store, "coder", min_reward=0.0, min_rows=1, redact=False)
    assert made.train_rows + made.test_rows == 12
    written = "".join(Path(made.files[k]).read_text() for k in ("train", "test"))
    assert "not scored yet" not in written
    assert len(arm_rewards(store, "coder", None)) == 12 and len(role_rewards(store, "coder")) == 12

    test = "assert pending_answer() == 'not scored yet'"
    first = log_reward(store, run_id, 1.0, signals=None, tests=[test], reward_token=pending.reward_token)
    assert (first.run_id, first.reward, first.previous_reward) == (run_id, 1.0, None)
    stats = run_stats(store)
    assert (stats.total_runs, stats.pending, stats.groups[0].pending) == (13, 0, 0)
    assert len(arm_rewards(store, "coder", None)) == 13
    dry = curate.make_sft(store, "coder", min_reward=0.0, min_rows=1, dry_run=True)
    assert [(s.step, s.runs_left) for s in dry.funnel] == [("role", 13), ("min_reward", 13)]
    run = runs.get_run(store, run_id)
    assert run.tests == ["assert pending_answer() == 'not scored yet'"] and "rewarded_at" in run.meta

    assert [(e.kind, e.reward, e.previous) for e in run.reward_history] == [("scored", 1.0, None)]


def test_all_pending_says_to_score_them(store):
    for k in range(3):
        runs.log_run(store, {**scored(k), "reward": None})
    with pytest.raises(InvalidInput, match="log_reward"):
        curate.make_sft(store, "coder", min_rows=1)


@pytest.mark.parametrize("reward", [1.5, -0.1, True, "0.5", math.nan, math.inf, None])
def test_a_bad_reward_is_refused_and_the_run_stays_pending(store, reward):
    logged = runs.log_run(store, {"role": "coder", "output": "x"})
    with pytest.raises(InvalidInput, match="reward"):
        log_reward(store, logged.run_id, reward, reward_token=logged.reward_token)  # type: ignore[arg-type]
    assert runs.get_run(store, logged.run_id).reward is None


def test_bad_signals_and_tests_are_refused(store):
    logged = runs.log_run(store, {"role": "coder", "output": "x", "signals": {"tests_total": 2}})
    token = logged.reward_token
    with pytest.raises(InvalidInput, match="tests_passed"):  # more than the run's total
        log_reward(store, logged.run_id, 0.5, signals=Signals(tests_passed=3), reward_token=token)
    with pytest.raises(InvalidInput, match="compile"):
        log_reward(store, logged.run_id, 0.5, tests=["assert ("], reward_token=token)
    assert runs.get_run(store, logged.run_id).reward is None


def test_unknown_run_is_not_found(store):
    with pytest.raises(NotFound, match="No run 999"):
        log_reward(store, 999, 0.5, reward_token="any")


def test_mcp_pending_then_scored_and_errors(home):
    async def main():
        async with Client(build_server(str(home))) as client:
            tools = {t.name: t for t in (await client.list_tools()).tools}
            assert set(tools["log_run"].input_schema["required"]) == {"role", "output"}
            assert set(tools["log_reward"].input_schema["required"]) == {"run_id", "reward"}
            logged = await client.call_tool("log_run", {"role": "coder", "output": "x"})
            run_id, token = logged.structured_content["run_id"], logged.structured_content["reward_token"]
            stats = (await client.call_tool("run_stats", {})).structured_content
            assert stats["pending"] == 1 and stats["groups"][0]["mean_reward"] is None
            missing = await client.call_tool("log_reward", {"run_id": 999, "reward": 0.5, "reward_token": token})
            assert missing.is_error and "No run 999" in text_of(missing.content[0])
            for bad in (1.5, "0.5", True):
                args = {"run_id": run_id, "reward": bad, "reward_token": token}
                refused = await client.call_tool("log_reward", args)
                assert refused.is_error and "reward" in text_of(refused.content[0])
            args = {"run_id": run_id, "reward": 0.75, "signals": {"compiled": True}, "reward_token": token}
            ok = await client.call_tool("log_reward", args)
            assert not ok.is_error and ok.structured_content["previous_reward"] is None
            stats = (await client.call_tool("run_stats", {})).structured_content
            assert stats["pending"] == 0 and stats["groups"][0]["mean_reward"] == 0.75

    anyio.run(main)


def test_cli_reward(home):
    logged = run_cli("log", "--role", "coder", "--output", "x", "--json", home=home)
    assert logged.returncode == 0, logged.stderr
    run_id, token = str(json.loads(logged.stdout)["run_id"]), json.loads(logged.stdout)["reward_token"]
    assert "1 pending" in run_cli("stats", home=home).stdout
    missing = run_cli("reward", "999", "0.5", home=home)
    assert missing.returncode != 0 and "No run 999" in missing.stderr
    bad = run_cli("reward", run_id, "3", "--reward-token", token, home=home)
    assert bad.returncode != 0 and "[0, 1]" in bad.stderr
    given = ("--signals", '{"compiled": true}', "--tests", "assert True", "--reward-token", token)
    ok = run_cli("reward", run_id, "0.5", *given, home=home)
    assert ok.returncode == 0 and "was pending" in ok.stdout, ok.stderr
    again = run_cli("reward", run_id, "1", "--reward-token", token, home=home)
    assert again.returncode != 0 and "set once" in again.stderr
    fixed = run_cli("reward", run_id, "1", "--override", "--reason", "the check was wrong", "--json", home=home)
    corrected = json.loads(fixed.stdout)
    assert (corrected["reward"], corrected["previous_reward"]) == (1.0, 0.5)
    stats = json.loads(run_cli("stats", "--json", home=home).stdout)
    assert stats["pending"] == 0 and stats["groups"][0]["mean_reward"] == 1.0


def test_experiment_arms_count_a_run_once_it_is_scored(store):
    from learning.registry import adapters as registry
    from learning.routing import experiments, router

    for adapter_id in ("prod", "cand"):
        registry.create_adapter(store, adapter_id, "coder", "tiny-llama", f"/adapters/{adapter_id}", status="candidate")
    registry.set_production(store, "prod", "test", "test")
    experiments.start_experiment(store, "coder", "cand", "canary", fraction=0.5, seed=1)
    picked = router.select_adapter(store, "coder", task_key="task-0")
    arm = picked.arm
    assert arm is not None  # an experiment runs on the route
    logged = runs.log_run(store, {"role": "coder", "output": "x", "decision_id": picked.decision_id})
    arms = {a.arm: a for a in experiments.list_experiments(store, "coder")[0].arms}
    assert arms[arm].runs == 0 and arms[arm].mean_reward is None
    log_reward(store, logged.run_id, 0.5, reward_token=logged.reward_token)
    arms = {a.arm: a for a in experiments.list_experiments(store, "coder")[0].arms}
    assert arms[arm].runs == 1 and arms[arm].mean_reward == 0.5
