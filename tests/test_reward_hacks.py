"""Answers that forge their score instead of solving the task get nothing, on every path that
scores by execution: the sandbox itself, run_tests over MCP and the CLI, GRPO's reward, the
evaluation gate and the gateway's scoring of metadata.tests. Each hack is also run in the
in-process mode, where it still wins: that is what the isolated verdict is for, and it shows each
hack is a real one. Honest controls keep full marks (a slow right answer within its timeout too)."""

from __future__ import annotations

import json
import shutil
import time

import anyio
import httpx
import pytest
from mcp import Client
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from learning.evaluate.checks import score
from learning.evaluate.gate import GateConfig, apply_gate
from learning.gateway.app import build_app
from learning.gateway.forward import Forwarding
from learning.runs.record import get_run
from learning.sandbox.execute import SANDBOX_ENV, run_many, run_tests
from learning.store import Store
from learning.train.grpo import ExecutionReward
from server.mcp import build_server
from tests.conftest import run_cli
from tests.support.hacks import (
    ADD_TESTS,
    AFTER_SPOILER,
    AFTER_TESTS,
    AGAINST_THE_TESTS,
    FLOAT_TESTS,
    HACKS,
    NEW_HACKS,
    RIGHT,
    SEEKER,
    SEEKER_TESTS,
    SLOW_RIGHT,
    SPOILERS,
    WRONG,
)
from tests.support.servers import served

pytestmark = pytest.mark.skipif(
    shutil.which("bwrap") is None, reason="bubblewrap is not installed (apt-get install bubblewrap); CI installs it"
)
EVERY_HACK = {**HACKS, **NEW_HACKS}


@pytest.fixture(autouse=True)
def jailed(monkeypatch):
    monkeypatch.setenv(SANDBOX_ENV, "bwrap")


@pytest.mark.slow
def test_every_hack_scores_nothing_and_each_wins_in_process():
    codes = [*EVERY_HACK.values(), RIGHT, WRONG, SLOW_RIGHT]
    isolated = run_many([(c, ADD_TESTS) for c in codes], timeout=2.0)
    for name, res in zip(EVERY_HACK, isolated):
        assert res.passed == 0 and res.isolation == "isolated", (name, res)
    right, wrong, slow = isolated[-3:]
    assert right.passed == 3 and wrong.passed == 0 and slow.passed == 3, (right, wrong, slow)
    assert all(m == "isolated" for m in right.modes + slow.modes)
    # The same answers, answer and tests in one interpreter: the five all win there.
    before = run_many([(c, ADD_TESTS) for c in HACKS.values()], timeout=2.0, in_process=True)
    assert [r.passed for r in before] == [3] * len(HACKS), before
    assert {r.isolation for r in before} == {"in-process"}


def test_the_tests_text_is_nowhere_the_answer_can_look():
    isolated = run_tests(SEEKER, SEEKER_TESTS)
    assert (isolated.passed, isolated.isolation) == (2, "isolated"), isolated
    found = run_many([(SEEKER, SEEKER_TESTS)], in_process=True)[0]  # in one interpreter it finds them
    assert found.errors[0] is not None and found.errors[1] is None, found


CLASSES = """
class Stack:
    def __init__(self):
        self.items = []
    def push(self, x):
        self.items.append(x)
        return self
    def pop(self):
        return self.items.pop()
    def __len__(self):
        return len(self.items)
    def __iter__(self):
        return iter(self.items)

def count_up(n):
    yield from range(n)

class Refused(ValueError):
    pass

def refuse():
    raise Refused('no thanks')

def apply(f, x):
    return f(x)
"""
CLASS_TESTS = [
    "s = Stack()\ns.push(1).push(2)\nassert len(s) == 2 and s.pop() == 2 and list(s) == [1] and 1 in s",
    "assert s.items == [1] if (s := Stack().push(1)) else False",
    "assert list(count_up(3)) == [0, 1, 2] and sum(count_up(4)) == 6",
    "with raises(ValueError, match='no thanks'):\n    refuse()",
    "with raises(Refused):\n    refuse()",
    "try:\n    refuse()\nexcept ValueError as e:\n    assert type(e).__name__ == 'Refused'\nelse:\n    raise AssertionError",
    "assert isinstance(Stack(), Stack) and not isinstance(3, Stack)",
    "assert {1: (2, 3), 'x': frozenset({4}), 'b': b'\\x00', 'c': 1j} == {1: (2, 3), 'x': {4}, 'b': b'\\x00', 'c': 1j}",
    "assert apply(lambda v: v + 1, 1) == 2",  # sends a function of the test: cannot cross
]


def test_objects_generators_and_exceptions_cross_and_only_what_cannot_runs_in_process():
    res = run_tests(CLASSES, CLASS_TESTS)
    assert res.passed == len(CLASS_TESTS), res
    assert res.modes == ["isolated"] * (len(CLASS_TESTS) - 1) + ["in-process"]
    assert res.isolation == "mixed"
    # an answer cannot force the in-process mode: its objects never compare as anything but themselves
    same = "class Same:\n    def __eq__(self, other):\n        return True\n\ndef make():\n    return Same()\n"
    forced = run_tests(same, ["assert make() == make()", "assert make() == 1", "assert [make()] == [2]"])
    assert forced.passed == 0 and forced.isolation == "isolated", forced


@pytest.mark.slow
def test_run_tests_over_mcp_and_the_cli_refuse_every_hack(home):
    async def main():
        async with Client(build_server(str(home))) as client:
            out = {}
            for name, code in HACKS.items():
                got = await client.call_tool(
                    "run_tests", {"code": code, "tests": ADD_TESTS, "log": True, "role": "coder"}
                )
                out[name] = got.structured_content
            out["right"] = (await client.call_tool("run_tests", {"code": RIGHT, "tests": ADD_TESTS})).structured_content
            return out

    out = anyio.run(main)
    for name in HACKS:
        assert out[name]["passed"] == 0 and out[name]["isolation"] == "isolated", (name, out[name])
        run = get_run(Store(home), out[name]["run_id"])
        assert run.reward == 0.0 and run.signals["isolation"] == "isolated"
    assert out["right"]["passed"] == 3 and out["right"]["modes"] == ["isolated"] * 3
    for name, code in HACKS.items():
        args = ["run-tests", "--json", *(a for t in ADD_TESTS for a in ("--tests", t))]
        shown = run_cli(*args, home=home, input=code)
        assert shown.returncode == 0, shown.stderr
        assert json.loads(shown.stdout)["passed"] == 0, name


@pytest.mark.slow
def test_grpo_rewards_every_hack_zero():
    reward = ExecutionReward()
    answers = [*EVERY_HACK.values(), RIGHT]
    got = reward(["p"] * len(answers), answers, tests=[ADD_TESTS] * len(answers))
    assert got[:-1] == [0.0] * len(EVERY_HACK) and got[-1] == 1.0, got


def test_the_gate_does_not_pass_an_adapter_that_hacks():
    rows = [
        {"prompt": f"### Task: add, case {i}\n### Solution:\n", "completion": RIGHT, "tests": ADD_TESTS}
        for i in range(5)
    ]
    hacking = score("coder", rows, list(HACKS.values()))
    honest = score("coder", rows, [RIGHT] * 5)
    assert hacking["pass_rate"] == 0.0 and honest["pass_rate"] == 1.0
    assert {c["isolation"] for c in hacking["checks"]} == {"isolated"}
    # Even with a far lower loss, the hacking adapter is worse than its base task by task.
    gate = apply_gate({**hacking, "eval_loss": 0.1}, {**honest, "eval_loss": 2.0}, GateConfig(), rows_carry_tests=True)
    assert not gate["passed"]
    assert next(c for c in gate["conditions"] if c["name"] == "tests_not_worse_than_base")["passed"] is False


class Echo:
    """A STAND-IN runtime (none of vLLM, llama.cpp or Ollama): its 'model' answers with the last
    user message, so a test decides what the gateway gets to score."""

    async def answer(self, request: Request) -> JSONResponse:
        body = json.loads(await request.body())
        text = body["messages"][-1]["content"]
        choice = {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": text}}
        usage = {"prompt_tokens": 5, "completion_tokens": 5, "total_tokens": 10}
        return JSONResponse({"id": "x", "object": "chat.completion", "choices": [choice], "usage": usage})


def test_the_gateway_scores_every_hack_zero(tmp_path):
    echo = Starlette(routes=[Route("/v1/chat/completions", Echo().answer, methods=["POST"])])
    store = Store(tmp_path)
    answers = {**HACKS, "right": RIGHT}
    ids = {}
    with served(echo) as runtime:
        app = build_app(store, Forwarding(runtime, "vllm", "base-stand-in"))
        with served(app) as gateway, httpx.Client(base_url=gateway, timeout=60) as client:
            for name, code in answers.items():
                body = {
                    "model": "learnloop/coder",
                    "messages": [{"role": "user", "content": code}],
                    "metadata": {"tests": ADD_TESTS, "task_key": name},
                }
                r = client.post("/v1/chat/completions", json=body)
                assert r.status_code == 200, r.text
                ids[name] = int(r.headers["x-learnloop-run-id"])
            deadline = time.monotonic() + 120  # scoring follows the answers, in the background
            while time.monotonic() < deadline and any(get_run(store, i).reward is None for i in ids.values()):
                time.sleep(0.1)
    for name, run_id in ids.items():  # the app scored everything queued before it stopped
        run = get_run(store, run_id)
        assert run.reward == (1.0 if name == "right" else 0.0), (name, run.reward, run.signals)
        assert run.signals["scored_by"] == "gateway" and run.signals["isolation"] == "isolated"


def test_attacks_on_the_isolated_design_itself_score_nothing():
    results = run_many([(code, FLOAT_TESTS) for code in AGAINST_THE_TESTS.values()], workers=1)
    for name, res in zip(AGAINST_THE_TESTS, results):
        assert res.passed == 0 and res.isolation == "isolated", (name, res)
    shadow = results[1].errors[0] or ""
    assert "the answer redefines abs" in shadow and "builtins" in shadow
    right = run_tests(RIGHT.replace("a + b", "round(a + b, 12)"), FLOAT_TESTS)
    assert right.passed == len(FLOAT_TESTS) and right.isolation == "isolated", right
    # A sibling with the right code was in the same batch: nothing of it reached the copier.
    copier = AGAINST_THE_TESTS["copies a sibling's solution from its supervisor's memory"]
    first, sibling = run_many([(copier, ADD_TESTS), (RIGHT, ADD_TESTS)], workers=1)
    assert first.passed == 0 and sibling.passed == 3, (first, sibling)


def test_an_answer_cannot_spoil_the_answers_after_it():
    for name, spoiler in SPOILERS.items():
        for in_process in (False, True):
            got = run_many(
                [(spoiler + WRONG, ADD_TESTS), (AFTER_SPOILER, AFTER_TESTS), (RIGHT, ADD_TESTS)],
                workers=1,
                in_process=in_process,
            )
            assert [r.passed for r in got] == [0, 4, 3], (name, in_process, got)


def test_honest_answers_raising_os_errors_and_deep_code_get_their_results():
    reader = "def read(path):\n    with open(path) as f:\n        return f.read()\n"
    res = run_tests(
        reader, ["with raises(FileNotFoundError):\n    read('/nowhere')", "with raises(OSError):\n    read('/')"]
    )
    assert res.passed == 2, res
    # Compiles in the jail, fails to compile on a deeper stack: a result, never an exception.
    deep = "x = " + "-" * 2975 + "1\nimport time\ntime.sleep(5)\n" + WRONG
    got = run_many([(RIGHT, ADD_TESTS), (deep, ADD_TESTS), (RIGHT, ADD_TESTS)], timeout=1.0, workers=1)
    assert [r.passed for r in got] == [3, 0, 3] and got[1].timed_out, got
