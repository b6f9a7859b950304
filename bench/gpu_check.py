"""GPU check: LoRA SFT speed of learnloop's recipe against a plain SFTTrainer, in one run.

    python bench/gpu_check.py [--out DIR] [--shapes 0.5b,1.5b] [--quant bf16,4bit] [--train-s 20]
    python bench/gpu_check.py --smoke        # CPU, a tiny shape, 3 steps, the runs in this process

Beyond torch and transformers it needs trl, peft, datasets, bitsandbytes (QLoRA), liger-kernel
(optional) and pydantic: bench/gpu_wheels.sh downloads them as wheels for a machine without an
index.

For each model shape (random weights in the shape of Qwen2.5-0.5B and Qwen2.5-1.5B, built from
Qwen2Config: no download) and each precision (bf16 LoRA, QLoRA nf4 4-bit), two trainings on the
same synthetic token rows of mixed lengths, each in its own process:

  (a) plain:     trl's SFTTrainer with SFTConfig's defaults (batch 8 rows padded to the longest,
                 gradient checkpointing on, transformers' default attention), except the learning
                 rate, set to the recipe's so the loss curves compare speed features, not two rates;
  (b) learnloop: the recipe's own trainer arguments (learning.train.recipe.trainer_args) and load
                 arguments (learning.train.speed) for the `default` preset with packing=True
                 (TRL's BFD packing, which is padding-free), Liger kernels when liger-kernel is
                 installed, flash attention when flash-attn is, else sdpa.

Both use the same LoRA (the preset's r=16, alpha 32, all seven projections). Each run trains a
few warm-up steps, then is timed for --train-s seconds (or --max-steps). Reported per run:
tokens/s (non-padding tokens), peak GPU memory (torch.cuda.max_memory_allocated over the whole
process), model FLOPs utilisation MFU = 6 x (frozen + LoRA params) x tokens/s / peak dense bf16
FLOP/s of the GPU (H100 SXM / H200: 989 TFLOP/s; --peak-tflops overrides), and the loss curve
(loss against tokens seen). Printed: each figure as the ratio (b)/(a), and the two loss curves
at matched token counts. Written: DIR/gpu_check.json (every figure and curve) and
DIR/gpu_check.log (the output of every run).

Budget on one H200 (see bench/README.md): about 60 s per run (15 s start and imports, 5-15 s
loading, 5 s data preparation, warm-up, 20 s timed), 8 runs, under 10 minutes in all; runs that
would start past --budget-s are skipped and said so.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from transformers import PrinterCallback, TrainerCallback  # noqa: E402 - after the environment it reads

# Qwen2.5-0.5B and Qwen2.5-1.5B (their config.json), and a tiny shape for --smoke.
SHAPES = {
    "0.5b": dict(hidden_size=896, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                 intermediate_size=4864, vocab_size=151936),
    "1.5b": dict(hidden_size=1536, num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2,
                 intermediate_size=8960, vocab_size=151936),
    "tiny": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                 intermediate_size=128, vocab_size=2048),
}  # fmt: skip
# Dense bf16 tensor FLOP/s (vendor datasheets, without sparsity), matched against the device name in order.
PEAK_BF16 = [("H100 PCIe", 756e12), ("H200", 989e12), ("H100", 989e12), ("H800", 989e12), ("A100", 312e12),
             ("L40S", 362e12), ("L4", 121e12), ("A10", 125e12)]  # fmt: skip
PAD, EOS, UNK = 0, 1, 2  # the synthetic rows never contain these ids


# ---- one run, in its own process --------------------------------------------------------


def child(spec: dict) -> dict:
    """Train one configuration and return its figures (runs in a fresh process: `--one SPEC`)."""
    import torch
    import transformers
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from learning.models.architectures import weight_shapes
    from learning.train.config import build_config
    from learning.train.recipe import lora_config, trainer_args
    from learning.train.speed import liger_enabled, model_kwargs, needs_checkpointing

    started = time.perf_counter()
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    overrides = {"quantize": "4bit" if spec["quant"] == "4bit" else "none", "packing": True}
    overrides.update(max_steps=spec["max_steps"], save_steps=10**6, max_length=spec["max_length"])
    cfg = build_config("default", overrides)
    load = model_kwargs(cfg, cuda)
    if spec["side"] == "plain":
        load.pop("attn_implementation", None)  # transformers' default
    model = transformers.AutoModelForCausalLM.from_pretrained(spec["model"], **load)
    tokenizer = transformers.AutoTokenizer.from_pretrained(spec["model"])
    rows = json.loads(Path(spec["data"]).read_text())
    out = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    if spec["side"] == "learnloop":
        common = trainer_args(cfg, out, cuda, load["dtype"] == torch.bfloat16, needs_checkpointing(model))
        args = SFTConfig(**common, packing=cfg.packing, use_liger_kernel=liger_enabled(cfg, cuda))
    else:
        cpu = {} if cuda else {"use_cpu": True, "bf16": False}  # SFTConfig's bf16 default is for GPUs
        args = SFTConfig(output_dir=str(out), max_steps=spec["max_steps"], learning_rate=cfg.learning_rate,
                         max_length=cfg.max_length, **cpu, **MEASURE)  # fmt: skip
    args.logging_steps, args.include_num_input_tokens_seen = 1, "non_padding"  # measurement, both sides
    meter = Meter(spec["warmup"], spec["train_s"], cuda)
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_dict({"input_ids": rows}),
        processing_class=tokenizer,
        peft_config=lora_config(cfg),
        callbacks=[meter],
    )  # fmt: skip
    trainer.remove_callback(PrinterCallback)  # the figures are printed once, by the parent
    setup_s = time.perf_counter() - started
    trainer.train()
    shutil.rmtree(out, ignore_errors=True)
    base = sum(_numel(s) for s in (weight_shapes(spec["model"]) or {}).values())
    assert trainer.model is not None  # the PEFT model SFTTrainer built
    lora = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    return {
        **meter.figures(),
        "setup_s": round(setup_s, 1),
        "total_s": round(time.perf_counter() - started, 1),
        "peak_gpu_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None,
        "peak_rss_mib": round(_peak_rss_mib(), 0),
        "params": base,
        "lora_params": lora,
        "dtype": str(load["dtype"]).removeprefix("torch."),
        "attention": model.config._attn_implementation,
        "liger": bool(args.use_liger_kernel),
        "gradient_checkpointing": bool(args.gradient_checkpointing),
        "packing": bool(args.packing),
        "batch_size": args.per_device_train_batch_size,
        "device": torch.cuda.get_device_name() if cuda else "cpu",
    }


MEASURE: dict[str, Any] = dict(report_to=[], save_strategy="no", disable_tqdm=True)


class Meter(TrainerCallback):
    """Times the steps after the warm-up (after a CUDA sync) and keeps the loss curve; stops
    training once the timed part has run `train_s` seconds."""

    def __init__(self, warmup: int, train_s: float, cuda: bool):
        self.warmup, self.train_s, self.cuda = warmup, train_s, cuda
        self.t0 = self.t1 = 0.0
        self.tok0 = self.tok1 = self.steps = 0
        self.curve: list[list[float]] = []

    def on_step_end(self, args, state, control, **kwargs):
        import torch

        if self.cuda:
            torch.cuda.synchronize()
        now, tokens = time.perf_counter(), int(state.num_input_tokens_seen)
        if state.global_step == self.warmup:
            self.t0, self.tok0 = now, tokens
        elif state.global_step > self.warmup:
            self.t1, self.tok1, self.steps = now, tokens, state.global_step - self.warmup
            if now - self.t0 >= self.train_s:
                control.should_training_stop = True
        return control

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.curve.append([state.global_step, int(state.num_input_tokens_seen), round(float(logs["loss"]), 4)])
        return control

    def figures(self) -> dict:
        seconds = self.t1 - self.t0
        tokens = self.tok1 - self.tok0
        return {
            "timed_steps": self.steps,
            "timed_tokens": tokens,
            "timed_s": round(seconds, 2),
            "tokens_per_s": round(tokens / seconds, 1) if seconds > 0 else None,
            "loss_curve": self.curve,
        }


def _numel(shape: list[int]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _peak_rss_mib() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ---- the whole check ---------------------------------------------------------------------


def make_rows(n: int, short: int, long: int, vocab: int, seed: int = 0) -> list[list[int]]:
    """Synthetic rows of mixed lengths (half short, a third middling, the rest long, up to
    `long` tokens), tokens drawn from a Zipf-like law over a slice of the vocabulary so that
    the loss has something to learn and padding has something to waste."""
    import numpy as np

    rng = np.random.default_rng(seed)
    span = min(vocab - 3, 8192)
    probs = 1.0 / np.arange(1, span + 1) ** 1.1
    probs /= probs.sum()
    mid = (short + long) // 2
    bands = rng.choice(3, size=n, p=[0.5, 0.35, 0.15])
    lows, highs = np.array([short // 4, short, mid]), np.array([short, mid, long])
    lengths = rng.integers(lows[bands], highs[bands] + 1)
    return [(rng.choice(span, size=int(k), p=probs) + 3).tolist() for k in lengths]


def build_model(folder: Path, shape: dict) -> None:
    """A random-weight Qwen2 model of the shape, saved in bfloat16 with a tokenizer that knows
    only the pad/eos/unk tokens (the rows are token ids already)."""
    import torch
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(**shape, max_position_embeddings=32768,
                         rope_parameters={"rope_type": "default", "rope_theta": 1e6}, tie_word_embeddings=True,
                         pad_token_id=PAD, eos_token_id=EOS, bos_token_id=None)  # fmt: skip
    torch.manual_seed(0)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = Qwen2ForCausalLM(config).to(torch.bfloat16)  # pyright: ignore[reportArgumentType]
    model.save_pretrained(folder)
    del model
    vocab = {"<pad>": PAD, "<eos>": EOS, "<unk>": UNK}
    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="<unk>")),
                                  pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")  # fmt: skip
    tok.save_pretrained(folder)
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def run_one(spec: dict, timeout: float, log) -> dict:
    """Run one configuration in a fresh process; its figures, or why it has none."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--one", json.dumps(spec)]
    started = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    except subprocess.TimeoutExpired as exc:
        log.write(f"==== {spec['name']}: timed out after {timeout:.0f} s\n{_text(exc.stdout)}{_text(exc.stderr)}\n")
        return {"error": f"timed out after {timeout:.0f} s"}
    log.write(f"==== {spec['name']} (exit {proc.returncode}, {time.perf_counter() - started:.0f} s)\n")
    log.write(proc.stdout + proc.stderr + "\n")
    log.flush()
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        return {"error": f"exit {proc.returncode}: {tail[0][:300]}"}
    return json.loads(lines[-1][len("RESULT ") :])


def run_inline(spec: dict, log) -> dict:
    """--smoke: the run in this process (one import of the training stack instead of four)."""
    try:
        return child(spec)
    except Exception as exc:  # noqa: BLE001 - a run's failure is a figure of the check, not its end
        log.write(f"==== {spec['name']}: {type(exc).__name__}: {exc}\n")
        return {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}


def _text(data) -> str:
    return data.decode(errors="replace") if isinstance(data, bytes) else (data or "")


def peak_flops(device: str, override: float | None) -> tuple[float | None, str]:
    """The dense bf16 peak used for MFU and where it comes from."""
    if override:
        return override * 1e12, f"{override:g} TFLOP/s (--peak-tflops)"
    for name, flops in PEAK_BF16:
        if name in device:
            return flops, f"{flops / 1e12:g} TFLOP/s dense bf16 ({name} datasheet)"
    return None, f"unknown for {device!r}: MFU not computed (give --peak-tflops)"


def loss_at(curve: list[list[float]], tokens: float) -> float | None:
    """The loss at `tokens` tokens seen, linearly interpolated along the curve."""
    points = [(t, loss) for _, t, loss in curve]
    for (t0, l0), (t1, l1) in zip(points, points[1:]):
        if t0 <= tokens <= t1:
            return l0 if t1 == t0 else l0 + (l1 - l0) * (tokens - t0) / (t1 - t0)
    return points[-1][1] if points and tokens >= points[-1][0] else None


def compare(plain: dict, ours: dict, peak: float | None) -> dict:
    """(b)/(a) ratios of one shape and precision, and the two loss curves at matched tokens."""
    for r in (plain, ours):
        tps = r.get("tokens_per_s")
        r["mfu"] = round(6 * (r["params"] + r["lora_params"]) * tps / peak, 4) if peak and tps else None
    ratio = {}
    for key in ("tokens_per_s", "peak_gpu_gib", "peak_rss_mib", "mfu"):
        a, b = plain.get(key), ours.get(key)
        ratio[key] = round(b / a, 3) if a and b else None
    end = min(plain["loss_curve"][-1][1], ours["loss_curve"][-1][1])
    start = max(plain["loss_curve"][0][1], ours["loss_curve"][0][1])
    matched = []
    for frac in (0.0, 0.25, 0.5, 0.75, 1.0):
        tokens = start + frac * (end - start)
        a, b = loss_at(plain["loss_curve"], tokens), loss_at(ours["loss_curve"], tokens)
        if a and b:
            matched.append(
                {"tokens": int(tokens), "plain": round(a, 4), "learnloop": round(b, 4), "ratio": round(b / a, 4)}
            )
    return {"ratio": ratio, "loss_matched": matched}


def print_pair(name: str, plain: dict, ours: dict, cmp: dict) -> None:
    def fmt(r: dict) -> str:
        gib = (
            f"{r['peak_gpu_gib']:.1f} GiB" if r.get("peak_gpu_gib") is not None else f"RSS {r['peak_rss_mib']:.0f} MiB"
        )
        mfu = f"MFU {r['mfu']:.1%}" if r.get("mfu") is not None else "MFU n/a"
        feats = f"batch {r['batch_size']}, ckpt {'on' if r['gradient_checkpointing'] else 'off'}, {r['attention']}"
        feats += ", packing" if r["packing"] else ""
        feats += ", liger" if r["liger"] else ""
        return f"{r['tokens_per_s']:9.0f} tok/s  {gib:>11}  {mfu:9}  ({r['timed_steps']} steps; {feats})"

    print(f"{name}")
    print(f"  (a) plain SFTTrainer  {fmt(plain)}")
    print(f"  (b) learnloop recipe  {fmt(ours)}")
    r = cmp["ratio"]
    mem = r["peak_gpu_gib"] if r["peak_gpu_gib"] is not None else r["peak_rss_mib"]
    print(f"  (b)/(a): tokens/s {_x(r['tokens_per_s'])}, peak memory {_x(mem)}, MFU {_x(r['mfu'])}")
    curve = ", ".join(
        f"{m['tokens']}: {m['plain']:.3f}/{m['learnloop']:.3f} = {m['ratio']:.3f}" for m in cmp["loss_matched"]
    )
    print(f"  loss at tokens seen, (a) / (b) = (b)/(a): {curve}")


def _x(ratio: float | None) -> str:
    return f"{ratio:.2f}x" if ratio is not None else "n/a"


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").partition("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="CPU, tiny shape, a few steps: checks the script")
    parser.add_argument("--out", default="gpu-check-out", help="folder for gpu_check.json and gpu_check.log")
    parser.add_argument("--shapes", default="0.5b,1.5b", help=f"comma-separated, of {', '.join(SHAPES)}")
    parser.add_argument("--quant", default="bf16,4bit", help="comma-separated: bf16 (LoRA), 4bit (QLoRA nf4)")
    parser.add_argument("--train-s", type=float, default=20.0, help="timed seconds per run, after the warm-up")
    parser.add_argument("--max-steps", type=int, default=200, help="steps per run at most (warm-up included)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (kernel compilation, caches)")
    parser.add_argument("--rows", type=int, default=3000)
    parser.add_argument(
        "--max-length", type=int, default=1024, help="longest row and packed sequence (the recipe's default)"
    )
    parser.add_argument("--budget-s", type=float, default=570.0, help="start no run after this many seconds")
    parser.add_argument("--peak-tflops", type=float, default=None, help="dense bf16 peak of the GPU for MFU")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print("RESULT " + json.dumps(child(json.loads(args.one))), flush=True)
        return
    if args.smoke:
        args.shapes, args.quant, args.rows, args.max_length = "tiny", "bf16,4bit", 200, 128
        args.train_s, args.max_steps, args.warmup = 5.0, 3, 1
    check(args)


# Long: one run of the check reads top to bottom: data, models, the runs in budget order, the report.
def check(args) -> None:
    import torch

    started = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="gpu-check-models-"))
    shapes, quants = args.shapes.split(","), args.quant.split(",")
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    peak, peak_note = peak_flops(device, args.peak_tflops)
    print(f"device {device}; MFU peak: {peak_note}", flush=True)
    long = args.max_length // 2 if args.smoke else args.max_length
    data = work / "rows.json"
    rows = make_rows(args.rows, long // 8, long, min(SHAPES[s]["vocab_size"] for s in shapes))
    data.write_text(json.dumps(rows))
    lengths = sorted(len(r) for r in rows)
    print(f"{len(rows)} rows of {lengths[0]}-{lengths[-1]} tokens (median {lengths[len(rows) // 2]})", flush=True)
    report = {"device": device, "peak_flops": peak, "peak_note": peak_note, "versions": _versions(),
              "args": {k: v for k, v in vars(args).items() if k != "one"}, "runs": {}, "pairs": {}}  # fmt: skip
    try:
        with (out / "gpu_check.log").open("w") as log:
            for shape in shapes:
                folder = work / shape
                t = time.perf_counter()
                build_model(folder, SHAPES[shape])
                print(f"built the random {shape} model in {time.perf_counter() - t:.0f} s", flush=True)
                for quant in quants:
                    pair = {}
                    for side in ("plain", "learnloop"):
                        name = f"{shape} {quant} {side}"
                        left = args.budget_s - (time.perf_counter() - started)
                        if left < (20 if args.smoke else 60):
                            pair[side] = {"error": f"skipped: {left:.0f} s of the budget left"}
                        else:
                            spec = {"name": name, "side": side, "quant": quant, "model": str(folder), "data": str(data),
                                    "train_s": args.train_s, "max_steps": args.max_steps, "warmup": args.warmup,
                                    "max_length": args.max_length}  # fmt: skip
                            timeout = min(left, args.train_s + 240)
                            pair[side] = run_inline(spec, log) if args.smoke else run_one(spec, timeout, log)
                        report["runs"][name] = pair[side]
                        _write(out, report)
                        if "error" in pair[side]:
                            print(f"{name}: {pair[side]['error']}", flush=True)
                    if all("error" not in r for r in pair.values()):
                        cmp = compare(pair["plain"], pair["learnloop"], peak)
                        report["pairs"][f"{shape} {quant}"] = cmp
                        print_pair(f"{shape} {quant}", pair["plain"], pair["learnloop"], cmp)
                        _write(out, report)
                shutil.rmtree(folder, ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report["elapsed_s"] = round(time.perf_counter() - started, 1)
    _write(out, report)
    print(
        f"done in {report['elapsed_s']:.0f} s; figures in {out / 'gpu_check.json'}, run output in {out / 'gpu_check.log'}"
    )


def _write(out: Path, report: dict) -> None:
    (out / "gpu_check.json").write_text(json.dumps(report, indent=1))


def _versions() -> dict:
    import importlib.metadata as md

    names = [
        "torch",
        "transformers",
        "trl",
        "peft",
        "datasets",
        "accelerate",
        "bitsandbytes",
        "liger-kernel",
        "flash-attn",
    ]
    found = {}
    for name in names:
        try:
            found[name] = md.version(name)
        except md.PackageNotFoundError:
            found[name] = None
    return found


if __name__ == "__main__":
    main()
