"""The demo in its --quick form: every stage leaves its artifacts; every reward comes from execution."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from learning.demo.summary import loss_curve, verdict
from learning.evaluate import codeenv
from learning.sandbox.execute import run_many
from tests.conftest import run_cli, run_cli_process, text_of

STAGES = ["base", "population", "curate", "train", "rl", "evaluate", "promote", "heldout", "drift"]


def test_verdict_is_honest_both_ways():
    beat, text = verdict(0.0, 0.4, 100)
    assert beat and "beat the base" in text and "+0.40" in text and "40 more tasks" in text
    beat, text = verdict(0.3, 0.3, 50)
    assert not beat and "did NOT beat" in text
    beat, text = verdict(0.5, 0.2, 50)
    assert not beat and "did NOT beat" in text and "-0.30" in text
    assert verdict(None, None, 0)[0] is False


def test_loss_curve_reads_the_last_trainer_state(tmp_path):
    for step, n in ((50, 2), (100, 4)):
        folder = tmp_path / "checkpoints" / f"checkpoint-{step}"
        folder.mkdir(parents=True)
        history = [{"step": i + 1, "loss": 3.0 - i} for i in range(n)] + [{"step": n, "train_runtime": 1.0}]
        (folder / "trainer_state.json").write_text(json.dumps({"log_history": history}))
    assert loss_curve(tmp_path) == [(1, 3.0), (2, 2.0), (3, 1.0), (4, 0.0)]
    assert loss_curve(tmp_path / "nothing") == []


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    home = tmp_path_factory.mktemp("demo") / "home"
    proc = run_cli_process("demo", "--quick", "--json", "--home", str(home), timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return home, json.loads(proc.stdout)


@pytest.mark.slow
def test_quick_demo_end_to_end(demo_run):
    home, s = demo_run
    stages = {st["name"]: st for st in s["stages"]}
    assert list(stages) == STAGES
    assert {name: st["status"] for name, st in stages.items()} == {name: "done" for name in STAGES}, {
        n: st["detail"] for n, st in stages.items() if st["status"] != "done"
    }
    assert set(s["seconds"]) == set(STAGES) | {"report"}

    # 1. base model folder; 3. datasets, adapter files, evaluation, registry state.
    assert (Path(s["base_model"]) / "config.json").is_file()
    for role in ("coder", "fixer", "judge"):
        assert (home / "datasets" / s["dataset_ids"][role] / "train.jsonl").is_file()
    adapter_dir = home / "adapters" / s["adapter_id"]
    assert (adapter_dir / "adapter_config.json").is_file() and (adapter_dir / "metadata.json").is_file()
    assert (adapter_dir / "eval" / "metrics.json").is_file()
    assert s["eval_loss_base"] is not None and s["eval_loss_adapter"] is not None
    assert s["adapter_status"] in ("production", "trained")  # production when the gate passed
    assert stages["promote"]["detail"]["promoted"] == (s["adapter_status"] == "production")

    # 4. held-out figures, 5. drift decision, 6. plot and summary.
    assert s["heldout_tasks"] == 15
    rl = stages["rl"]["detail"]  # GRPO from the SFT adapter: 2 steps of 2 prompts x 4 answers
    assert rl["start_from"] == s["sft_adapter_id"] != s["adapter_id"] == rl["adapter_id"]
    assert rl["groups"] == 4 and rl["answers_scored"] == 16 == rl["runs_logged"]
    assert 0 <= s["sft_pass_rate"] <= 1 and all("sft" in v for v in s["by_family"].values())
    assert 0 <= s["base_pass_rate"] <= 1 and 0 <= s["adapter_pass_rate"] <= 1
    assert s["margin"] == pytest.approx(s["adapter_pass_rate"] - s["base_pass_rate"])
    assert s["verdict"] and s["adapter_beat_base"] == (s["margin"] > 0)
    assert s["drift_decision"] in ("regression", "improvement", "no_change", "insufficient_data")
    assert Path(s["plot_path"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads(Path(s["summary_path"]).read_text())["adapter_pass_rate"] == s["adapter_pass_rate"]

    # Every logged run's reward is what executing its answer against its hidden tests gives.
    db = sqlite3.connect(home / "learnloop.db")
    db.row_factory = sqlite3.Row
    runs = db.execute(
        "SELECT role, output, reward, input, signals, tests, adapter_id, decision_id, agent FROM runs"
    ).fetchall()
    assert len(runs) == s["runs_logged"] == s["executions"]
    signals = [{**json.loads(r["signals"]), "tests": json.loads(r["tests"])} for r in runs]
    assert all(sig["executed"] and sig["tests_total"] == 5 for sig in signals)
    code_runs = [(r, sig) for r, sig in zip(runs, signals) if r["role"] != "judge"]
    results = run_many([(r["output"], sig["tests"]) for r, sig in code_runs])
    assert [r["reward"] for r, _ in code_runs] == pytest.approx([res.score for res in results])
    judge_runs = [(r, sig) for r, sig in zip(runs, signals) if r["role"] == "judge"]
    truths = run_many([(r["input"], sig["tests"]) for r, sig in judge_runs])
    for (r, _sig), res in zip(judge_runs, truths):
        truth = "pass" if res.passed == res.total else "fail"
        assert r["reward"] == float(codeenv.parse_verdict(r["output"]) == truth)
    # Both kinds of reward occur: the population is mixed.
    assert {r["reward"] for r in runs} >= {0.0, 1.0} and any(0 < r["reward"] < 1 for r in runs)
    # The held-out adapter runs carry the adapter, and the routing decision when the route chose it
    # (a promoted adapter); when the gate kept it out of production the base was routed instead.
    # (GRPO's sampled answers carry the adapter being trained, under their own agent.)
    adapter_runs = [r for r in runs if r["adapter_id"] == s["adapter_id"] and r["agent"] == "learnloop-demo"]
    assert len(adapter_runs) == 15
    assert sum(r["agent"] == "learnloop-grpo" for r in runs) == 16
    promoted = s["adapter_status"] == "production"
    assert stages["heldout"]["detail"]["routed_to_adapter"] == (15 if promoted else 0)
    assert all(bool(r["decision_id"]) == promoted for r in adapter_runs)


@pytest.mark.slow
def test_cycle_after_the_demo_chains_every_stage(demo_run):
    """run_cycle on the demo's home: a new dataset, an SFT adapter continued by GRPO (the rows carry
    their tests) and its evaluation, then drift for the adapter the demo put in production (or a
    skip when its gate did not pass)."""
    home, s = demo_run
    proc = run_cli(
        "cycle",
        "--role",
        "coder",
        "--base",
        "embedded:tiny",
        "--max-steps",
        "4",
        "--grpo-steps",
        "2",
        "--json",
        home=home,
        timeout=900,
    )
    status = json.loads(proc.stdout)
    stages = {st["name"]: st for st in (status["result"] or status["progress"])["stages"]}
    assert proc.returncode == (0 if status["status"] == "succeeded" else 1)
    assert status["kind"] == "cycle" and status["status"] == "succeeded", status["error"]
    assert [st for st in stages] == ["make_sft", "train", "grpo", "evaluate", "promote", "drift"]
    result = status["result"]
    assert stages["grpo"]["detail"]["metrics"]["grpo"]["groups"] == 2 * 4  # 2 steps of 4 prompts
    assert result["sft_adapter_id"] == stages["train"]["detail"]["adapter_id"] != result["adapter_id"]
    assert (home / "datasets" / result["dataset_id"] / "train.jsonl").is_file()
    assert result["adapter_id"] != s["adapter_id"]
    assert (home / "adapters" / result["adapter_id"] / "eval" / "metrics.json").is_file()
    # Without --to-production the new adapter goes no further than candidate.
    assert result["adapter_status"] in ("candidate", "trained")
    if s["adapter_status"] == "production":
        assert stages["drift"]["status"] == "done"
        assert stages["drift"]["detail"]["decision"] in ("regression", "improvement", "no_change", "insufficient_data")
    else:
        assert stages["drift"]["status"] == "skipped"


def test_cycle_refuses_bad_input_before_starting(home):
    proc = run_cli("cycle", "--role", "coder", "--json", home=home)
    assert proc.returncode == 1 and "no runs or adapters for role 'coder'" in proc.stderr
    proc = run_cli("cycle", "--role", "coder", "--min-reward", "2", home=home)
    assert proc.returncode == 1 and "min_reward" in proc.stderr
    proc = run_cli("cycle", "--role", "coder", "--cluster", "ray:/nowhere", home=home)
    assert proc.returncode == 1 and "is not a Ray address" in proc.stderr


def test_run_cycle_tool_needs_confirm_for_production(home):
    import anyio
    from mcp import Client

    from server.mcp import build_server

    async def main():
        async with Client(build_server(str(home))) as client:
            result = await client.call_tool("run_cycle", {"role": "coder", "to_production": True})
            assert result.is_error and "confirm=true" in text_of(result.content[0])
            result = await client.call_tool("run_cycle", {"role": "coder"})
            assert result.is_error and "log runs with log_run first" in text_of(result.content[0])

    anyio.run(main)


def test_gate_pass_rates_from_tests_equal_the_environments_scoring(store):
    """The demo's dataset rows carry their tasks' tests; on the same rows and the same answers the
    evaluation's pass rates from tests (and the gate's figures) equal codeenv's held-out scoring."""
    import io

    from learning.data.curate import make_sft
    from learning.evaluate import checks
    from learning.evaluate.gate import GateConfig, apply_gate
    from learning.runs.record import import_runs

    tasks = codeenv.make_tasks(20, "heldout", "coder", seed=3)
    records = [
        codeenv.run_record(
            t, codeenv.solve(t), codeenv.Score(reward=1.0, compiled=True, tests_passed=5, tests_total=5), agent="x"
        )
        for t in tasks
    ]
    import_runs(store, io.StringIO("".join(json.dumps(r) + "\n" for r in records)))
    ds = make_sft(store, "coder", template=codeenv.TEMPLATES["coder"], test_fraction=0.5, min_rows=5)
    rows = [json.loads(line) for f in ("train", "test") for line in Path(ds.files[f]).read_text().splitlines()]
    by_prompt = {codeenv.prompt(t): t for t in tasks}
    row_tasks = [by_prompt[r["prompt"]] for r in rows]
    assert all(r["tests"] == list(t.tests) for r, t in zip(rows, row_tasks))

    def answers(kind: int) -> list[str]:
        """Right, near-miss, wrong, broken, empty and endlessly recursive answers, mixed."""
        out = []
        for i, t in enumerate(row_tasks):
            pick = (i + kind) % 6
            broken = codeenv.broken_answers(t)
            out.append(
                [
                    codeenv.solve(t),
                    broken[0],
                    broken[1],
                    "def " + t.func + "(:\n",
                    "",
                    f"def {t.func}({t.param}):\n    return {t.func}({t.param})\n",
                ][pick]
            )
        return out

    scored = {}
    for name, kind in (("adapter", 0), ("base", 3)):
        given = answers(kind)
        env = codeenv.score_answers(row_tasks, given)
        mine = checks.score("coder", rows, given)
        assert [c["passed"] for c in mine["checks"]] == [s.reward == 1.0 for s in env]
        assert [c["tests_passed"] for c in mine["checks"]] == [s.tests_passed for s in env]
        assert mine["pass_rate_tests"] == pytest.approx(sum(s.reward == 1.0 for s in env) / len(env))
        assert mine["tested_rows"] == len(rows) and mine["pass_rate_basis"] == "tests"
        scored[name] = {**mine, "eval_loss": 1.0}
    gate = apply_gate(scored["adapter"], scored["base"], GateConfig(), rows_carry_tests=True)
    cmp = next(c for c in gate["conditions"] if c["name"] == "tests_not_worse_than_base")["comparison"]
    assert (cmp["adapter"], cmp["base"]) == (scored["adapter"]["pass_rate_tests"], scored["base"]["pass_rate_tests"])
