"""Runs: log, import, stats on a real SQLite file."""

from __future__ import annotations

import io
import json

import pytest

from learning.errors import InvalidInput
from learning.runs import record as runs
from learning.runs import stats as runstats
from learning.runs.schema import derive_task_key
from tests.support.store_helpers import count_runs


def run(i: int = 0, **kw) -> dict:
    return {
        "role": "coder",
        "output": f"def f{i}(): pass",
        "reward": (i % 10) / 10,
        "instruction": f"task {i % 7}",
        "signals": {"compiled": i % 2 == 0, "tests_passed": i % 5, "tests_total": 4 + 1},
        **kw,
    }


def test_log_run_stores_every_field(store):
    result = runs.log_run(store, run(3, agent="a1", task_type="t", complexity="easy", meta={"k": 1}))
    stored = runs.get_run(store, result.run_id)
    assert stored.role == "coder" and stored.agent == "a1" and stored.complexity == "easy"
    assert stored.reward == pytest.approx(0.3)
    assert stored.signals["tests_passed"] == 3 and stored.meta == {"k": 1}
    assert stored.task_key == derive_task_key("task 3")


@pytest.mark.parametrize(
    "bad, field",
    [
        ({"reward": 1.5}, "reward"),
        ({"reward": "high"}, "reward"),
        ({"reward": float("nan")}, "reward"),
        ({"role": None}, "role"),
        ({"output": ""}, "output"),
        ({"surprise": 1}, "surprise"),
        ({"output": "x" * 10_000_001}, "output"),
    ],
)
def test_bad_runs_name_the_field(store, bad, field):
    data = {**run(), **bad}
    data = {k: v for k, v in data.items() if v is not None}
    with pytest.raises(InvalidInput, match=f"'{field}'"):
        runs.log_run(store, data)
    assert count_runs(store) == 0


def test_import_bad_batch_writes_nothing_of_it(store):
    lines = [json.dumps(run(i)) for i in range(10)]
    lines[7] = '{"role": "coder", "reward": 0.5'  # malformed JSON
    source = io.StringIO("\n".join(lines))
    with pytest.raises(InvalidInput, match="line 8") as err:
        runs.import_runs(store, source, batch_size=5)
    assert "start_line=6" in str(err.value)
    assert count_runs(store) == 5  # the first batch only


def test_import_skip_invalid_keeps_good_lines_and_reports_bad(store):
    body = b"\n".join(
        [
            json.dumps(run(1)).encode(),
            b"\xff\xfe bad",
            json.dumps(run(2)).encode(),
            b"",
            json.dumps({**run(3), "reward": 7}).encode(),
        ]
    )
    result = runs.import_runs(store, io.BytesIO(body), skip_invalid=True)
    assert result.imported == 2 and result.skipped == 2
    assert [e.line for e in result.errors] == [2, 5]
    assert "UTF-8" in result.errors[0].error


def test_stats_by_role_and_adapter(store):
    runs.import_runs(store, io.StringIO("\n".join(json.dumps(run(i)) for i in range(20))))
    runs.log_run(store, {"role": "judge", "output": "pass", "reward": 1.0, "signals": {"iterations": 3}})
    stats = runstats.run_stats(store, group_by="role")
    by_role = {g.role: g for g in stats.groups}
    assert by_role["coder"].runs == 20 and by_role["judge"].runs == 1
    assert by_role["coder"].compile_rate == pytest.approx(0.5)
    assert by_role["coder"].mean_reward == pytest.approx(sum((i % 10) / 10 for i in range(20)) / 20, abs=1e-4)
    assert by_role["judge"].mean_iterations == 3
    assert runstats.run_stats(store, role="judge", days=1).total_runs == 1
    with pytest.raises(InvalidInput, match="since"):
        runstats.run_stats(store, since="2026-01-01", days=3)


def test_unwritable_home_is_a_clear_error(tmp_path):
    from learning.store import Store

    blocker = tmp_path / "a-file"
    blocker.write_text("a file where the home's parent should be")
    with pytest.raises(InvalidInput, match="LEARNLOOP_HOME"):
        Store(blocker / "home")


def test_runs_carry_tests_through_log_import_and_get(store):
    tests = ["assert add(2, 3) == 5", "assert add(-1, 1) == 0"]
    logged = runs.log_run(store, run(1, tests=tests))
    assert runs.get_run(store, logged.run_id).tests == tests
    assert runs.get_run(store, runs.log_run(store, run(2)).run_id).tests == []
    result = runs.import_runs(store, io.StringIO(json.dumps(run(3, tests=tests[:1])) + "\n"))
    assert result.imported == 1
    assert runs.get_run(store, logged.run_id + 2).tests == tests[:1]


@pytest.mark.parametrize(
    "bad, says",
    [
        ("assert f(1) == 2", "list of strings"),
        ([1, 2], "list of strings"),
        (["assert f(1) ==="], "test 0 does not compile"),
        (["x = 1", "   "], "test 1 is empty"),
        (["assert True"] * 101, "101 tests; the limit is 100"),
        (["assert '" + "x" * 10_001 + "'"], "test 0 is 10,010 characters"),
        (["assert '" + "x" * 9_000 + "'"] * 12, "characters of tests in all"),
    ],
)
def test_malformed_tests_are_refused_naming_the_field(store, bad, says):
    with pytest.raises(InvalidInput) as exc:
        runs.log_run(store, run(1, tests=bad))
    assert "'tests'" in str(exc.value) and says in str(exc.value)
    with pytest.raises(InvalidInput, match="'tests'"):
        runs.import_runs(store, io.StringIO(json.dumps(run(1, tests=bad)) + "\n"))
    assert count_runs(store) == 0


def test_a_home_made_before_tests_keeps_working(tmp_path):
    import sqlite3

    from learning.store import MIGRATIONS, Store

    db = sqlite3.connect(tmp_path / "learnloop.db")
    for number in range(4):  # the schema as it was before runs carried tests
        db.executescript(MIGRATIONS[number])
    db.execute(
        "INSERT INTO runs (ts, agent, role, task_key, output, reward) VALUES (1.0, 'a', 'coder', 'k', 'x = 1', 0.5)"
    )
    db.execute("PRAGMA user_version = 4")
    db.commit()
    db.close()
    store = Store(tmp_path)
    assert runs.get_run(store, 1).tests == [] and store.schema_version() == len(MIGRATIONS)
    assert runs.get_run(store, runs.log_run(store, run(1, tests=["assert True"])).run_id).tests == ["assert True"]
