"""GRPO with execution rewards: the parts of the training recipe that only method=grpo uses.

TRL's GRPOTrainer samples `num_generations` answers per prompt from the current policy (the base
with the LoRA), and each answer's reward is the share of its row's tests it passes, executed in
the jail (learning.sandbox). Optional small terms, each a reward function of its own that TRL
weighs, adds and logs apart (`rewards/<name>/mean`): `compile_bonus` when the answer's code
compiles, minus `length_penalty` times the answer's share of `max_completion_length`. A term
weighted 0 is not computed.

A group whose answers all score the same has zero advantage: it moves nothing (with kl_coef 0 it
adds nothing to the loss either). Such groups are counted as dropped, per step and in total, and a
run in which no group varied for `no_signal_steps` steps in a row stops with an error saying what
to change, instead of spending hours learning nothing.

Every answer also passes the reward-hacking monitor (learning.sandbox.monitor) before it runs:
the share of answers whose code touches the harness or the interpreter's internals is in each
step's progress (`hacking_share`), the totals in the metrics, and the first offending answers in
adapters/<id>/suspicious.jsonl. The monitor only reports; the verdict is decided outside the
answer's process.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

from learning.jobs.manage import JobContext
from learning.models.generate import cut_at_stop
from learning.runs.record import log_runs
from learning.sandbox.code import extract_code, tested_code
from learning.sandbox.execute import run_many
from learning.sandbox.monitor import suspicious
from learning.train.config import TrainConfig
from learning.train.job import TrainJob
from learning.train.progress import Curve, trainer_callback_base

SAMPLE_AGENT = "learnloop-grpo"  # the agent of the runs a GRPO job logs (log_samples)
TEST_TIMEOUT_S = 2.0  # per answer, as the evaluation gate runs them
SUSPICIOUS_FILE = "suspicious.jsonl"  # in the adapter's folder: the first answers the monitor flagged
MAX_SUSPICIOUS_LOGGED = 200  # answers written there at most
SUSPICIOUS_CHARS = 2000  # of each answer kept there


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


def _answers(completions: list[Any], stop: Sequence[str]) -> list[str]:
    """The answers as served: each ends at the first of the stop strings."""
    return [cut_at_stop(_text(c), list(stop)) for c in completions]


class ExecutionReward:
    """TRL reward function: the share of the row's tests the answer passes, run in the jail.

    Counts what it scored (answers, seconds in the sandbox) and what the reward-hacking monitor
    flagged (answers, reasons); writes the first flagged answers to `suspicious_log`; with `sink`,
    hands each batch's (prompt, answer, reward, result, suspicious) to it, e.g. to log them as runs."""

    __name__ = "execution"  # the name TRL logs the reward under

    def __init__(
        self,
        stop: Sequence[str] = (),
        sink: Callable[[list[dict[str, Any]]], None] | None = None,
        suspicious_log: Path | None = None,
    ):
        self.stop = list(stop)
        self.sink = sink
        self.scored = 0
        self.seconds = 0.0
        self.flagged = 0  # answers the monitor flagged
        self.reasons: Counter[str] = Counter()
        self.monitor_s = 0.0
        self.step = 0  # the training step being scored (GroupCallback sets it)
        self.suspicious_log = suspicious_log
        self.logged = _count_lines(suspicious_log)  # a resumed run goes on counting

    def __call__(
        self, prompts: list[Any], completions: list[Any], tests: list[list[str]], **_: Any
    ) -> list[float | None]:
        answers = _answers(completions, self.stop)
        started = time.perf_counter()
        flags = [suspicious(extract_code(a)[1]) for a in answers]  # the code that runs, or the whole answer
        self.monitor_s += time.perf_counter() - started
        started = time.perf_counter()  # `seconds` is the sandbox's share, the monitor's is apart
        # The code of a fenced block, else the whole answer; one that does not compile fails in the jail too.
        results = run_many([(tested_code(a) or a, list(t)) for a, t in zip(answers, tests)], timeout=TEST_TIMEOUT_S)
        rewards: list[float | None] = [round(res.score, 6) for res in results]
        self.scored += len(answers)
        self.flagged += sum(1 for f in flags if f)
        self.reasons.update(r for f in flags for r in f)
        self._log_suspicious(prompts, answers, rewards, results, flags)
        self.seconds += time.perf_counter() - started
        if self.sink is not None:
            self.sink(
                [
                    {"prompt": p, "answer": a, "reward": r, "result": res, "tests": list(t), "suspicious": f}
                    for p, a, r, res, t, f in zip(prompts, answers, rewards, results, tests, flags)
                ]
            )
        return rewards

    def _log_suspicious(self, prompts, answers, rewards, results, flags) -> None:
        """The flagged answers of this batch, up to MAX_SUSPICIOUS_LOGGED in all, one JSON line each."""
        if self.suspicious_log is None or self.logged >= MAX_SUSPICIOUS_LOGGED:
            return
        lines = []
        for prompt, answer, reward, res, reasons in zip(prompts, answers, rewards, results, flags):
            if reasons and self.logged + len(lines) < MAX_SUSPICIOUS_LOGGED:
                record = {
                    "step": self.step,
                    "reasons": reasons,
                    "reward": reward,
                    "tests_passed": res.passed,
                    "tests_total": res.total,
                    "prompt": (prompt if isinstance(prompt, str) else json.dumps(prompt))[-300:],
                    "answer": answer[:SUSPICIOUS_CHARS],
                }
                lines.append(json.dumps(record, ensure_ascii=False) + "\n")
        if not lines:
            return
        try:
            with open(self.suspicious_log, "a", encoding="utf-8") as handle:
                handle.writelines(lines)
            self.logged += len(lines)
        except OSError:  # a monitor never stops training: the counts go on without the file
            self.suspicious_log = None


def _count_lines(path: Path | None) -> int:
    if path is None or not path.is_file():
        return 0
    with open(path, encoding="utf-8") as handle:
        return sum(1 for _ in handle)


def compile_bonus(completions: list[Any], stop: Sequence[str] = (), **_: Any) -> list[float]:
    """TRL reward function: 1 for an answer with Python code that compiles (the code that would
    run; an empty answer is no code), else 0. Weighted by the config's compile_bonus."""
    return [float(tested_code(a) is not None) for a in _answers(completions, stop)]


def length_penalty(completions: list[Any], stop: Sequence[str] = (), max_chars: int = 1024, **_: Any) -> list[float]:
    """TRL reward function: minus the answer's share of max_chars. Weighted by the config's length_penalty."""
    return [-min(1.0, len(a) / max_chars) for a in _answers(completions, stop)]


def reward_funcs(cfg: TrainConfig, execution: ExecutionReward) -> tuple[list[Any], list[float]]:
    """The reward functions TRL adds up, and their weights: the execution reward, and each small term
    whose weight is not 0 (a term weighted 0 is left out, so it is never computed)."""
    funcs: list[Any] = [execution]
    weights = [1.0]
    if cfg.compile_bonus:
        funcs.append(partial(compile_bonus, stop=cfg.stop))  # TRL names a partial by its function
        weights.append(cfg.compile_bonus)
    if cfg.length_penalty:
        max_chars = 4 * cfg.max_completion_length  # ~4 characters a token
        funcs.append(partial(length_penalty, stop=cfg.stop, max_chars=max_chars))
        weights.append(cfg.length_penalty)
    return funcs, weights


def reward_parts(logs: dict[str, Any]) -> dict[str, Any]:
    """Each reward function's mean in a step's log (TRL's rewards/<name>/mean), as reward_<name>."""
    return {
        f"reward_{key.split('/')[1]}": round(float(value), 4)
        for key, value in logs.items()
        if key.startswith("rewards/") and key.endswith("/mean") and value is not None
    }


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
                        "isolation": res.isolation,
                    },
                    # the monitor's reasons, when it flagged the answer (learning.sandbox.monitor)
                    "meta": {
                        "source": "grpo-sample",
                        **({"suspicious": s["suspicious"]} if s.get("suspicious") else {}),
                    },
                    "tests": s["tests"],
                }
            )
        log_runs(ctx.store, records)

    return log


def grpo_args(common: dict[str, Any], cfg: TrainConfig, reward_weights: list[float]) -> dict[str, Any]:
    """GRPOConfig's arguments: batch_size counts prompts, each sampled num_generations times."""
    args = {k: v for k, v in common.items() if k != "max_length"}  # GRPO bounds the answer instead
    return {
        **args,
        "per_device_train_batch_size": cfg.batch_size * cfg.num_generations,
        "num_generations": cfg.num_generations,
        "max_completion_length": cfg.max_completion_length,
        "temperature": cfg.temperature,
        "beta": cfg.kl_coef,
        "reward_weights": reward_weights,
        "log_completions": False,
        **vllm_args(cfg.vllm),
    }


def vllm_args(choice: str) -> dict[str, Any]:
    """TRL's vLLM mode for sampling, the cost of a GRPO step: colocated on each process's GPU,
    or a `trl vllm-serve` server; none on CPU, where the trainer's own generate samples."""
    if choice == "auto":
        import importlib.util

        import torch

        choice = "colocate" if torch.cuda.is_available() and importlib.util.find_spec("vllm") else "off"
    if choice == "off":
        return {}
    if choice == "colocate":
        return {"use_vllm": True, "vllm_mode": "colocate"}
    return {"use_vllm": True, "vllm_mode": "server", "vllm_server_base_url": choice}


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
                "hacking_share": h.get("hacking_share"),  # GroupCallback adds it to the step's log
                **reward_parts(h),
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
    """Puts each step's reward, its spread, the share of dropped groups, answers scored per second
    and the share of answers the reward-hacking monitor flagged into the job's progress (and that
    share into the step's log); stops the run when no group has varied for `patience` steps."""

    def __init__(self, ctx: JobContext, reward: ExecutionReward, groups_per_step: int, patience: int, rank0: bool):
        self.ctx, self.reward, self.rank0 = ctx, reward, rank0
        self.groups_per_step, self.patience = groups_per_step, patience
        self.flat_steps = 0
        self.no_signal = False
        self._t0 = time.time()
        self._counted = (0, 0)  # (scored, flagged) at the previous log
        self.reward_curve = Curve()

    def on_step_begin(self, args, state, control, **kw):
        self.reward.step = state.global_step + 1

    def on_log(self, args, state, control, logs=None, **kw):
        if not logs or "frac_reward_zero_std" not in logs:
            return control
        all_flat = logs["frac_reward_zero_std"] >= 1.0
        self.flat_steps = self.flat_steps + 1 if all_flat else 0
        share = self._hacking_share(state)
        if self.rank0:
            elapsed = max(1e-9, time.time() - self._t0)
            self.ctx.progress(
                reward=round(float(logs.get("reward", 0.0)), 4),
                reward_curve=self.reward_curve.add(state.global_step, round(float(logs.get("reward", 0.0)), 4)),
                reward_std=round(float(logs.get("reward_std", 0.0)), 4),
                **reward_parts(logs),
                dropped_share=round(float(logs["frac_reward_zero_std"]), 4),
                answers_scored=self.reward.scored,
                answers_per_s=round(self.reward.scored / elapsed, 2),
                hacking_share=share,
                suspicious_answers=self.reward.flagged,
            )
        if self.flat_steps >= self.patience:
            self.no_signal = True
            control.should_save = True
            control.should_training_stop = True
        return control

    def _hacking_share(self, state) -> float | None:
        """The share of answers flagged since the previous log, also written into this step's log
        entry (so reward_by_step keeps it, across a resume too); the first flags go to the job's log."""
        scored, flagged = self.reward.scored - self._counted[0], self.reward.flagged - self._counted[1]
        self._counted = (self.reward.scored, self.reward.flagged)
        share = round(flagged / scored, 4) if scored else None
        if state.log_history and "frac_reward_zero_std" in state.log_history[-1]:
            state.log_history[-1]["hacking_share"] = share
        if flagged and self.rank0:
            top = ", ".join(f"{r} {n}" for r, n in self.reward.reasons.most_common(3))
            self.ctx.log(
                f"[learnloop] step {state.global_step}: the monitor flagged {flagged} of {scored} answers "
                f"(so far: {top}; see {SUSPICIOUS_FILE})"
            )
        return share


def grpo_trainer(ctx: JobContext, job: TrainJob, inputs: dict[str, Any], common: dict[str, Any], rank0: bool):
    """TRL's GRPOTrainer with the execution reward (and the terms weighted above 0) and the group
    callback; returns both."""
    from trl import GRPOConfig, GRPOTrainer

    cfg = job.config
    sink = sample_logger(ctx, job.role, job.adapter_id) if cfg.log_samples else None
    log = Path(job.adapter_dir) / SUSPICIOUS_FILE if rank0 else None
    reward = ExecutionReward(cfg.stop, sink, suspicious_log=log)
    funcs, weights = reward_funcs(cfg, reward)
    groups_per_step = cfg.batch_size * cfg.grad_accum * job.num_processes
    callback = GroupCallback(ctx, reward, groups_per_step, cfg.no_signal_steps, rank0)
    inputs = {**inputs, "callbacks": [*inputs["callbacks"], callback]}
    trainer = GRPOTrainer(args=GRPOConfig(**grpo_args(common, cfg, weights)), reward_funcs=funcs, **inputs)
    return trainer, callback


def grpo_metrics(trainer, callback: GroupCallback, runtime_s: float) -> dict[str, Any]:
    reward = callback.reward
    return {
        **group_stats(trainer.state.log_history, callback.groups_per_step),
        "answers_scored": reward.scored,
        "suspicious_answers": reward.flagged,  # flagged by the reward-hacking monitor
        "hacking_share": round(reward.flagged / reward.scored, 4) if reward.scored else None,
        "suspicious_reasons": dict(reward.reasons.most_common()),
        "suspicious_logged": reward.logged,  # in SUSPICIOUS_FILE, at most MAX_SUSPICIOUS_LOGGED
        "monitor_s": round(reward.monitor_s, 3),
        "scoring_s": round(reward.seconds, 2),
        "answers_per_s": round(reward.scored / runtime_s, 2) if runtime_s else None,
        "steps_per_s": round(trainer.state.global_step / runtime_s, 4) if runtime_s else None,
    }
