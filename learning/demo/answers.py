"""The demo's agent at work: a model answers tasks, execution scores them, the runs are logged."""

from __future__ import annotations

from collections.abc import Callable

from learning.evaluate import codeenv
from learning.models.generate import generate

Report = Callable[..., None]  # report(stage, message, done=None, total=None, final=False)
AGENT = "learnloop-demo"


def answer_and_score(model, tok, tasks: list[codeenv.Task], cfg) -> tuple[list[str], list[codeenv.Score]]:
    """The model's greedy answers to `tasks` (grouped by stop strings), scored by execution."""
    groups: dict[tuple[str, ...], list[int]] = {}
    for i, t in enumerate(tasks):
        groups.setdefault(codeenv.stop_for(t), []).append(i)
    answers = [""] * len(tasks)
    for stop, idx in groups.items():
        outs = generate(
            model,
            tok,
            [codeenv.prompt(tasks[i]) for i in idx],
            cfg.max_new_tokens,
            stop=stop,
            batch_size=cfg.batch_size,
        )
        for i, out in zip(idx, outs):
            answers[i] = out
    return answers, codeenv.score_answers(tasks, answers)


def rates(scores: list[codeenv.Score]) -> dict[str, float]:
    n = len(scores) or 1
    return {
        "pass_rate": round(sum(s.reward == 1.0 for s in scores) / n, 4),
        "mean_reward": round(sum(s.reward for s in scores) / n, 4),
        "n": len(scores),
    }
