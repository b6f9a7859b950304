"""method=grpo: answers sampled from the policy, rewarded by running the rows' tests in the jail.

The fast tests check the reward, the rows and the group counts on their own; the slow ones run
real GRPO jobs on the tiny embedded base (TRL's GRPOTrainer, real sandbox executions)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest

from learning.errors import InvalidInput
from learning.jobs import manage as jobs
from learning.models.generate import cut_at_stop
from learning.registry import adapters as registry
from learning.runs.record import get_run
from learning.runs.stats import run_stats
from learning.store import Store
from learning.train import launch as training
from learning.train.config import build_config
from learning.train.grpo import (
    ExecutionReward,
    GroupCallback,
    compile_bonus,
    group_stats,
    grpo_rows,
    length_penalty,
    reward_funcs,
    sample_logger,
    vllm_args,
)
from tests.support.tiny import tiny_base
from tests.support.train_helpers import lora_tensors, make_dataset

BASE = "embedded:tiny"
TESTS = ["assert add_one(1) == 2", "assert add_one(-1) == 0"]
GRPO = {"batch_size": 2, "num_generations": 4, "max_completion_length": 16, "save_steps": 1, "learning_rate": 1e-2}


def test_reward_is_the_share_of_tests_passed_in_the_jail():
    reward = ExecutionReward(stop=["\n\n"])
    answers = [
        "def add_one(x):\n    return x + 1\n\nprint('after the stop')",  # both tests
        "def add_one(x):\n    return abs(x) + 1\n",  # one of two
        "def add_one(x) return",  # does not compile: never run
        "```python\ndef add_one(x):\n    return x + 1\n```\nsome prose",  # the fenced code is what runs
        "import os\ndef add_one(x):\n    return len(os.listdir('/home'))\n",  # runs in the jail, fails
    ]
    got = reward(["p"] * 5, answers, tests=[TESTS] * 5)
    assert got == [1.0, 0.5, 0.0, 1.0, 0.0]
    assert reward.scored == 5 and reward.seconds > 0


HACKING = [
    # an always-equal object: where the verdict is decided outside the answer's process it fails
    "class Same:\n    def __eq__(self, other):\n        return True\n\ndef add_one(x):\n    return Same()\n",
    "import sys\ndef add_one(x):\n    return x + 1\nsys.exit(0)\n",  # ends before the tests run
    "import sys\ndef add_one(x):\n    sys._getframe(1).f_locals['x'] = 2\n    return 2\n",
    "import os\ndef add_one(x):\n    os._exit(0",  # cut short: does not compile, flagged by the text scan
]


def test_the_monitor_counts_hacking_answers_logs_them_and_marks_their_runs(tmp_path):
    store = Store(tmp_path / "home")
    sink = sample_logger(cast(Any, SimpleNamespace(store=store)), "coder", "")  # logs runs, as log_samples=true
    reward = ExecutionReward(sink=sink, suspicious_log=tmp_path / "suspicious.jsonl")
    reward.step = 3
    honest = ["def add_one(x):\n    return x + 1\n", "def add_one(x):\n    return x\n"]
    answers = [honest[0], *HACKING, honest[1]]
    got = reward(["p"] * len(answers), answers, tests=[TESTS] * len(answers))
    assert got[0] == 1.0 and got[-1] == 0.0  # the monitor only reports: rewards are the tests'
    assert (reward.scored, reward.flagged) == (6, 4)
    assert reward.reasons == {"always-equal": 1, "early-exit": 2, "frames": 1}
    lines = [json.loads(line) for line in (tmp_path / "suspicious.jsonl").read_text().splitlines()]
    assert [line["reasons"] for line in lines] == [["always-equal"], ["early-exit"], ["frames"], ["early-exit"]]
    assert [line["reward"] for line in lines] == got[1:5] and lines[0]["answer"] == HACKING[0]
    assert all(line["step"] == 3 and line["tests_total"] == 2 for line in lines)
    runs = [get_run(store, i) for i in range(1, 7)]
    assert [r.meta.get("suspicious") for r in runs] == [
        None,
        ["always-equal"],
        ["early-exit"],
        ["frames"],
        ["early-exit"],
        None,
    ]
    assert all(r.meta["source"] == "grpo-sample" for r in runs)

    # The step's share goes to the job's progress and into the step's log entry (reward_by_step).
    seen: dict[str, Any] = {}
    ctx = SimpleNamespace(progress=lambda **f: seen.update(f), log=lambda m: seen.setdefault("log", m))
    callback = GroupCallback(cast(Any, ctx), reward, groups_per_step=1, patience=5, rank0=True)
    state = SimpleNamespace(global_step=1, log_history=[{"step": 1, "frac_reward_zero_std": 0.0}])
    control = SimpleNamespace(should_save=False, should_training_stop=False)
    logs = {"reward": 0.33, "rewards/execution/mean": 0.33, "frac_reward_zero_std": 0.0}
    callback.on_log(None, state, control, logs=logs)
    assert seen["hacking_share"] == round(4 / 6, 4) and seen["suspicious_answers"] == 4
    assert seen["reward"] == seen["reward_execution"] == 0.33  # the total, and each reward function's part
    assert "flagged 4 of 6 answers" in seen["log"]
    assert group_stats(state.log_history, 1)["reward_by_step"][0]["hacking_share"] == round(4 / 6, 4)
    reward(["p"], honest[:1], tests=[TESTS])  # the next step: one honest answer
    callback.on_log(None, state, control, logs={"reward": 1.0, "frac_reward_zero_std": 0.0})
    assert seen["hacking_share"] == 0.0 and seen["suspicious_answers"] == 4


def test_format_and_length_terms_are_reward_functions_of_their_own_and_optional():
    execution = ExecutionReward()
    assert reward_funcs(build_config("default", {"method": "grpo"}), execution) == ([execution], [1.0])  # not computed

    cfg = build_config("default", {"compile_bonus": 0.1, "length_penalty": 0.2, "max_completion_length": 10})
    funcs, weights = reward_funcs(cfg, execution)
    assert weights == [1.0, 0.1, 0.2] and [f.func for f in funcs[1:]] == [compile_bonus, length_penalty]
    answers = ["def add_one(x):\n    return x\n", "nonsense " * 10]
    parts = [f(prompts=["p", "p"], completions=answers, tests=[TESTS, TESTS]) for f in funcs]
    # the first compiles (0 tests pass) and is 29 of ~40 characters; the second is long and no code
    assert parts == [[0.0, 0.0], [1.0, 0.0], [pytest.approx(-29 / 40), -1.0]]
    total = [sum(w * part[i] for w, part in zip(weights, parts)) for i in range(2)]  # as TRL adds them
    assert total[0] == pytest.approx(0.1 - 0.2 * 29 / 40) and total[1] == pytest.approx(-0.2)
    assert compile_bonus([""]) == [0.0]  # an empty answer is no code


def test_sampling_with_vllm_is_chosen_by_the_vllm_option():
    import importlib.util

    import torch

    auto_colocates = torch.cuda.is_available() and importlib.util.find_spec("vllm") is not None
    assert vllm_args("auto") == ({"use_vllm": True, "vllm_mode": "colocate"} if auto_colocates else {})
    assert vllm_args("off") == {}
    assert vllm_args("colocate") == {"use_vllm": True, "vllm_mode": "colocate"}
    server = vllm_args("http://10.0.0.7:8000")
    assert server == {"use_vllm": True, "vllm_mode": "server", "vllm_server_base_url": "http://10.0.0.7:8000"}
    with pytest.raises(InvalidInput):
        build_config("default", {"method": "grpo", "vllm": "ftp://x; rm -rf /"})


@pytest.mark.gpu
@pytest.mark.slow
def test_grpo_samples_with_vllm_colocated_on_a_gpu(store):
    pytest.importorskip("vllm")
    started = training.train_adapter(
        store, "coder", "ds-compiles", base=BASE, method="grpo", max_steps=2, overrides={**GRPO, "vllm": "colocate"}
    )
    status = _finish(store, started)
    assert status.status == "succeeded", (status.error, status.log_tail)
    assert registry.get_adapter(store, started.adapter_id).params["config"]["vllm"] == "colocate"


def test_rows_keep_prompts_with_tests_and_answers_end_at_stops():
    raw = [
        {"prompt": "a", "completion": "x", "tests": TESTS},
        {"prompt": "b", "completion": "y"},  # no tests: nothing to reward it by
        {"messages": [{"role": "user", "content": "c"}, {"role": "assistant", "content": "z"}], "tests": TESTS},
    ]
    converted = [
        {"prompt": "a", "completion": "x"},
        {"prompt": "b", "completion": "y"},
        {"messages": raw[2]["messages"]},
    ]
    rows = grpo_rows(raw, converted)
    assert rows == [
        {"prompt": "a", "tests": TESTS},
        {"prompt": [{"role": "user", "content": "c"}], "tests": TESTS},
    ]
    assert cut_at_stop("def f():\n    return 1\n\nassert f()", ["\nassert", "\n\n"]) == "def f():\n    return 1"
    assert cut_at_stop("no stop here", ["\n\n"]) == "no stop here"


def test_groups_whose_rewards_are_all_equal_are_counted_as_dropped():
    history = [
        {"step": 1, "reward": 0.0, "reward_std": 0.0, "frac_reward_zero_std": 1.0},
        {"step": 2, "reward": 0.5, "reward_std": 0.5, "frac_reward_zero_std": 0.25, "rewards/execution/mean": 0.45},
        {"step": 2, "train_loss": 0.1},  # the trainer's closing entry
    ]
    stats = group_stats(history, groups_per_step=4)
    assert (stats["groups"], stats["groups_dropped"], stats["dropped_share"]) == (8, 5, 0.625)
    assert [s["step"] for s in stats["reward_by_step"]] == [1, 2]
    assert stats["reward_by_step"][1]["reward_execution"] == 0.45


# ---- the plan: refused before any process starts ---------------------------------------------


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    s = Store(tmp_path_factory.mktemp("grpo") / "home")
    tiny_base(s)
    make_dataset(s, "ds-plain")
    make_dataset(s, "ds-tested", tests=TESTS)
    make_dataset(s, "ds-compiles", tests=["assert True"])  # passes whenever the answer's code runs
    make_dataset(s, "ds-impossible", tests=["assert False"])
    make_dataset(s, "ds-pairs", kind="dpo")
    yield s
    s.close()


def test_grpo_needs_rows_with_tests_and_an_sft_dataset(store):
    with pytest.raises(InvalidInput) as err:
        training.train_adapter(store, "coder", "ds-plain", base=BASE, method="grpo", dry_run=True)
    assert "0 of 24 training rows with tests" in str(err.value.problems)
    with pytest.raises(InvalidInput) as err:
        training.train_adapter(store, "coder", "ds-pairs", base=BASE, method="grpo", dry_run=True)
    assert "an SFT dataset whose rows carry tests" in str(err.value.problems)
    plan = training.train_adapter(
        store, "coder", "ds-tested", base=BASE, method="grpo", dry_run=True, overrides=GRPO
    ).plan
    assert plan.method == "grpo" and plan.config["num_generations"] == 4
    assert any("sampling num_generations answers" in n for n in plan.notes)


def test_start_from_must_be_a_trained_adapter_of_the_same_base(store):
    with pytest.raises(InvalidInput) as err:
        training.train_adapter(store, "coder", "ds-tested", base=BASE, method="grpo", start_from="nope", dry_run=True)
    assert "No adapter 'nope' to start from" in str(err.value.problems)
    with pytest.raises(InvalidInput) as err:
        training.train_adapter(store, "coder", "ds-tested", method="grpo", start_from="../x", dry_run=True)
    assert "start_from" in str(err.value.problems)


# ---- real GRPO jobs on the tiny base ---------------------------------------------------------


def _finish(store, started):
    status = jobs.wait_job(store, started.job_id, timeout=600)
    assert status.status in jobs.FINAL
    return status


@pytest.mark.slow
def test_grpo_continues_an_sft_adapter_counts_groups_and_logs_its_samples(store):
    sft = training.train_adapter(
        store, "coder", "ds-compiles", base=BASE, max_steps=2, overrides={"batch_size": 4, "rank": 4, "alpha": 8}
    )
    assert _finish(store, sft).status == "succeeded"
    with pytest.raises(InvalidInput) as err:  # another base: refused
        training.train_adapter(store, "coder", "ds-compiles", method="grpo", start_from=sft.adapter_id, dry_run=True)
    assert "not on this run's base" in str(err.value.problems)

    started = training.train_adapter(
        store,
        "coder",
        "ds-compiles",
        base=BASE,
        method="grpo",
        start_from=sft.adapter_id,
        max_steps=2,
        overrides={**GRPO, "log_samples": True, "no_signal_steps": 50, "temperature": 1.5, "compile_bonus": 0.1},
    )
    assert started.plan.config["rank"] == 4  # the SFT adapter's shape, not the preset's
    status = _finish(store, started)
    assert status.status == "succeeded", (status.error, status.log_tail)
    adapter = registry.get_adapter(store, started.adapter_id)
    assert adapter.method == "grpo" and adapter.status == "trained"
    grpo = adapter.metrics["grpo"]
    assert grpo["groups"] == 4 and grpo["answers_scored"] == 16 and 0 <= grpo["groups_dropped"] <= 4
    assert len(grpo["reward_by_step"]) == 2 and grpo["answers_per_s"] > 0
    assert {"reward", "reward_std", "dropped_share", "answers_per_s", "hacking_share"} <= set(status.progress)
    parts = {"reward_execution", "reward_compile_bonus"}  # besides the total, each reward function's own
    assert parts <= set(status.progress) and parts <= set(grpo["reward_by_step"][0])
    assert "reward_length_penalty" not in status.progress  # weighted 0: never computed
    assert 0 <= grpo["suspicious_answers"] <= 16 and "hacking_share" in grpo["reward_by_step"][0]
    stats = run_stats(store, role="coder", agent="learnloop-grpo")
    assert stats.total_runs == 16  # every scored answer, logged with its reward
    start = lora_tensors(Path(registry.get_adapter(store, sft.adapter_id).path))
    after = lora_tensors(Path(adapter.path))
    assert start.keys() == after.keys()  # the same LoRA, continued
    if grpo["groups_dropped"] < grpo["groups"]:  # a group with signal moved it
        assert any(not start[k].equal(after[k]) for k in start)


@pytest.mark.slow
def test_grpo_without_reward_variance_stops_and_says_what_to_change(store):
    started = training.train_adapter(
        store,
        "coder",
        "ds-impossible",
        base=BASE,
        method="grpo",
        max_steps=20,
        overrides={**GRPO, "no_signal_steps": 2},
    )
    status = _finish(store, started)
    assert status.status == "failed"
    assert (status.error or "").startswith("GRPO stopped: 4 of 4 groups dropped, none varied in the last 2 steps")
    adapter = registry.get_adapter(store, started.adapter_id)
    assert adapter.status == "failed"
    assert any(Path(adapter.path, "checkpoints").iterdir())  # kept: resume=true continues it
