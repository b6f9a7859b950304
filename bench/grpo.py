"""The demo's figures per seed: held-out pass rate per family for base, SFT and SFT+GRPO; GRPO's
steps/s and answers scored/s; the demo's wall time from nothing and with the base built.

    python bench/grpo.py --seeds 0 1 2 [--again] [--out bench-grpo.json]

Each seed runs the whole demo in a fresh home (the base is built: "from nothing"); --again runs
it once more in the same home, where the base is reused. Times are printed with ratios to the SFT
stage of the same run (this machine's speed varies from run to run; the ratios vary less).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from learning.demo.demo import DemoConfig, run_demo  # noqa: E402


def one_run(home: Path, seed: int) -> dict:
    t0 = time.perf_counter()
    s = run_demo(home, config=DemoConfig(seed=seed))
    wall = time.perf_counter() - t0
    stages = {st.name: st for st in s.stages}
    rl = stages["rl"].detail if "rl" in stages else {}
    return {
        "seed": seed,
        "failed": [st.name for st in s.stages if st.status == "failed"],
        "wall_s": round(wall, 1),
        "seconds": s.seconds,
        "pass_rate": {"base": s.base_pass_rate, "sft": s.sft_pass_rate, "sft+grpo": s.adapter_pass_rate},
        "margin_over_base": s.margin,
        "by_family": s.by_family,
        "grpo": {
            k: rl.get(k) for k in ("steps_per_s", "answers_per_s", "answers_scored", "dropped_share", "scoring_s")
        },
        "grpo_reward_first_last": [
            rl["reward_by_step"][0]["reward"] if rl.get("reward_by_step") else None,
            rl["reward_by_step"][-1]["reward"] if rl.get("reward_by_step") else None,
        ],
        "gate_passed": s.gate_passed,
    }


def show(r: dict) -> None:
    sec = r["seconds"]
    sft = sec.get("train") or float("nan")
    print(f"\nseed {r['seed']}: wall {r['wall_s']} s" + (f"  FAILED {r['failed']}" if r["failed"] else ""))
    print("  held-out pass rate  " + "  ".join(f"{k} {v}" for k, v in r["pass_rate"].items()))
    print(f"  margin over base {r['margin_over_base']}")
    for fam, v in r["by_family"].items():
        print(f"    {fam:<9} base {v.get('base')}  sft {v.get('sft')}  sft+grpo {v.get('adapter')}  (n={int(v['n'])})")
    g = r["grpo"]
    print(
        f"  GRPO: {g['steps_per_s']} steps/s, {g['answers_per_s']} answers scored/s, {g['answers_scored']} answers, "
        f"dropped share {g['dropped_share']}, reward first/last step {r['grpo_reward_first_last']}"
    )
    print(
        "  stage seconds: "
        + ", ".join(f"{k} {v}" for k, v in sec.items())
        + f"  | rl / SFT training time {sec.get('rl', 0) / sft:.2f}, base build / SFT {sec.get('base', 0) / sft:.2f}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--again", action="store_true", help="Run each seed a second time with its base built.")
    ap.add_argument("--out", default=None, help="Write every figure as JSON here.")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    import transformers
    import trl

    print(
        f"torch {torch.__version__}, transformers {transformers.__version__}, trl {trl.__version__}, {os.cpu_count()} CPUs"
    )
    results = []
    for seed in args.seeds:
        home = Path(tempfile.mkdtemp(prefix=f"learnloop-bench-grpo-{seed}-"))
        r = one_run(home, seed)
        show(r)
        results.append(r)
        if args.again:
            again = one_run(home, seed)
            print(f"  again, base built: wall {again['wall_s']} s (from nothing {r['wall_s']} s)")
            results.append({**again, "base_built": True})
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
