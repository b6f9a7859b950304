"""How well the embedded base copies from a request into code, prompted in its own corpus's form.

    python bench/base_copy.py [--base FOLDER] [--seed N] [--tasks 100]

Builds the `small` base with the seed in a fresh folder (or uses --base), then answers the demo's
held-out tasks phrased as the corpus phrases a request ("Write a Python function `f(p)` that will
return p plus 23.", then a blank line) and counts, out of the tasks: answers that pass the tests,
`def` lines with the asked name and parameter, and, for the tasks with a constant, answers that
write it. Greedy decoding, 30 new tokens.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from learning.evaluate import codeenv  # noqa: E402
from learning.models.generate import generate, load_model  # noqa: E402
from learning.models.tinybase import build_base  # noqa: E402


def corpus_form(task: codeenv.Task) -> str:
    what = task.instruction.split(" that returns ", 1)[1].rstrip(".")
    return f"Write a Python function `{task.func}({task.param})` that will return {what}.\n\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--base", help="An embedded base folder to probe instead of building one.")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tasks", type=int, default=100)
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    base = args.base
    if base is None:
        started = time.perf_counter()
        base = str(build_base(Path(tempfile.mkdtemp(prefix="learnloop-base-copy-")) / "small", "small", args.seed))
        print(f"built the small base (seed {args.seed}) in {time.perf_counter() - started:.1f} s")
    model, tok = load_model(base)
    tasks = codeenv.make_tasks(args.tasks, "heldout", "coder", seed=1)
    answers = generate(model, tok, [corpus_form(t) for t in tasks], 30, stop=("\n\n",))
    scores = codeenv.score_answers(tasks, answers)
    passed = sum(s.reward == 1.0 for s in scores)
    named = sum(a.startswith(f"def {t.func}({t.param}):") for t, a in zip(tasks, answers))
    with_k = [(t, a) for t, a in zip(tasks, answers) if t.k is not None]
    copied = sum(f" {t.k}\n" in a + "\n" for t, a in with_k)
    print(
        f"{base}: passed {passed}/{len(tasks)}, name and parameter {named}/{len(tasks)}, constant {copied}/{len(with_k)}"
    )


if __name__ == "__main__":
    main()
