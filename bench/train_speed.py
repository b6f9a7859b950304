"""Training speed: train_adapter (the job, same code path) versus a plain SFTTrainer with default settings.

    python bench/train_speed.py [--base embedded:small] [--rows 256] [--steps 30]

Both runs train the same LoRA (r=16, all projections) on the same base model and rows, each
in its own process, and report tokens/s (non-padding tokens / train runtime) and peak memory
(RSS of the training process). The ratio is taken in one run of this script, so machine
load affects both sides alike.

On a machine with CUDA, a second part trains a randomly initialised model with the shape of
Qwen2-0.5B (from its config; no download) with and without the speed features (packing,
padding-free, Liger kernels when installed) and reports tokens/s, peak GPU memory and model
FLOPs utilisation. Without CUDA it says it was skipped.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

BASELINE = r"""
import json, resource, sys
from datasets import Dataset
from peft import LoraConfig
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import SFTConfig, SFTTrainer
base, data, steps, batch, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
rows = [json.loads(l) for l in open(data)]
tok = AutoTokenizer.from_pretrained(base)
model = AutoModelForCausalLM.from_pretrained(base)
lora = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, task_type="CAUSAL_LM",
                  target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
# Defaults everywhere except what a CPU run and the measurement need.
args = SFTConfig(output_dir=out, max_steps=steps, per_device_train_batch_size=batch, use_cpu=True, report_to=[],
                 include_num_input_tokens_seen="non_padding", save_strategy="no", disable_tqdm=True)
trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tok, peft_config=lora)
result = trainer.train()
print(json.dumps({"tokens": int(trainer.state.num_input_tokens_seen), "runtime_s": result.metrics["train_runtime"],
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def make_rows(n: int) -> list[dict]:
    import random

    from learning.models.tinycorpus import function

    rng = random.Random(0)
    rows = []
    for _ in range(n):
        name, code, params, desc = function(rng)
        rows.append({"prompt": f"Write a function {name}({', '.join(params)}) that will {desc}.\n", "completion": code})
    return rows


def run_learnloop(home: Path, base: str, steps: int, batch: int) -> dict:
    from learning.jobs import manage as jobs
    from learning.store import Store
    from learning.train import launch as training

    store = Store(home)
    started = training.train_adapter(
        store,
        "bench",
        "bench-ds",
        base=base,
        max_steps=steps,
        overrides={"batch_size": batch, "save_steps": 10_000, "learning_rate": 2e-4},
    )
    assert started.job_id is not None  # not a dry run: a job was started
    status = jobs.follow_job(store, started.job_id)
    if status.status != "succeeded" or status.result is None:
        raise SystemExit(f"train_adapter job {status.status}: {status.error}")
    m = status.result["metrics"]
    return {"tokens": m["tokens_seen"], "runtime_s": m["train_runtime_s"], "peak_rss_mb": m["peak_rss_mb"]}


def write_dataset(home: Path, rows: list[dict]) -> Path:
    import hashlib

    from learning.store import Store

    folder = home / "datasets" / "bench-ds"
    folder.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps(r) + "\n" for r in rows)
    (folder / "train.jsonl").write_text(text)
    (folder / "test.jsonl").write_text("")
    store = Store(home)
    with store.write() as conn:
        conn.execute(
            "INSERT OR REPLACE INTO datasets (id, role, kind, format, created, path, train_rows, test_rows, "
            "content_hash, metadata) VALUES ('bench-ds', 'bench', 'sft', 'prompt_completion', ?, "
            "'datasets/bench-ds', ?, 0, ?, '{}')",
            (time.time(), len(rows), hashlib.sha256(text.encode()).hexdigest()),
        )
    return folder / "train.jsonl"


def cpu_part(args) -> None:
    from learning.home import resolve_home
    from learning.models.tinybase import ensure_base
    from learning.train.checks import EMBEDDED_PREFIX

    home = Path(tempfile.mkdtemp(prefix="learnloop-bench-"))
    base = args.base
    if base.startswith(EMBEDDED_PREFIX):  # built once in the default home, then reused
        base = ensure_base(resolve_home(None), base[len(EMBEDDED_PREFIX) :]).path
    data = write_dataset(home, make_rows(args.rows))
    ours = run_learnloop(home, base, args.steps, args.batch)
    out = subprocess.run(
        [sys.executable, "-c", BASELINE, base, str(data), str(args.steps), str(args.batch), str(home / "baseline")],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    if out.returncode != 0:
        raise SystemExit(out.stderr[-3000:])
    plain = json.loads(out.stdout.strip().splitlines()[-1])
    tps = {k: v["tokens"] / v["runtime_s"] for k, v in (("learnloop", ours), ("plain", plain))}
    print(
        f"base {args.base}, {args.rows} rows, {args.steps} steps, batch {args.batch}, LoRA r=16 all projections (CPU)"
    )
    for name, r in (("train_adapter", ours), ("plain SFTTrainer", plain)):
        key = "learnloop" if name == "train_adapter" else "plain"
        print(
            f"  {name:17s} {tps[key]:9.0f} tokens/s  ({r['tokens']} tokens in {r['runtime_s']:.1f} s)  "
            f"peak RSS {r['peak_rss_mb']:.0f} MiB"
        )
    print(
        f"  ratio train_adapter / plain SFTTrainer: {tps['learnloop'] / tps['plain']:.2f}x tokens/s, "
        f"{ours['peak_rss_mb'] / plain['peak_rss_mb']:.2f}x peak memory"
    )


def gpu_part(steps: int = 20) -> None:
    import torch

    if not torch.cuda.is_available():
        print("GPU part skipped: no CUDA device (tokens/s, peak GPU memory and MFU of a 0.5B Qwen2-shaped model).")
        return
    for features in ({}, {"packing": True}, {"padding_free": True}, {"use_liger_kernel": True}):
        try:
            r = _gpu_run(features, steps)
        except Exception as exc:  # noqa: BLE001 - a missing optional kernel should not end the benchmark
            print(f"  {features or 'defaults'}: skipped ({type(exc).__name__}: {exc})")
            continue
        print(
            f"  {str(features or 'defaults'):28s} {r['tps']:9.0f} tokens/s  peak {r['peak_gb']:.1f} GiB  MFU {r['mfu']:.1%}"
        )


def _gpu_run(features: dict, steps: int) -> dict:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM
    from trl import SFTConfig, SFTTrainer

    from learning.models.tinybase import ensure_base

    tok = AutoTokenizer.from_pretrained(ensure_base(Path(tempfile.mkdtemp()), "tiny").path)
    config = Qwen2Config(
        vocab_size=151936,
        hidden_size=896,
        intermediate_size=4864,
        num_hidden_layers=24,
        num_attention_heads=14,
        num_key_value_heads=2,
        max_position_embeddings=32768,
        tie_word_embeddings=True,
    )
    # transformers wraps Module.to with functools.wraps, which hides its signature from pyright.
    model = Qwen2ForCausalLM(config).to(torch.bfloat16)  # pyright: ignore[reportArgumentType]
    n_params = sum(p.numel() for p in model.parameters())
    rows = [dict(r, completion=r["completion"] * 8) for r in make_rows(2048)]
    torch.cuda.reset_peak_memory_stats()
    args = SFTConfig(
        output_dir=tempfile.mkdtemp(),
        max_steps=steps,
        per_device_train_batch_size=16,
        bf16=True,
        max_length=1024,
        report_to=[],
        save_strategy="no",
        disable_tqdm=True,
        gradient_checkpointing=False,
        include_num_input_tokens_seen="non_padding",
        learning_rate=2e-4,
        **features,
    )
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=tok,
        peft_config=LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM"),
    )
    result = trainer.train()
    tps = trainer.state.num_input_tokens_seen / result.metrics["train_runtime"]
    peak_flops = 989e12 if "H100" in torch.cuda.get_device_name() else 312e12  # bf16 dense (H100 SXM / A100)
    return {"tps": tps, "peak_gb": torch.cuda.max_memory_allocated() / 2**30, "mfu": 6 * n_params * tps / peak_flops}


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").partition("\n")[0])
    parser.add_argument("--base", default="embedded:small")
    parser.add_argument("--rows", type=int, default=256)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args()
    cpu_part(args)
    gpu_part()


if __name__ == "__main__":
    main()
