"""GRPO with execution rewards: the parts of the training recipe that only method=grpo uses.

TRL's GRPOTrainer samples `num_generations` answers per prompt from the current policy (the base
with the LoRA), and each answer's reward is the share of its row's tests it passes, executed in
the jail (learning.sandbox). Optional small terms: `compile_bonus` when the answer's code compiles,
minus `length_penalty` times the answer's share of `max_completion_length`.

A group whose answers all score the same has zero advantage: it moves nothing (with kl_coef 0 it
adds nothing to the loss either). Such groups are counted as dropped, per step and in total, and a
run in which no group varied for `no_signal_steps` steps in a row stops with an error saying what
to change, instead of spending hours learning nothing.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from learning.jobs.manage import JobContext
from learning.models.generate import cut_at_stop
from learning.runs.record import log_runs
from learning.sandbox.code import tested_code
from learning.sandbox.execute import run_many
from learning.train.progress import trainer_callback_base

SAMPLE_AGENT = "learnloop-grpo"  # the agent of the runs a GRPO job logs (log_samples)
TEST_TIMEOUT_S = 2.0  # per answer, as the evaluation gate runs them


def grpo_rows(raw: list[dict[str, Any]], rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """(prompt, tests) for every training row that carries tests. `raw` are the dataset's rows,
    `rows` the same rows in TRL's columns: prompt/completion (the prompt is text) or messages (the
    prompt is the conversation before the last assistant turn)."""
    out = []
    for source, row in zip(raw, rows):
        tests = source.get("tests")
        if not tests:
            continue
        if "messages" in row:
            turns = row["messages"]
            last = max((i for i, m in enumerate(turns) if m.get("role") == "assistant"), default=len(turns))
            prompt: Any = turns[:last]
        else:
            prompt = row["prompt"]
        out.append({"prompt": prompt, "tests": [str(t) for t in tests]})
    return out


def _text(completion: Any) -> str:
    if isinstance(completion, list):  # conversational: [{"role": "assistant", "content": ...}]
        return "".join(str(m.get("content") or "") for m in completion)
    return str(completion)


class ExecutionReward:
    """TRL reward function: the share of the row's tests the answer passes, run in the jail.

    Counts what it scored (answers, seconds in the sandbox); with `sink`, hands each batch's
    (prompt, answer, reward, result) to it, e.g. to log them as runs."""

    __name__ = "execution"  # the name TRL logs the reward under

    def __init__(self, cfg: dict[str, Any], sink: Callable[[list[dict[str, Any]]], None] | None = None):
        self.stop = list(cfg.get("stop") or [])
        self.compile_bonus = float(cfg.get("compile_bonus") or 0.0)
        self.length_penalty = float(cfg.get("length_penalty") or 0.0)
        self.max_chars = 4 * int(cfg.get("max_completion_length") or 256)  # ~4 characters a token
        self.sink = sink
        self.scored = 0
        self.seconds = 0.0

    def __call__(
        self, prompts: list[Any], completions: list[Any], tests: list[list[str]], **_: Any
    ) -> list[float | None]:
        started = time.perf_counter()
        answers = [cut_at_stop(_text(c), self.stop) for c in completions]
        # The code of a fenced block, else the whole answer; one that does not compile fails in the jail too.
        results = run_many([(tested_code(a) or a, list(t)) for a, t in zip(answers, tests)], timeout=TEST_TIMEOUT_S)
        rewards: list[float | None] = []
        for answer, res in zip(answers, results):
            reward = res.score + (self.compile_bonus if res.compiled else 0.0)
            reward -= self.length_penalty * min(1.0, len(answer) / self.max_chars)
            rewards.append(round(reward, 6))
        self.scored += len(answers)
        self.seconds += time.perf_counter() - started
        if self.sink is not None:
            self.sink(
                [
                    {"prompt": p, "answer": a, "reward": r, "result": res, "tests": list(t)}
                    for p, a, r, res, t in zip(prompts, answers, rewards, results, tests)
                ]
            )
        return rewards


def sample_logger(ctx: JobContext, role: str, adapter_id: str) -> Callable[[list[dict[str, Any]]], None]:
    """A sink that logs each scored answer as a run (agent learnloop-grpo) with its reward."""

    def log(samples: list[dict[str, Any]]) -> None:
        records = []
        for s in samples:
            res = s["result"]
            prompt = s["prompt"]
            instruction = prompt if isinstance(prompt, str) else json.dumps(prompt)
            records.append(
                {
                    "role": role,
                    "instruction": instruction,
                    "output": s["answer"] if s["answer"].strip() else "(empty answer)",
                    "reward": min(1.0, max(0.0, s["reward"])),
                    "agent": SAMPLE_AGENT,
                    "adapter_id": adapter_id,
                    "signals": {
                        "compiled": res.compiled,
                        "tests_passed": res.passed,
                        "tests_total": res.total,
                        "timed_out": res.timed_out,
                        "executed": True,
                    },
                    "meta": {"source": "grpo-sample"},
                    "tests": s["tests"],
                }
            )
        log_runs(ctx.store, records)

    return log


def grpo_args(common: dict[str, Any], cfg: dict[str, Any]) -> dict[str, Any]:
    """GRPOConfig's arguments: batch_size counts prompts, each sampled num_generations times."""
    args = {k: v for k, v in common.items() if k != "max_length"}  # GRPO bounds the answer instead
    return {
        **args,
        "per_device_train_batch_size": cfg["batch_size"] * cfg["num_generations"],
        "num_generations": cfg["num_generations"],
        "max_completion_length": cfg["max_completion_length"],
        "temperature": cfg["temperature"],
        "beta": cfg["kl_coef"],
        "log_completions": False,
    }


def group_stats(log_history: list[dict[str, Any]], groups_per_step: int) -> dict[str, Any]:
    """What the steps' logs say about the groups: rewards per step, and how many groups were dropped
    (all answers scored alike)."""
    steps = [h for h in log_history if "frac_reward_zero_std" in h]
    logging = [max(1, h["step"] - (steps[i - 1]["step"] if i else 0)) for i, h in enumerate(steps)]
    groups = sum(n * groups_per_step for n in logging)
    dropped = sum(round(h["frac_reward_zero_std"] * n * groups_per_step) for h, n in zip(steps, logging))
    return {
        "groups": groups,
        "groups_dropped": dropped,
        "dropped_share": round(dropped / groups, 4) if groups else None,
        "reward_by_step": [
            {
                "step": h["step"],
                "reward": round(h.get("reward", 0.0), 4),
                "reward_std": round(h.get("reward_std", 0.0), 4),
                "dropped_share": round(h["frac_reward_zero_std"], 4),
            }
            for h in steps
        ],
    }


def no_signal_message(steps: int, stats: dict[str, Any]) -> str:
    return (
        f"GRPO stopped: {stats['groups_dropped']} of {stats['groups']} groups dropped, none varied in the last "
        f"{steps} steps (every answer to a prompt scored the same): nothing to learn. Raise temperature or "
        "num_generations, start from an SFT adapter (start_from), or use tasks the model sometimes solves; "
        "resume=true continues from the checkpoint."
    )


class GroupCallback(trainer_callback_base()):
    """Puts each step's reward, its spread, the share of dropped groups and answers scored per second
    into the job's progress; stops the run when no group has varied for `patience` steps."""

    def __init__(self, ctx: JobContext, reward: ExecutionReward, groups_per_step: int, patience: int, rank0: bool):
        self.ctx, self.reward, self.rank0 = ctx, reward, rank0
        self.groups_per_step, self.patience = groups_per_step, patience
        self.flat_steps = 0
        self.no_signal = False
        self._t0 = time.time()

    def on_log(self, args, state, control, logs=None, **kw):
        if not logs or "frac_reward_zero_std" not in logs:
            return control
        all_flat = logs["frac_reward_zero_std"] >= 1.0
        self.flat_steps = self.flat_steps + 1 if all_flat else 0
        if self.rank0:
            elapsed = max(1e-9, time.time() - self._t0)
            self.ctx.progress(
                reward=round(float(logs.get("reward", 0.0)), 4),
                reward_std=round(float(logs.get("reward_std", 0.0)), 4),
                dropped_share=round(float(logs["frac_reward_zero_std"]), 4),
                answers_scored=self.reward.scored,
                answers_per_s=round(self.reward.scored / elapsed, 2),
            )
        if self.flat_steps >= self.patience:
            self.no_signal = True
            control.should_save = True
            control.should_training_stop = True
        return control


def grpo_trainer(ctx: JobContext, inputs: dict[str, Any], common: dict[str, Any], rank0: bool):
    """TRL's GRPOTrainer with the execution reward and the group callback; returns both."""
    from trl import GRPOConfig, GRPOTrainer

    p, cfg = ctx.params, ctx.params["config"]
    sink = sample_logger(ctx, p["role"], p["adapter_id"]) if cfg["log_samples"] else None
    reward = ExecutionReward(cfg, sink)
    groups_per_step = cfg["batch_size"] * cfg["grad_accum"] * p.get("num_processes", 1)
    callback = GroupCallback(ctx, reward, groups_per_step, cfg["no_signal_steps"], rank0)
    inputs = {**inputs, "callbacks": [*inputs["callbacks"], callback]}
    trainer = GRPOTrainer(args=GRPOConfig(**grpo_args(common, cfg)), reward_funcs=reward, **inputs)
    return trainer, callback


def grpo_metrics(trainer, callback: GroupCallback, runtime_s: float) -> dict[str, Any]:
    reward = callback.reward
    return {
        **group_stats(trainer.state.log_history, callback.groups_per_step),
        "answers_scored": reward.scored,
        "scoring_s": round(reward.seconds, 2),
        "answers_per_s": round(reward.scored / runtime_s, 2) if runtime_s else None,
        "steps_per_s": round(trainer.state.global_step / runtime_s, 4) if runtime_s else None,
    }
