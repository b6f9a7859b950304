"""The coding environment: rewards come from executing answers, never from a label."""

from __future__ import annotations

import time

from learning.evaluate import codeenv as ce
from learning.evaluate.codeenv import split_of as codeenv_split
from learning.sandbox.execute import run_many, run_tests


def test_reference_scores_one_and_broken_variants_less_for_every_role():
    for role in ce.ROLES:
        tasks = ce.make_tasks(15, "train", role) + ce.make_tasks(10, "heldout", role)
        ref = ce.score_answers(tasks, [ce.solve(t) for t in tasks])
        assert all(s.reward == 1.0 and s.executed for s in ref), role
        pairs = [(t, a) for t in tasks for a in ce.broken_answers(t)]
        broken = ce.score_answers([t for t, _ in pairs], [a for _, a in pairs])
        assert all(s.reward < 1.0 for s in broken), role
        if role != "judge":
            # The first broken variant of every family is a near miss: one test of five fails.
            near = [s.reward for (t, a), s in zip(pairs, broken) if a == ce.broken_answers(t)[0]]
            assert set(near) == {0.8}


def test_judge_truth_comes_from_executing_the_judged_code():
    task = ce.make_task("add", "judge", "calm_river", "x", 3, "train", variant=0, judged_correct=False)
    assert "abs(x)" in task.input
    [score] = ce.score_answers([task], ["fail, it breaks on negatives"])
    assert score.truth == "fail" and score.verdict == "fail" and score.reward == 1.0
    assert score.tests_passed == 4 and score.tests_total == 5
    [score] = ce.score_answers([task], ["PASS"])
    assert score.reward == 0.0
    [score] = ce.score_answers([task], ["maybe"])
    assert score.verdict is None and score.reward == 0.0


def test_heldout_tasks_share_no_name_parameter_or_constant_with_training():
    train = ce.make_tasks(300, "train", "coder")
    held = ce.make_tasks(100, "heldout", "coder")
    assert len({t.key for t in train}) == 300 and len({t.key for t in held}) == 100
    assert not {t.func for t in train} & {t.func for t in held}
    assert all(codeenv_split(t.func) == "heldout" for t in held) and all(
        codeenv_split(t.func) == "train" for t in train
    )
    assert not {t.k for t in train if t.k} & {t.k for t in held if t.k}
    assert ce.make_tasks(20, "heldout", seed=3) == ce.make_tasks(20, "heldout", seed=3)
    assert {t.family for t in held} == set(ce.FAMILIES)


def test_prompts_and_answers_of_a_model_shape():
    task = ce.make_task("reverse", "coder", "keen_orbit", "items", None, "train")
    assert ce.prompt(task) == (
        "### Task:\nWrite a Python function `keen_orbit(items)` that returns the list items "
        "in reverse order.\n### Solution:\n"
    )
    # A model's answer carries text after the function; the stop strings cut it, the reward is execution.
    from learning.models.generate import cut_at_stop

    raw = "def keen_orbit(items):\n    return items[::-1]\n\n### Task:\nmore"
    [score] = ce.score_answers([task], [cut_at_stop(raw, ce.stop_for(task))])
    assert score.reward == 1.0
    [score] = ce.score_answers([task], ["def keen_orbit(items) return"])
    assert not score.compiled and score.reward == 0.0
    rec = ce.run_record(task, "", score, agent="demo", source="base")
    assert rec["output"] and rec["signals"]["executed"] and rec["reward"] == 0.0


def test_sandbox_blocks_network_stops_hangs_and_isolates_crashes():
    jobs = [
        ("while True:\n    pass\n", ["assert True"]),
        ("import socket\nsocket.create_connection(('127.0.0.1', 9))\n", ["assert True"]),
        ("import os\nos._exit(3)\n", ["assert True"]),
        ("print('noise on stdout')\ndef f(x):\n    return x\n", ["assert f(1) == 1", "assert f(2) == 3"]),
        (
            "import urllib.request\ndef f():\n    return urllib.request.urlopen('http://example.com').read()\n",
            ["assert f()"],
        ),
    ]
    started = time.monotonic()
    hang, net, crash, ok, url = run_many(jobs, timeout=1.0)
    assert time.monotonic() - started < 20
    assert hang.timed_out and hang.score == 0.0
    # No network in the jail: its own network namespace has nothing listening (tests/test_sandbox.py proves the walls).
    assert net.score == 0.0 and "ConnectionRefusedError" in (net.error or "")
    assert crash.score == 0.0 and not crash.timed_out
    assert ok.passed == 1 and ok.total == 2 and ok.score == 0.5
    assert url.score == 0.0
    # The batched runner and the one-interpreter-per-answer runner agree.
    single = run_tests(*jobs[3], timeout=1.0)
    assert (single.passed, single.total, single.compiled) == (ok.passed, ok.total, ok.compiled)


def test_many_answers_score_quickly_in_order():
    tasks = ce.make_tasks(100, "train", "coder")
    answers = [ce.solve(t) if i % 2 else ce.broken_answers(t)[1] for i, t in enumerate(tasks)]
    scores = ce.score_answers(tasks, answers)
    assert [s.reward == 1.0 for s in scores] == [bool(i % 2) for i in range(100)]
