"""The reward-hacking monitor's speed: answers per second of `suspicious` (learning/sandbox/monitor.py)
on a realistic mix of answers, against simply compile()-ing the same answers in the same run.

    python bench/monitor_speed.py [--answers 2000] [--repeat 5] [--hacking 0.1]

The mix: honest answers (the coding environment's reference and broken answers for coder and
fixer tasks, functions from the embedded base's corpus, longer functions of pure standard-library
modules; some fenced with prose around them as a model writes them, some cut short as
max_completion_length cuts them) and a share of hacking answers (tests/support/hacks.py). It also counts
the honest answers flagged (false positives) and the hacking answers missed. Each answer goes through what GRPO does before it is scored: the code
of its first fenced block, else the whole answer (learning/sandbox/code.py). Best of --repeat.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import inspect
import json
import platform
import random
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from learning.evaluate import codeenv  # noqa: E402
from learning.models import tinycorpus  # noqa: E402
from learning.sandbox.code import extract_code  # noqa: E402
from learning.sandbox.monitor import suspicious  # noqa: E402
from tests.support import hacks  # noqa: E402

STDLIB = (
    "bisect",
    "colorsys",
    "heapq",
    "statistics",
    "textwrap",
    "fractions",
    "difflib",
)  # pure Python, no os/sys tricks


def stdlib_functions() -> list[str]:
    """Top-level functions of a few pure standard-library modules: longer honest answers."""
    out = []
    for name in STDLIB:
        source = inspect.getsource(importlib.import_module(name))
        for node in ast.parse(source).body:
            if isinstance(node, ast.FunctionDef) and not node.name.startswith("_"):
                segment = ast.get_source_segment(source, node)
                if segment and len(segment) < 3000:
                    out.append(segment + "\n")
    return out


def honest_answers(n: int, rng: random.Random) -> list[str]:
    """n honest answers, a third from each source."""
    env = []
    for role in ("coder", "fixer"):
        for task in codeenv.make_tasks(200, role=role):
            env += [codeenv.solve(task), *codeenv.broken_answers(task)]
    pools = [env, list(tinycorpus.corpus(0, 600)), stdlib_functions()]
    out = []
    for i in range(n):
        code = rng.choice(pools[i % 3])
        shape = rng.random()
        if shape < 0.3:  # fenced, with the prose a model writes around it
            code = f"Here is the function:\n```python\n{code}```\nIt returns the result in one pass."
        elif shape < 0.4:  # cut short by max_completion_length: does not parse, text scan
            code = code[: max(8, int(len(code) * rng.uniform(0.5, 0.9)))]
        out.append(code)
    return out


def mix(n: int, hacking: float, seed: int = 0) -> list[tuple[str, bool]]:
    """(answer, whether it is a hack), shuffled."""
    rng = random.Random(seed)
    bad = [*hacks.HACKS.values(), *hacks.NEW_HACKS.values(), hacks.SEEKER]
    n_bad = int(n * hacking)
    answers = [(a, False) for a in honest_answers(n - n_bad, rng)] + [(rng.choice(bad), True) for _ in range(n_bad)]
    rng.shuffle(answers)
    return answers


def _compile(code: str) -> None:
    try:
        compile(code, "<answer>", "exec")
    except (SyntaxError, ValueError):
        pass


def best_rate(fn, codes: list[str], repeat: int) -> float:
    """Answers per second, the best of `repeat` passes."""
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        for code in codes:
            fn(code)
        best = min(best, time.perf_counter() - started)
    return len(codes) / best


def main() -> None:
    parser = argparse.ArgumentParser(description="The reward-hacking monitor's speed against compile().")
    parser.add_argument("--answers", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--hacking", type=float, default=0.1, help="share of hacking answers in the mix")
    args = parser.parse_args()

    answers = mix(args.answers, args.hacking)
    codes = [extract_code(a)[1] for a, _ in answers]  # as GRPO's reward hands them to the monitor
    flags = [bool(suspicious(c)) for c in codes]
    flagged = sum(flags)
    false_positives = [c for c, f, (_, bad) in zip(codes, flags, answers) if f and not bad]
    missed = sum(1 for f, (_, bad) in zip(flags, answers) if bad and not f)
    monitor = best_rate(suspicious, codes, args.repeat)
    compiled = best_rate(_compile, codes, args.repeat)
    lengths = [len(c) for c in codes]
    result = {
        "answers": len(codes),
        "hacking_share_planted": args.hacking,
        "flagged": flagged,
        "honest_flagged": len(false_positives),
        "hacks_missed": missed,  # the corpus's reply-size/depth hacks touch nothing a static look sees
        "median_chars": statistics.median(lengths),
        "max_chars": max(lengths),
        "monitor_answers_per_s": round(monitor),
        "compile_answers_per_s": round(compiled),
        "monitor_us_per_answer": round(1e6 / monitor, 1),
        "compile_us_per_answer": round(1e6 / compiled, 1),
        "monitor_vs_compile": round(compiled / monitor, 2),  # how many times compile()'s time
        "python": platform.python_version(),
    }
    print(
        f"{len(codes)} answers (median {result['median_chars']:.0f} characters, {flagged} flagged): "
        f"suspicious {result['monitor_answers_per_s']:,} answers/s ({result['monitor_us_per_answer']} us each), "
        f"compile() {result['compile_answers_per_s']:,} answers/s ({result['compile_us_per_answer']} us each): "
        f"the monitor costs {result['monitor_vs_compile']}x compile()"
    )
    print(
        f"honest answers flagged: {len(false_positives)}; hacking answers missed: {missed} of {int(len(codes) * args.hacking)}"
    )
    for code in false_positives[:3]:
        print("flagged honest answer:", suspicious(code), repr(code[:200]))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
