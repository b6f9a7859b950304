"""Evaluation time with and without serving's stops.

    python bench/eval_stops.py [--size tiny] [--rows 16] [--max-new-tokens 128] [--repeats 2]
    python bench/eval_stops.py --base FOLDER ...   # a real chat model, e.g. one `learnloop base import` made
    python bench/eval_stops.py --base FOLDER --generate-only   # generate() alone, in this process

Builds the embedded base (or takes --base, whose rows are then chat turns), puts an untrained LoRA adapter on it (its answers are the base's),
writes a coder dataset whose prompts are rendered with the builtin coder template, and runs the
evaluation job (the same code path as evaluate_adapter) with `serving_stops` on and off,
alternating, `--repeats` times each. Reports each job's evaluation time (EvalConfig's
`elapsed_s`), the mean answer length, and the ratio of the fastest runs of each, in one run of
this script so machine load affects both sides alike.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

TASKS = [
    "Write a function add_{i}(x) that returns x plus {i}.",
    "Write a function is_even_{i}(n) that says whether n + {i} is even.",
    "Write a function repeat_{i}(s) that returns s repeated {i} times.",
    "Write a function total_{i}(xs) that returns the sum of xs plus {i}.",
]


def dataset(store, rows: int, chat: bool) -> str:
    from learning.data.datasets import content_hash, insert_dataset
    from learning.data.templates import BUILTIN, render

    folder = store.home / "datasets" / "ds-stops"
    folder.mkdir(parents=True)
    data = []
    for i in range(rows):
        prompt = render(BUILTIN["coder"], {"instruction": TASKS[i % len(TASKS)].format(i=i)})
        answer = f"def f_{i}(x):\n    return x + {i}\n"
        turns = [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]
        data.append({"messages": turns} if chat else {"prompt": prompt, "completion": answer})
    for name in ("train", "test"):
        (folder / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in data))
    meta = {"id": "ds-stops", "role": "coder", "template": {"source": "builtin", "text": BUILTIN["coder"]}}
    (folder / "metadata.json").write_text(json.dumps(meta))
    insert_dataset(
        store,
        dict(id="ds-stops", role="coder", kind="sft", format="messages" if chat else "prompt_completion")
        | dict(created=time.time())
        | dict(path=str(folder), train_rows=rows, test_rows=rows, content_hash=content_hash(folder)),
    )
    return "ds-stops"


def adapter(store, base: Path) -> str:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from learning.registry import adapters as registry

    out = store.home / "adapters" / "coder-stops"
    model = AutoModelForCausalLM.from_pretrained(base)
    get_peft_model(model, LoraConfig(r=8, target_modules="all-linear", task_type="CAUSAL_LM")).save_pretrained(out)
    registry.create_adapter(store, "coder-stops", "coder", str(base), str(out), status="trained", dataset_id="ds-stops")
    return "coder-stops"


def evaluate(store, adapter_id: str, serving_stops: bool, rows: int, max_new_tokens: int) -> dict:
    from learning.evaluate.evaluation import EvalConfig
    from learning.jobs.manage import start_job, wait_job

    cfg = EvalConfig(
        dataset_id="ds-stops",
        max_examples=rows,
        max_generate=rows,
        max_new_tokens=max_new_tokens,
        batch_size=8,
        serving_stops=serving_stops,
    )
    job = start_job(store, "evaluate", "learning.evaluate.evaluation:run_job", cfg.model_dump(), subject=adapter_id)
    status = wait_job(store, job, timeout=3600)
    if status.status != "succeeded":
        raise SystemExit(f"evaluation failed: {status.error}\n{status.log_tail}")
    m = json.loads((store.home / "adapters" / adapter_id / "eval" / "metrics.json").read_text())
    answers = [c for s in m["samples"] for c in (s["adapter"], s["base"])]
    sanity = json.loads((store.home / "adapters" / adapter_id / "eval" / "sanity_responses.json").read_text())
    said = [r[k] for r in sanity for k in ("adapter", "base")]
    return {
        "elapsed_s": m["elapsed_s"],
        "mean_answer_chars": sum(map(len, answers)) / max(len(answers), 1),
        "mean_sanity_chars": sum(map(len, said)) / max(len(said), 1),
        "stops": m["stops"],
    }


def generate_only(base: Path, rows: int, max_new_tokens: int, repeats: int) -> None:
    """generate() with and without the role template's stop strings, alternating in one process
    (no job start, no model load in the timing): what the stop check itself costs per call."""
    import transformers

    from learning.data.templates import BUILTIN, template_stops
    from learning.models.generate import generate

    tok = transformers.AutoTokenizer.from_pretrained(str(base))
    tok.padding_side = "left"
    model = transformers.AutoModelForCausalLM.from_pretrained(str(base)).eval()
    prompts = [
        tok.apply_chat_template(
            [{"role": "user", "content": TASKS[i % len(TASKS)].format(i=i)}], tokenize=False, add_generation_prompt=True
        )
        for i in range(rows)
    ]
    stops = template_stops(BUILTIN["coder"])
    times: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(repeats):
        for with_stops in (False, True):
            t0 = time.perf_counter()
            out = generate(model, tok, prompts, max_new_tokens, stop=stops if with_stops else (), batch_size=rows)
            times[with_stops].append(time.perf_counter() - t0)
            print(f"stop strings {with_stops!s:5}  {times[with_stops][-1]:7.2f}s  answers {[len(o) for o in out]}")
    best = {k: min(v) for k, v in times.items()}
    print(
        f"generate, {rows} prompts: without stop strings {best[False]:.2f}s, with {best[True]:.2f}s, "
        f"ratio with/without {best[True] / best[False]:.2f}x"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description="Evaluation time with and without serving's stops.")
    parser.add_argument("--size", default="tiny")
    parser.add_argument("--base", help="a Hugging Face model folder with a chat template (default: the embedded base)")
    parser.add_argument("--rows", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--generate-only", action="store_true", help="time generate() alone (needs --base)")
    args = parser.parse_args()
    if args.generate_only:
        if not args.base:
            raise SystemExit("--generate-only needs --base FOLDER")
        generate_only(Path(args.base), args.rows, args.max_new_tokens, args.repeats)
        return

    from learning.models.tinybase import ensure_base
    from learning.store import Store

    with tempfile.TemporaryDirectory() as tmp:
        store = Store(Path(tmp) / "home")
        t0 = time.perf_counter()
        base = Path(args.base).resolve() if args.base else Path(ensure_base(store, args.size).path)
        print(f"base {base.name} ready in {time.perf_counter() - t0:.1f}s")
        dataset(store, args.rows, chat=bool(args.base))
        adapter_id = adapter(store, base)
        runs: dict[bool, list[dict]] = {False: [], True: []}
        for _ in range(args.repeats):
            for serving in (False, True):
                r = evaluate(store, adapter_id, serving, args.rows, args.max_new_tokens)
                runs[serving].append(r)
                print(
                    f"serving_stops={serving!s:5}  evaluation {r['elapsed_s']:7.2f}s  "
                    f"mean answer {r['mean_answer_chars']:6.1f} chars, sanity answer {r['mean_sanity_chars']:6.1f} chars"
                )
        store.close()
    print(f"stops with serving_stops: {runs[True][0]['stops']}")
    best = {k: min(r["elapsed_s"] for r in v) for k, v in runs.items()}
    print(
        f"evaluation of {args.rows} rows (+3 sanity prompts), max_new_tokens {args.max_new_tokens}: "
        f"without stops {best[False]:.2f}s, with {best[True]:.2f}s, ratio without/with {best[False] / best[True]:.2f}x"
    )


if __name__ == "__main__":
    main()
