"""The reward-hack table: answers to `add(a, b)` that try to forge their score instead of solving
it, scored through every path that scores by execution, with an honest control, plus each hack
scored in the in-process mode (answer and tests in one interpreter, how learnloop scored before)
to show it is a real hack.

Paths: `learnloop run-tests` (the CLI, a subprocess), `run_tests` over MCP (a real client
against the server in memory), GRPO's execution reward, the evaluation gate (an adapter whose
five answers all hack, against a base that answers right: pass or fail), and the gateway scoring
`metadata.tests` (a STAND-IN runtime that answers with the hack: none of vLLM, llama.cpp or
Ollama; the gateway and its scoring are real).

    python bench/reward_hacks.py
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import anyio  # noqa: E402
import httpx  # noqa: E402
from mcp import Client  # noqa: E402
from starlette.applications import Starlette  # noqa: E402
from starlette.requests import Request  # noqa: E402
from starlette.responses import JSONResponse  # noqa: E402
from starlette.routing import Route  # noqa: E402

from learning.evaluate.checks import score  # noqa: E402
from learning.evaluate.gate import GateConfig, apply_gate  # noqa: E402
from learning.gateway.app import build_app  # noqa: E402
from learning.gateway.forward import Forwarding  # noqa: E402
from learning.runs.record import get_run  # noqa: E402
from learning.sandbox.execute import run_many  # noqa: E402
from learning.store import Store  # noqa: E402
from learning.train.grpo import ExecutionReward  # noqa: E402
from server.mcp import build_server  # noqa: E402
from tests.support.hacks import ADD_TESTS, HACKS, NEW_HACKS, RIGHT  # noqa: E402
from tests.support.servers import served  # noqa: E402

ANSWERS = {**HACKS, **NEW_HACKS, "honest control: a + b": RIGHT}
N = len(ADD_TESTS)


def cli(home: Path) -> list[str]:
    out = []
    for code in ANSWERS.values():
        args = [sys.executable, "-m", "server", "run-tests", "--json", *(a for t in ADD_TESTS for a in ("--tests", t))]
        env = {**os.environ, "LEARNLOOP_HOME": str(home)}
        done = subprocess.run(args, input=code, capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
        out.append(f"{json.loads(done.stdout)['passed']}/{N}")
    return out


def mcp(home: Path) -> list[str]:
    async def main() -> list[str]:
        async with Client(build_server(str(home))) as client:
            got = [await client.call_tool("run_tests", {"code": c, "tests": ADD_TESTS}) for c in ANSWERS.values()]
            return [f"{g.structured_content['passed']}/{N}" for g in got]  # type: ignore[index]

    return anyio.run(main)


def grpo() -> list[str]:
    reward = ExecutionReward()
    return [f"{r:.1f}" for r in reward(["p"] * len(ANSWERS), list(ANSWERS.values()), tests=[ADD_TESTS] * len(ANSWERS))]


def gate() -> list[str]:
    rows = [
        {"prompt": f"### Task: add, case {i}\n### Solution:\n", "completion": RIGHT, "tests": ADD_TESTS}
        for i in range(5)
    ]
    base = {**score("coder", rows, [RIGHT] * 5), "eval_loss": 2.0}
    out = []
    for code in ANSWERS.values():
        adapter = {**score("coder", rows, [code] * 5), "eval_loss": 0.1}  # far lower loss: only the tests decide
        out.append("pass" if apply_gate(adapter, base, GateConfig(), rows_carry_tests=True)["passed"] else "fail")
    return out


async def _echo(request: Request) -> JSONResponse:
    text = json.loads(await request.body())["messages"][-1]["content"]
    choice = {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": text}}
    return JSONResponse({"id": "x", "choices": [choice], "usage": {"prompt_tokens": 1, "completion_tokens": 1}})


def gateway(home: Path) -> list[str]:
    store = Store(home)
    ids = []
    with served(Starlette(routes=[Route("/v1/chat/completions", _echo, methods=["POST"])])) as runtime:
        with served(build_app(store, Forwarding(runtime, "vllm", "stand-in"))) as url, httpx.Client(base_url=url) as c:
            for code in ANSWERS.values():
                body = {"model": "learnloop/coder", "messages": [{"role": "user", "content": code}]}
                r = c.post("/v1/chat/completions", json={**body, "metadata": {"tests": ADD_TESTS}}, timeout=60)
                ids.append(int(r.headers["x-learnloop-run-id"]))
            deadline = time.monotonic() + 300  # scoring runs after the answers, in the background
            while time.monotonic() < deadline and any(get_run(store, i).reward is None for i in ids):
                time.sleep(0.2)
    return [f"{get_run(store, i).reward:.1f}" for i in ids]


def in_process() -> list[str]:
    results = run_many([(c, ADD_TESTS) for c in ANSWERS.values()], in_process=True)
    return [f"{r.passed}/{N}" for r in results]


def main() -> None:
    os.environ.setdefault("LEARNLOOP_SANDBOX", "bwrap")
    with tempfile.TemporaryDirectory() as tmp:
        homes = [Path(tmp) / name for name in ("cli", "mcp", "gateway")]
        for home in homes:
            home.mkdir()
        columns = {
            "run-tests CLI": cli(homes[0]),
            "run_tests MCP": mcp(homes[1]),
            "GRPO reward": grpo(),
            "gate": gate(),
            "gateway metadata.tests": gateway(homes[2]),
            "in-process (before)": in_process(),
        }
    print("| answer to add(a, b) | " + " | ".join(columns) + " |")
    print("|---" * (len(columns) + 1) + "|")
    for i, name in enumerate(ANSWERS):
        print(f"| {name} | " + " | ".join(col[i] for col in columns.values()) + " |")


if __name__ == "__main__":
    main()
