"""The merged export: base + LoRA adapter folded into one transformers model folder.

Runs in a job process (imports torch). The folder is reloaded from disk and its logits compared
with the PEFT model's on a probe input, so what is shipped is what was checked.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from learning.errors import Conflict
from learning.serve.tokenizer_files import copy_tokenizer

TOL_F32 = 1e-5
TOL_F16 = 5e-2  # f16 weights round to ~3 significant digits; the diff is reported either way


def probe_ids(base_dir: Path, vocab_size: int):
    """Token ids of a short code prompt (any ids below vocab_size when there is no tokenizer)."""
    import torch

    try:
        from transformers import AutoTokenizer

        ids = AutoTokenizer.from_pretrained(str(base_dir))("def add(a, b):\n    return a + b\n")["input_ids"]
    except Exception:  # noqa: BLE001 - no usable tokenizer: a fixed pattern still probes every layer
        ids = []
    if len(ids) < 4:
        ids = [(7 * i + 3) % vocab_size for i in range(24)]
    return torch.tensor([ids[:64]])


def export_merged(adapter_dir: Path, base_dir: Path, out: Path, dtype: str) -> dict[str, Any]:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32)
    model = PeftModel.from_pretrained(base, str(adapter_dir)).eval()
    ids = probe_ids(
        adapter_dir if (adapter_dir / "tokenizer_config.json").exists() else base_dir, base.config.vocab_size
    )
    with torch.no_grad():
        reference = model(ids).logits
        merged = model.merge_and_unload()
        if dtype == "f16":
            merged = merged.to(torch.float16)
        merged.save_pretrained(str(out))
        copy_tokenizer([adapter_dir, base_dir], out)
        reloaded = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32).eval()
        diff = float((reloaded(ids).logits - reference).abs().max())
    tol = TOL_F32 if dtype == "f32" else TOL_F16
    if not diff <= tol:
        raise Conflict(
            f"The merged model's logits differ from base+adapter by {diff:.3g} (tolerance {tol}); "
            "the merge is not faithful. Export as 'peft' instead and report this adapter."
        )
    return {
        "checks": [
            f"merged folder reloaded with transformers; logits on a {ids.shape[1]}-token probe vs "
            f"base+adapter: max diff {diff:.3g} <= {tol}"
        ],
        "max_logit_diff": diff,
        "warnings": [],
    }
