"""The CLI's run commands, as a person or cron runs them (subprocesses)."""

from __future__ import annotations

import json

from tests.conftest import run_cli


def test_log_then_stats_json(home):
    out = run_cli(
        "log",
        "--role",
        "coder",
        "--reward",
        "0.75",
        "--output",
        "print(1)",
        "--instruction",
        "say 1",
        "--signals",
        '{"compiled": true, "iterations": 2}',
        "--json",
        home=home,
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["run_id"] == 1
    stats = json.loads(run_cli("stats", "--json", home=home).stdout)
    assert stats["total_runs"] == 1 and stats["groups"][0]["mean_iterations"] == 2
    table = run_cli("stats", home=home)
    assert table.returncode == 0 and "coder" in table.stdout


def test_log_bad_reward_exits_nonzero_with_message(home):
    out = run_cli("log", "--role", "coder", "--reward", "3", "--output", "x", home=home)
    assert out.returncode != 0
    assert "reward" in out.stderr and "[0, 1]" in out.stderr


def test_import_from_stdin_and_file(home, tmp_path):
    lines = [json.dumps({"role": "fixer", "output": f"patch {i}", "reward": 0.5}) for i in range(50)]
    out = run_cli("import", "-", "--json", home=home, input="\n".join(lines))
    assert json.loads(out.stdout)["imported"] == 50
    bad = tmp_path / "runs.jsonl"
    bad.write_text("\n".join(lines[:3] + ["{not json"] + lines[3:6]))
    out = run_cli("import", str(bad), home=home)
    assert out.returncode == 1 and "line 4" in out.stderr
    out = run_cli("import", str(bad), "--skip-invalid", "--json", home=home)
    assert json.loads(out.stdout)["imported"] == 6


def test_home_that_cannot_be_created(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    out = run_cli("stats", "--home", str(blocker / "home"))
    assert out.returncode == 1 and "--home" in out.stderr
