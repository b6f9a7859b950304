"""Evaluate an adapter against its base model: the tool, and the job that measures both and applies the gate.

`evaluate_adapter` checks its input and starts a job (`run_job`, in its own process) that:
1. loads the base once with the adapter on top (the base's numbers come from the same model
   with the adapter disabled, on the same examples; the model work is learning.evaluate.measure);
2. teacher-forced metrics on the completion tokens of the test split: eval loss, perplexity,
   token accuracy (batched, no gradients);
3. generation checks per role on up to `max_generate` test prompts (learning.evaluate.checks): the
   rows' tests run in the sandbox where rows carry them (pass rate from tests), the role's check
   elsewhere (compile-only for code), the two figures kept apart; similarity to the reference;
   answers end where serving ends them (end-of-turn tokens, the role template's sections:
   learning.evaluate.serving);
4. a fixed set of sanity prompts per role, asked as the adapter is served (role template, chat
   turn), whose responses are saved for a person to read;
5. the gate (learning.evaluate.gate: task by task from tests, with a paired interval, when rows carry
   tests); writes adapters/<id>/eval/{metrics,sanity_responses}.json (each task's outcome for both
   models under `tasks`), stores
   the metrics and an evaluation event, and moves trained -> candidate when the gate passes.
torch / transformers / peft are imported only inside measure's functions.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, Field

from learning.clock import iso
from learning.data.datasets import dataset_folder
from learning.data.formats import to_example
from learning.errors import Conflict, InvalidInput, check
from learning.evaluate import checks
from learning.evaluate.gate import (
    Confidence,
    GateConfig,
    MinLossImprovement,
    MinPassRate,
    PassRateTolerance,
    apply_gate,
    gate_reason,
)
from learning.evaluate.measure import generate, load_model, model_variant, prompt_text, teacher_forced
from learning.evaluate.serving import adapter_template, served_prompts, stop_strings
from learning.jobs.manage import JobCancelled, start_job
from learning.registry import adapters as registry
from learning.registry.folders import inspect_adapter_folder
from learning.store import Store


class EvalConfig(BaseModel):
    dataset_id: str | None = Field(
        default=None, description="Dataset whose test split is used; default: the adapter's own."
    )
    max_examples: int = Field(default=200, ge=1, le=100_000, description="Test rows for the teacher-forced metrics.")
    max_generate: int = Field(
        default=32, ge=0, le=10_000, description="Test prompts for the generation checks (0: skip)."
    )
    max_new_tokens: int = Field(default=256, ge=1, le=8192)
    stop: list[str] = Field(default_factory=list, description="Generated answers are cut at the first of these.")
    serving_stops: bool = Field(
        default=True,
        description="Also stop where serving stops: at the chat template's end-of-turn tokens and where "
        "the role template starts a section again (learning.evaluate.serving).",
    )
    batch_size: int = Field(default=8, ge=1, le=512)
    max_length: int = Field(
        default=2048, ge=16, description="Longer prompt+completion rows are cut from the left of the prompt."
    )
    sanity: bool = Field(default=True, description="Answer the role's fixed sanity prompts and save the responses.")
    gate: GateConfig = Field(default_factory=GateConfig)


class EvalStarted(BaseModel):
    job_id: str = Field(description="Follow it with wait_job / job_status (CLI: learnloop jobs ID --wait).")
    adapter_id: str
    dataset_id: str
    test_rows: int
    config: EvalConfig


# ---- input checks and the job's start (no torch here) ------------------------------------


def dataset_dir(store: Store, dataset_id: str) -> Path:
    """The dataset's folder as the store recorded it (under the home); an id the store does not
    hold is NotFound, never a path."""
    return dataset_folder(store, dataset_id)


def read_rows(path: Path, limit: int | None = None) -> list[dict[str, Any]]:
    rows = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise InvalidInput(f"{path} line {number} is not JSON ({exc.msg}); rebuild the dataset.") from exc
                if limit and len(rows) >= limit:
                    break
    return rows


def evaluate_adapter(
    store: Store,
    adapter_id: Annotated[str, Field(description="The adapter to evaluate (a trained adapter; see list_adapters).")],
    dataset_id: Annotated[
        str | None, Field(description="Evaluate on this dataset's test split instead of the adapter's own.")
    ] = None,
    *,
    max_examples: Annotated[
        int, Field(ge=1, le=100_000, description="Test rows for loss / perplexity / token accuracy.")
    ] = 200,
    max_generate: Annotated[
        int,
        Field(ge=0, le=10_000, description="Test prompts answered and checked (compiles, tests, patch form, verdict)."),
    ] = 32,
    max_new_tokens: Annotated[int, Field(ge=1, le=8192, description="Longest generated answer, in tokens.")] = 256,
    stop: Annotated[
        list[str] | None,
        Field(
            max_length=16,
            description="Cut each generated answer at the first of these strings (the stop sequences the "
            "agent's runtime uses), before it is checked.",
        ),
    ] = None,
    min_pass_rate: MinPassRate = None,
    min_loss_improvement: MinLossImprovement = 0.0,
    pass_rate_tolerance: PassRateTolerance = 0.0,
    confidence: Confidence = 0.95,
    batch_size: int = 8,
    gate: GateConfig | dict | None = None,
    sanity: bool = True,
) -> EvalStarted:
    """Evaluate an adapter against its base on held-out examples, as a background job (returns
    its job id at once; follow it with wait_job). Both models on the same examples: eval loss,
    perplexity, token accuracy; answers checked per role, by running the rows' tests where they
    carry some; sanity prompts saved. If the gate passes (loss below the base's; from tests, task by
    task, not worse than the base beyond the tolerance at the confidence; other checks' pass rate not
    below the base's), the adapter becomes a candidate. Python callers may pass the whole gate as
    `gate` instead of its fields."""
    if gate is None:
        gate = GateConfig(
            min_pass_rate=min_pass_rate,
            min_loss_improvement=min_loss_improvement,
            pass_rate_tolerance=pass_rate_tolerance,
            confidence=confidence,
        )
    adapter = registry.get_adapter(store, adapter_id)
    if adapter.status in ("training", "failed"):
        raise Conflict(
            f"Adapter {adapter_id} is {adapter.status}; only a trained adapter can be evaluated"
            + (" (wait for its training job)." if adapter.status == "training" else ".")
        )
    inspect_adapter_folder(Path(adapter.path))
    dataset_id = dataset_id or adapter.dataset_id
    if not dataset_id:
        raise InvalidInput(f"Adapter {adapter_id} has no dataset of its own; name one (dataset_id / --dataset).")
    test = dataset_dir(store, dataset_id) / "test.jsonl"
    problems = []
    if not test.is_file():
        problems.append(f"dataset {dataset_id!r} has no test split ({test}); list datasets or make one with make_sft")
    rows = read_rows(test) if not problems else []
    if not problems and not rows:
        problems.append(f"the test split of dataset {dataset_id!r} is empty; make a dataset with more runs")
    check(problems, f"Cannot evaluate {adapter_id}:")
    gate = gate if isinstance(gate, GateConfig) else GateConfig(**(gate or {}))
    config = EvalConfig(
        dataset_id=dataset_id,
        max_examples=max_examples,
        max_generate=max_generate,
        max_new_tokens=max_new_tokens,
        stop=[s for s in stop or [] if s],
        batch_size=batch_size,
        sanity=sanity,
        gate=gate,
    )
    job_id = start_job(
        store, "evaluate", "learning.evaluate.evaluation:run_job", config.model_dump(), subject=adapter_id
    )
    return EvalStarted(job_id=job_id, adapter_id=adapter_id, dataset_id=dataset_id, test_rows=len(rows), config=config)


# ---- the job ---------------------------------------------------------------------------------


def run_job(ctx) -> dict[str, Any]:
    """Evaluate ctx.subject (an adapter id) as EvalConfig(ctx.params) says."""
    store, cfg = ctx.store, EvalConfig(**ctx.params)
    assert cfg.dataset_id is not None  # evaluate_adapter resolved it before starting the job
    adapter = registry.get_adapter(store, ctx.subject)
    started = time.time()
    rows = read_rows(dataset_dir(store, cfg.dataset_id) / "test.jsonl", cfg.max_examples)
    ctx.progress(force=True, stage="loading", message=f"loading {adapter.base_model} + {adapter.id}")
    model, tok = load_model(adapter.base_model, adapter.path)
    examples = [to_example(r) for r in rows]
    template = adapter_template(store, adapter, cfg.dataset_id)
    stops = _stops(tok, template, cfg)
    total = 2 * len(examples) + 2 * min(cfg.max_generate, len(examples))

    def step(done: int, stage: str) -> None:
        if ctx.cancelled():
            raise JobCancelled("evaluation cancelled; nothing was recorded")
        ctx.progress(stage=stage, step=done, total_steps=total, message=f"{stage} {done}/{total}")

    result = _teacher_forced_both(model, tok, examples, cfg, step)
    gen_rows = rows[: cfg.max_generate]
    answers = _generate_and_check_both(model, tok, adapter.role, gen_rows, cfg, step, 2 * len(examples), result, stops)
    sanity = run_sanity(model, tok, adapter, examples, cfg, template, stops["strings"]) if cfg.sanity else []
    carry = any(e["tests"] and checks.runs_tests(adapter.role, r, e["completion"]) for r, e in zip(rows, examples))
    gate = apply_gate(result["adapter"], result["base"], cfg.gate, rows_carry_tests=carry)
    metrics = summarize(adapter, cfg, result, gate, len(examples), len(gen_rows), time.time() - started)
    metrics["samples"] = _samples(gen_rows, answers)
    metrics["tasks"] = task_outcomes(result)
    metrics["stops"] = stops
    write_outputs(Path(adapter.path), metrics, sanity)
    to_status = "candidate" if gate["passed"] and cfg.gate.promote_to_candidate else None
    stored = {k: v for k, v in metrics.items() if k != "samples"}
    after = registry.record_evaluation(
        store,
        adapter.id,
        stored,
        f"evaluated on {cfg.dataset_id}; {gate_reason(gate)}",
        to_status=to_status,
        data={"job_id": ctx.job_id, **metrics["summary"]},
    )
    ctx.progress(force=True, stage="done", step=total, total_steps=total, message=gate_reason(gate))
    return {
        **metrics["summary"],
        "status": after.status,
        "metrics_path": str(Path(adapter.path) / "eval" / "metrics.json"),
    }


def _teacher_forced_both(
    model, tok, examples: list[dict[str, Any]], cfg: EvalConfig, step
) -> dict[str, dict[str, Any]]:
    """Teacher-forced metrics of the adapter, then of the base, on the same examples."""
    result: dict[str, dict[str, Any]] = {"base": {}, "adapter": {}}
    done = 0
    for name in ("adapter", "base"):
        with model_variant(model, name):
            tf = teacher_forced(
                model,
                tok,
                examples,
                cfg.batch_size,
                cfg.max_length,
                on_batch=lambda n, name=name, done=done: step(done + n, f"teacher-forced {name}"),
            )
        result[name].update(tf)
        done += len(examples)
    return result


def _stops(tok, template: str | None, cfg: EvalConfig) -> dict[str, list[str]]:
    """Where answers end: the stop strings, and the tokens generation ends at."""
    from learning.models.generate import end_of_turn_tokens

    if not cfg.serving_stops:
        return {"strings": list(cfg.stop), "tokens": [tok.eos_token] if tok.eos_token else []}
    return {"strings": stop_strings(template, cfg.stop), "tokens": end_of_turn_tokens(tok)}


def _generate_and_check_both(
    model, tok, role: str, gen_rows: list[dict[str, Any]], cfg: EvalConfig, step, done: int, result, stops
) -> dict[str, list[str]]:
    """The adapter's and the base's answers to the same prompts; their check scores go into result."""
    answers: dict[str, list[str]] = {}
    for name in ("adapter", "base"):
        with model_variant(model, name):
            answers[name] = generate(
                model,
                tok,
                [to_example(r)["prompt"] for r in gen_rows],
                cfg.max_new_tokens,
                cfg.batch_size,
                on_batch=lambda n, name=name, done=done: step(done + n, f"generating {name}"),
                stop=stops["strings"],
                stop_at_turn_end=cfg.serving_stops,
            )
        done += len(gen_rows)
        result[name].update(checks.score(role, gen_rows, answers[name]))
    return answers


def _samples(gen_rows: list[dict[str, Any]], answers: dict[str, list[str]]) -> list[dict[str, str]]:
    """The first five prompts with the reference and both answers, cut short, for a person to read."""
    return [
        {
            "prompt": to_example(r)["prompt"][-400:],
            "reference": to_example(r)["completion"][:400],
            "adapter": a[:400],
            "base": b[:400],
        }
        for r, a, b in list(zip(gen_rows, answers["adapter"], answers["base"]))[:5]
    ]


def task_outcomes(result: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Each generated row's outcome for both models: tested or not, passed, tests passed of total,
    and the reward-hacking monitor's reasons where it flagged the answer."""
    keep = ("passed", "tests_passed", "tests_total", "sandbox", "isolation", "suspicious")
    return [
        {
            "row": i,
            "tested": a.get("tested", False),
            "adapter": {k: a[k] for k in keep if k in a},
            "base": {k: b[k] for k in keep if k in b},
        }
        for i, (a, b) in enumerate(zip(result["adapter"].get("checks") or [], result["base"].get("checks") or []))
    ]


def _sandbox_modes(*results: dict[str, Any]) -> str | None:
    """How the tests ran ("bwrap", or "none" when the user chose no jail); None when none ran."""
    modes = sorted({c["sandbox"] for r in results for c in r.get("checks") or [] if c.get("sandbox")})
    return ",".join(modes) or None


def summarize(adapter, cfg: EvalConfig, result, gate, n_tf: int, n_gen: int, elapsed: float) -> dict[str, Any]:
    a, b = result["adapter"], result["base"]
    tests = next((c["comparison"] for c in gate["conditions"] if c.get("comparison")), None)
    summary = {
        "eval_loss": a.get("eval_loss"),
        "base_eval_loss": b.get("eval_loss"),
        "perplexity": a.get("perplexity"),
        "base_perplexity": b.get("perplexity"),
        "token_accuracy": a.get("token_accuracy"),
        "base_token_accuracy": b.get("token_accuracy"),
        "pass_rate": a.get("pass_rate"),
        "base_pass_rate": b.get("pass_rate"),
        "pass_rate_basis": a.get("pass_rate_basis"),
        "pass_rate_tests": a.get("pass_rate_tests"),
        "base_pass_rate_tests": b.get("pass_rate_tests"),
        "tested_rows": a.get("tested_rows", 0),
        "tests_difference_interval": tests["interval"] if tests else None,
        "tests_confidence": tests["confidence"] if tests else None,
        "tests_mcnemar_p": tests["mcnemar"]["p_value"] if tests else None,
        "sandbox": _sandbox_modes(a, b),
        "pass_rate_compile_only": a.get("pass_rate_checks") if adapter.role == "coder" else None,
        "base_pass_rate_compile_only": b.get("pass_rate_checks") if adapter.role == "coder" else None,
        "similarity": a.get("similarity"),
        "base_similarity": b.get("similarity"),
        "suspicious_answers": a.get("suspicious_answers"),  # flagged by the reward-hacking monitor
        "base_suspicious_answers": b.get("suspicious_answers"),
        "suspicious_share": a.get("suspicious_share"),
        "base_suspicious_share": b.get("suspicious_share"),
        "gate_passed": gate["passed"],
        "gate_failed": gate["failed"],
    }
    return {
        **summary,
        "summary": summary,
        "adapter_id": adapter.id,
        "role": adapter.role,
        "dataset_id": cfg.dataset_id,
        "base_model": adapter.base_model,
        "examples": n_tf,
        "generated": n_gen,
        "adapter": a,
        "base": b,
        "gate": gate,
        "config": cfg.model_dump(),
        "elapsed_s": round(elapsed, 2),
        "evaluated": iso(time.time()),
    }


def write_outputs(folder: Path, metrics: dict[str, Any], sanity: list[dict[str, Any]]) -> None:
    out = folder / "eval"
    out.mkdir(exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, ensure_ascii=False))
    (out / "sanity_responses.json").write_text(json.dumps(sanity, indent=2, ensure_ascii=False))


def run_sanity(
    model, tok, adapter, examples: list[dict[str, Any]], cfg: EvalConfig, template: str | None, stop: list[str]
) -> list[dict[str, Any]]:
    """The role's fixed prompts, answered by the adapter and the base, for a person to read.
    Each is asked as the adapter is served: rendered with its role template, in a chat turn
    when the dataset's prompts are messages, and cut where serving stops."""
    chat = bool(examples) and isinstance(examples[0]["prompt"], list)
    prompts = checks.sanity_prompts(adapter.role)
    served = served_prompts(adapter, template, chat, prompts)
    answers = {}
    for name in ("adapter", "base"):
        with model_variant(model, name):
            answers[name] = generate(
                model,
                tok,
                served,
                min(cfg.max_new_tokens, 200),
                cfg.batch_size,
                stop=stop,
                stop_at_turn_end=cfg.serving_stops,
            )
    return [
        {"prompt": p, "served": prompt_text(tok, s), "adapter": a, "base": b}
        for p, s, a, b in zip(prompts, served, answers["adapter"], answers["base"])
    ]
