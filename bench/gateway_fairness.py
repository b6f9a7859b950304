"""How long short requests wait on the in-process backend while a long one is being served.

One long request (a prompt of --long-tokens tokens, --long-max new tokens) is sent; from then on,
every --gap-ms, a short one (a few-token prompt, --short-max new tokens) is sent beside it, each
on its own (as separate clients would). The short requests' latency p50 and p90 are printed for:

- idle: the short requests alone, one after another (the floor);
- interleaved: the scheduler as it is (every active request takes a step in turn, prompts
  prefilled 256 tokens a step);
- serial: the behaviour before it (`InProcess(..., interleave=False)`: one request at a time, each
  to its end, its prompt in one step), the baseline, measured in the same run;

as ratios to idle and to each other, with the long request's own time in each mode (what sharing
the model costs it). Greedy decoding; the model answers straight through the backend (no HTTP:
the gateway adds the same in both modes).

The model is a random 2-layer Llama of --hidden width built here (tests/support/tiny_models.py, with its
context widened to 4,096 positions), or --base FOLDER (any causal LM folder; its context must hold
the long prompt and its answer). Random weights never end on eos, so every answer runs to its
max_tokens.

Run: python bench/gateway_fairness.py [--hidden 256] [--long-tokens 1500] [--long-max 1000]
     [--shorts 10] [--short-max 8] [--gap-ms 50] [--base FOLDER] [--device cpu]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.gateway import versions  # noqa: E402
from learning.gateway.inprocess import InProcess  # noqa: E402
from learning.gateway.protocol import Call, Generation  # noqa: E402
from tests.support.tiny_models import build_base  # noqa: E402

FILLER = "return 5 "
CONTEXT = 4096


def random_base(folder: Path, hidden: int) -> Path:
    build_base(folder, hidden=hidden)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "max_position_embeddings": CONTEXT}))
    return folder


def completion(prompt: str, max_tokens: int) -> Call:
    return Call(kind="completion", model="bench", prompt=prompt, max_tokens=max_tokens)


def long_prompt(tokenizer, tokens: int) -> str:
    text = FILLER * max(1, tokens // 3)
    while len(tokenizer(text)["input_ids"]) < tokens:
        text += FILLER
    while len(tokenizer(text)["input_ids"]) > tokens:
        text = text[: -len(FILLER)]
    return text


async def timed(backend: InProcess, call: Call) -> tuple[float, Generation, float]:
    """(seconds, the answer, when it ended)."""
    started = time.perf_counter()
    gen = await backend.complete(call, None)
    ended = time.perf_counter()
    return ended - started, gen, ended


async def idle(backend: InProcess, short: Call, n: int) -> list[float]:
    return [(await timed(backend, short))[0] for _ in range(n)]


async def beside_long(backend: InProcess, long: Call, short: Call, n: int, gap: float):
    """(the short requests' latencies, the long one's seconds, how many short ones finished
    before the long one)."""
    long_task = asyncio.create_task(timed(backend, long))
    shorts = []
    for _ in range(n):
        await asyncio.sleep(gap)
        shorts.append(asyncio.create_task(timed(backend, short)))
    results = [await t for t in shorts]
    long_s, _gen, long_end = await long_task
    return [lat for lat, _, _ in results], long_s, sum(1 for _, _, end in results if end < long_end)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", help="a model folder (default: a random Llama built here)")
    ap.add_argument("--hidden", type=int, default=256, help="the random Llama's width")
    ap.add_argument("--device", default=None, help="cpu, cuda (default: cuda when there is one)")
    ap.add_argument("--long-tokens", type=int, default=1500)
    ap.add_argument("--long-max", type=int, default=1000)
    ap.add_argument("--shorts", type=int, default=10)
    ap.add_argument("--short-max", type=int, default=8)
    ap.add_argument("--gap-ms", type=float, default=50.0)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-fairness-") as tmp:
        base = args.base or str(random_base(Path(tmp) / "base", args.hidden))
        modes = {"interleaved": True, "serial": False}
        backends = {mode: InProcess(base, device=args.device, interleave=on) for mode, on in modes.items()}
        short = completion("def f():\n", args.short_max)
        results = {}
        for backend in backends.values():
            asyncio.run(backend.complete(completion("x", 2), None))  # loads the model, warms up
        long = completion(long_prompt(backends["serial"].tokenizer, args.long_tokens), args.long_max)
        floor = asyncio.run(idle(backends["interleaved"], short, args.shorts))
        alone_s, long_gen, _ = asyncio.run(timed(backends["interleaved"], long))
        for mode, backend in backends.items():
            results[mode] = asyncio.run(beside_long(backend, long, short, args.shorts, args.gap_ms / 1000))
        for backend in backends.values():
            asyncio.run(backend.aclose())

    print(
        f"model: {base if args.base else f'random Llama, 2 layers, width {args.hidden}'}; {versions('torch', 'transformers', 'peft')}"
    )
    print(f"device: {args.device or 'default'}; {os.cpu_count()} CPU cores; load average {os.getloadavg()[0]:.2f}")
    print(
        f"long request: {long_gen.prompt_tokens} prompt tokens, {long_gen.completion_tokens} new tokens, "
        f"{alone_s:.2f} s alone; {args.shorts} short requests ({args.short_max} new tokens) every {args.gap_ms:g} ms"
    )
    p50_idle = statistics.median(floor)
    print(f"{'':12} {'short p50':>10} {'short p90':>10} {'x idle':>7} {'done first':>10} {'long':>8}")
    print(f"{'idle':12} {p50_idle * 1000:8.1f}ms {pct(floor, 0.9) * 1000:8.1f}ms {1.0:6.2f}x")
    for mode, (lat, long_s, before) in results.items():
        p50 = statistics.median(lat)
        print(
            f"{mode:12} {p50 * 1000:8.1f}ms {pct(lat, 0.9) * 1000:8.1f}ms {p50 / p50_idle:6.2f}x "
            f"{before:>5}/{len(lat):<4} {long_s:7.2f}s"
        )
    ratio = statistics.median(results["serial"][0]) / statistics.median(results["interleaved"][0])
    cost = results["interleaved"][1] / results["serial"][1]
    print(f"short p50, serial / interleaved: {ratio:.1f}x; the long request, interleaved / serial: {cost:.2f}x")


if __name__ == "__main__":
    main()
