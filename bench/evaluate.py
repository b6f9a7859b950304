"""Evaluation throughput and lifecycle latency.

1. Tokens/s of the batched teacher-forced pass (learning.evaluate.measure.teacher_forced, left padding,
   only the completion logits computed) versus the same pass one example at a time, on the
   embedded tiny base with a LoRA adapter, in one process; and the loss both give (equal).
2. promote and rollback latency (p50 / p99) on a real SQLite store, each call a full
   transaction with its event rows.

Run: python bench/evaluate.py [--examples 96] [--batch 16] [--moves 200] [--size tiny|small]
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def rows(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        name = f"f{i}"
        body = "\n".join(f"    x = x + {rng.randint(1, 99)}" for _ in range(rng.randint(1, 12)))
        out.append(
            {
                "prompt": f"Write a function {name}(x) that adds some numbers to x.\n",
                "completion": f"def {name}(x):\n{body}\n    return x\n",
            }
        )
    return out


def throughput(root: Path, size: str, n: int, batch: int) -> dict:
    import torch
    from peft import LoraConfig, get_peft_model

    from learning.evaluate.measure import teacher_forced
    from learning.models.generate import load_model
    from learning.models.tinybase import build_base

    t0 = time.perf_counter()
    base = build_base(root / "base", size)
    model, tok = load_model(base)
    model = get_peft_model(model, LoraConfig(r=8, target_modules="all-linear", task_type="CAUSAL_LM")).eval()
    print(f"base built and loaded in {time.perf_counter() - t0:.1f}s; threads={torch.get_num_threads()}")
    examples = rows(n)
    teacher_forced(model, tok, examples[:8], batch)  # warm-up
    batched = teacher_forced(model, tok, examples, batch)
    single = teacher_forced(model, tok, examples, 1)
    return {
        "examples": n,
        "batch": batch,
        "batched_tok_s": batched["tokens_per_s"],
        "single_tok_s": single["tokens_per_s"],
        "ratio": batched["tokens_per_s"] / single["tokens_per_s"],
        "loss_batched": batched["eval_loss"],
        "loss_single": single["eval_loss"],
    }


def latency(root: Path, moves: int) -> dict:
    from learning.registry import adapters as registry
    from learning.routing import lifecycle
    from learning.store import Store

    store = Store(root / "home")
    for i in ("a", "b"):
        registry.create_adapter(store, i, "coder", "base", str(root / i), status="candidate")
    lifecycle.promote(store, "a", "production", confirm=True)
    promote_ms, rollback_ms = [], []
    for i in range(moves):
        target = "b" if i % 2 == 0 else "a"
        t = time.perf_counter()
        lifecycle.promote(store, target, "production", force=True, reason="bench", confirm=True)
        promote_ms.append((time.perf_counter() - t) * 1000)
    for _ in range(moves):
        t = time.perf_counter()
        lifecycle.rollback(store, "coder", reason="bench", confirm=True)
        rollback_ms.append((time.perf_counter() - t) * 1000)

    def pct(xs, q):
        return statistics.quantiles(xs, n=100)[q - 1]

    return {
        "moves": moves,
        "promote_p50": pct(promote_ms, 50),
        "promote_p99": pct(promote_ms, 99),
        "rollback_p50": pct(rollback_ms, 50),
        "rollback_p99": pct(rollback_ms, 99),
        "events": len(registry.adapter_history(store)),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--examples", type=int, default=96)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--moves", type=int, default=200)
    ap.add_argument("--size", default="tiny")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        t = throughput(root, args.size, args.examples, args.batch)
        print(f"teacher-forced pass, {t['examples']} examples, {args.size} base + LoRA:")
        print(f"  batched (batch {t['batch']}): {t['batched_tok_s']:.0f} tokens/s")
        print(f"  one at a time:        {t['single_tok_s']:.0f} tokens/s")
        print(f"  ratio batched / one-at-a-time: {t['ratio']:.1f}x")
        print(f"  eval loss batched {t['loss_batched']:.6f} vs one at a time {t['loss_single']:.6f}")
        lat = latency(root, args.moves)
        print(f"lifecycle latency over {lat['moves']} calls each ({lat['events']} events recorded):")
        print(f"  promote  p50 {lat['promote_p50']:.2f} ms  p99 {lat['promote_p99']:.2f} ms")
        print(f"  rollback p50 {lat['rollback_p50']:.2f} ms  p99 {lat['rollback_p99']:.2f} ms")


if __name__ == "__main__":
    main()
