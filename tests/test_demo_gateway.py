"""`learnloop demo --gateway --quick`: an agent that only sends OpenAI requests over HTTP; the
gateway records and scores every exchange, the dataset is curated from those runs, and after the
promotion the same gateway serves the adapter."""

from __future__ import annotations

import json
import sqlite3

import pytest

from learning.sandbox.code import extract_code
from learning.sandbox.execute import run_many
from tests.conftest import run_cli_process

STAGES = ["base", "gateway", "before", "traffic", "curate", "train", "evaluate", "promote", "after"]


@pytest.mark.slow
def test_quick_gateway_demo_closes_the_loop_through_the_gateway(tmp_path):
    home = tmp_path / "home"
    proc = run_cli_process("demo", "--gateway", "--quick", "--json", "--home", str(home), timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    s = json.loads(proc.stdout)
    stages = {st["name"]: st for st in s["stages"]}
    assert [st["name"] for st in s["stages"]] == STAGES
    assert all(st["status"] == "done" for st in s["stages"]), {n: st["detail"] for n, st in stages.items()}

    db = sqlite3.connect(home / "learnloop.db")
    db.row_factory = sqlite3.Row
    runs = {r["id"]: r for r in db.execute("SELECT * FROM runs")}
    # Every request the agent sent became a run, recorded and scored by the gateway itself.
    assert s["requests"] == len(runs) == s["runs_recorded"] == s["scored_by_gateway"] == 8 + 40 + 8
    assert all(r["agent"] == "gateway" and r["model"] == "learnloop/coder" and r["decision_id"] for r in runs.values())
    signals = {i: json.loads(r["signals"]) for i, r in runs.items()}
    assert all(sig["scored_by"] == "gateway" and sig["tests_total"] == 5 for sig in signals.values())
    # The rewards are what executing the answers against their tests gives.
    jobs = [(extract_code(r["output"])[1], json.loads(r["tests"])) for r in runs.values()]
    assert [r["reward"] for r in runs.values()] == pytest.approx([res.score for res in run_many(jobs)])

    # The dataset was curated from the gateway's training traffic.
    meta = json.loads((home / "datasets" / s["dataset_id"] / "metadata.json").read_text())
    assert meta["filters"]["agent"] == "gateway" and set(meta["run_ids"]) <= set(runs)
    assert len(meta["run_ids"]) == s["dataset_rows"] > 0

    # The adapter trained on it went to production, and the same gateway served it afterwards.
    assert s["adapter_status"] == "production" and stages["promote"]["detail"]["promoted"]
    assert stages["before"]["detail"]["served_by"] == ["base"]
    assert stages["after"]["detail"]["served_by"] == [s["adapter_id"]] and s["served_by_adapter"] == 8
    after = sorted(runs)[-8:]
    assert all(runs[i]["adapter_id"] == s["adapter_id"] for i in after)
    assert all(runs[i]["adapter_id"] is None for i in sorted(runs)[:48])
    assert 0 <= s["base_pass_rate"] <= 1 and 0 <= s["adapter_pass_rate"] <= 1 and s["verdict"]
    assert json.loads((home / "gateway_demo.json").read_text())["adapter_id"] == s["adapter_id"]
