"""An agent that learns through learnloop: it talks to the real server over stdio (MCP).

For every task it
  1. asks select_adapter which adapter should serve it (and gets a decision_id),
  2. solves the task,
  3. runs the hidden tests on its answer (a sandboxed subprocess; the reward is the share of
     tests passed, never a number the agent makes up),
  4. logs the run with log_run, passing the decision_id so the reward counts for that adapter.

Who solves the tasks is explicit (--solver):
  reference  the environment's reference solver, with a deliberate mistake on a share of tasks
             (--mistake-rate), so the logged rewards are mixed as real agents' are. No model.
  model      the base model the route names, with the selected adapter on top (learnloop's
             embedded base unless the route says otherwise), greedy decoding.

    python examples/agent_loop.py --home /tmp/ll --tasks 20 --role coder --solver reference

The server is started as `python -m server serve --home HOME` (the `learnloop serve` command);
set LEARNLOOP_CMD to use another command line, e.g. "learnloop serve".
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shlex
import sys
from pathlib import Path

import anyio
from mcp import Client, StdioServerParameters
from mcp.types import TextContent

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from learning.evaluate import codeenv  # noqa: E402  (the repository's own environment)


def server_params(home: str) -> StdioServerParameters:
    cmd = shlex.split(os.environ.get("LEARNLOOP_CMD", f"{shlex.quote(sys.executable)} -m server serve"))
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return StdioServerParameters(command=cmd[0], args=[*cmd[1:], "--home", home], env=env, cwd=str(ROOT))


class ModelSolver:
    """Answers with base + the selected adapter; loads each (base, adapter) pair once."""

    def __init__(self, default_base: str | None):
        self.default_base = default_base
        self.loaded: dict[tuple, tuple] = {}

    def __call__(self, task: codeenv.Task, selection: dict) -> str:
        from learning.models.generate import generate, load_model

        base = selection.get("base_model") or self.default_base
        if base is None:
            raise SystemExit("No base model: pass --base, or train and promote an adapter first.")
        key = (base, selection.get("adapter_path"))
        if key not in self.loaded:
            self.loaded[key] = load_model(base, selection.get("adapter_path"))
        model, tok = self.loaded[key]
        return generate(model, tok, [codeenv.prompt(task)], 48, stop=codeenv.stop_for(task))[0]


def reference_solver(mistake_rate: float, rng: random.Random):
    def solve(task: codeenv.Task, selection: dict) -> str:
        if rng.random() < mistake_rate:
            return rng.choice(codeenv.broken_answers(task))
        return codeenv.solve(task)

    return solve


def error_text(result) -> str:
    """The message of a tool call that failed (its first content block)."""
    first = result.content[0]
    return first.text if isinstance(first, TextContent) else str(first)


async def run_agent(
    home: str, role: str, n_tasks: int, solver, split: str = "train", seed: int = 0, agent: str = "example-agent"
) -> list[dict]:
    """Solve n_tasks tasks through the server; returns one line per task (what was logged)."""
    tasks = codeenv.make_tasks(n_tasks, split, role, seed=seed)
    lines = []
    async with Client(server_params(home)) as client:
        for task in tasks:
            sel = await client.call_tool(
                "select_adapter", {"role": role, "task_type": task.family, "task_key": task.key}
            )
            if sel.is_error:
                raise RuntimeError(error_text(sel))
            selection = sel.structured_content
            answer = solver(task, selection)
            [score] = codeenv.score_answers([task], [answer])  # executes the answer against the hidden tests
            record = codeenv.run_record(
                task,
                answer,
                score,
                agent=agent,
                model=selection.get("base_model"),
                adapter_id=selection.get("adapter_id"),
                decision_id=selection["decision_id"],
                source="agent-loop",
            )
            logged = await client.call_tool("log_run", {k: v for k, v in record.items() if v is not None})
            if logged.is_error:
                raise RuntimeError(error_text(logged))
            lines.append(
                {
                    "task_key": task.key,
                    "adapter_id": selection.get("adapter_id"),
                    "decision_id": selection["decision_id"],
                    "reward": score.reward,
                    "run_id": logged.structured_content["run_id"],
                }
            )
    return lines


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").partition("\n")[0])
    ap.add_argument("--home", required=True, help="learnloop home folder")
    ap.add_argument("--role", default="coder", choices=codeenv.ROLES)
    ap.add_argument("--tasks", type=int, default=20)
    ap.add_argument("--solver", choices=("reference", "model"), default="reference")
    ap.add_argument(
        "--mistake-rate", type=float, default=0.3, help="reference solver: share of deliberately wrong answers"
    )
    ap.add_argument("--base", default=None, help="model solver: base model when the route names none")
    ap.add_argument("--split", choices=("train", "heldout"), default="train")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    solver = (
        ModelSolver(args.base)
        if args.solver == "model"
        else reference_solver(args.mistake_rate, random.Random(args.seed))
    )
    lines = anyio.run(run_agent, args.home, args.role, args.tasks, solver, args.split, args.seed)
    for line in lines:
        print(json.dumps(line))
    mean = sum(x["reward"] for x in lines) / max(1, len(lines))
    print(f"{len(lines)} runs logged, mean reward {mean:.2f}", file=sys.stderr)


if __name__ == "__main__":
    main()
