"""Export benchmark: time of each export format on one adapter, and how exactly the GGUF matches.

    python bench/export.py [--adapter DIR --base DIR]

Without --adapter it trains a tiny LoRA (r=8, all linear projections, 30 steps) on a tiny Llama
with a SentencePiece tokenizer. Prints seconds per format (and the ratio to the PEFT export),
the GGUF-vs-PEFT max delta difference, and the llama.cpp-vs-PEFT max logit difference when
llama-cpp-python is installed (and $LLAMA_CPP_CONVERT points at convert_hf_to_gguf.py).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from learning.registry.adapters import create_adapter  # noqa: E402
from learning.serve.export import export_adapter  # noqa: E402
from learning.store import Store  # noqa: E402


def train_tiny(base: Path, out: Path, steps: int = 30) -> Path:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32),
        LoraConfig(
            r=8,
            lora_alpha=16,
            target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        ),
    )
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    data = torch.randint(3, model.config.vocab_size, (8, 32))
    for _ in range(steps):
        loss = model(data, labels=data).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    model.save_pretrained(str(out))
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--adapter", help="a PEFT adapter folder (default: train a tiny one)")
    parser.add_argument("--base", help="its base model folder")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-export-"))
    import tests.support.llamacpp_check as lc

    if args.adapter:
        adapter, base = Path(args.adapter), Path(args.base)
        source = f"adapter {adapter}"
    else:
        base = lc.build_spm_llama(work / "base")
        adapter = train_tiny(base, work / "adapter")
        source = "tiny trained adapter (Llama hidden 64, 2 layers, 4 heads / 2 kv heads, LoRA r=8 on 7 projections)"
    # Imported before timing: each export pays only its own work.
    import gguf  # noqa: F401
    import peft  # noqa: F401
    import transformers  # noqa: F401

    store = Store(work / "home")
    create_adapter(store, "bench-1", "coder", str(base), str(adapter), status="trained")
    print(f"source: {source}")
    times, results = {}, {}
    for fmt, dtype in (("peft", "f32"), ("gguf", "f32"), ("gguf", "f16"), ("ollama", "f32"), ("merged", "f32")):
        start = time.perf_counter()
        result = export_adapter(store, "bench-1", fmt, out=str(work / "out" / f"{fmt}-{dtype}"), dtype=dtype)
        times[f"{fmt}/{dtype}"] = time.perf_counter() - start
        results[f"{fmt}/{dtype}"] = result
    peft_s = times["peft/f32"]
    print(f"{'format':<12}{'seconds':>9}{'x peft':>8}{'MB':>9}")
    for key, seconds in times.items():
        print(f"{key:<12}{seconds:>9.3f}{seconds / peft_s:>8.1f}{results[key].total_bytes / 1e6:>9.2f}")
    print(f"GGUF f32 vs PEFT max delta diff: {results['gguf/f32'].max_delta_diff:.3g}")
    print(f"GGUF f16 vs PEFT max delta diff: {results['gguf/f16'].max_delta_diff:.3g}")
    print(f"merged vs PEFT max logit diff:   {results['merged/f32'].max_logit_diff:.3g}")
    reason = lc.llamacpp_available()
    if reason:
        print(f"llama.cpp vs PEFT max logit diff: {reason}")
        return
    base_gguf = lc.convert_base(base, work / "base.gguf")
    ids = [1] + list(range(3, 40))
    for key in ("gguf/f32", "gguf/f16"):
        d = lc.compare_logits(base, adapter, base_gguf, Path(results[key].out_dir) / "adapter.gguf", ids)
        print(
            f"llama.cpp vs PEFT max logit diff ({key}): {d['adapter_max_logit_diff']:.3g} "
            f"(base conversion {d['base_max_logit_diff']:.3g}, adapter effect {d['adapter_effect']:.3g})"
        )


if __name__ == "__main__":
    main()
