"""The merged export: base + LoRA adapter folded into one transformers model folder.

Runs in a job process (imports torch). Checked twice on a probe input, relative to the scale of
the logits (a real model's logits reach 30-40, a tiny random one's 1): the merged model in
memory (float32) against base+adapter, which catches a wrong merge whatever dtype is written;
then the folder reloaded from disk, so what is shipped is what was checked. Top-1 agreement and
KL divergence are reported beside the relative difference.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from learning.errors import Conflict
from learning.serve.tokenizer_files import copy_tokenizer

# max |logit diff| / max |logit|. float32 merging rounds to ~1e-6 of the scale (a 135M model:
# 5.5e-5 on logits reaching 39); a merge with the wrong scaling or a layer left out is off by the
# adapter's own effect, typically 1e-2 of the scale or more.
REL_TOL_F32 = 1e-4
# f16 weights keep ~3 significant digits: written models' logits drift by 1e-3 of their scale (tiny
# random models up to 1e-2); the merge itself was checked at f32 before rounding.
REL_TOL_F16 = 5e-2


def logit_agreement(reference, candidate) -> dict[str, float]:
    """How far candidate logits are from the reference ones, relative to their scale:
    max_diff, scale (max |reference|), relative, top1 (fraction of positions with the same
    argmax) and kl (mean KL(reference || candidate) per position, in nats)."""
    import torch

    ref, cand = reference.float().reshape(-1, reference.shape[-1]), candidate.float().reshape(-1, reference.shape[-1])
    max_diff = float((cand - ref).abs().max())
    scale = float(ref.abs().max())
    log_p, log_q = torch.log_softmax(ref, -1), torch.log_softmax(cand, -1)
    kl = float((log_p.exp() * (log_p - log_q)).sum(-1).mean())
    top1 = float((ref.argmax(-1) == cand.argmax(-1)).float().mean())
    return {"max_diff": max_diff, "scale": scale, "relative": max_diff / max(scale, 1e-12), "top1": top1, "kl": kl}


def merge_problems(agreement: dict[str, float], dtype: str, what: str = "merged model") -> list[str]:
    """Why these logits are not base+adapter's (empty when they are, within the dtype's rounding)."""
    tol = REL_TOL_F16 if dtype == "f16" else REL_TOL_F32
    if agreement["relative"] <= tol:
        return []
    hint = "; f16 rounding may be too coarse for this model: try dtype f32" if dtype == "f16" else ""
    return [
        f"the {what}'s logits differ from base+adapter by {agreement['max_diff']:.3g} on logits up to "
        f"{agreement['scale']:.3g} ({agreement['relative']:.3g} of their scale; tolerance {tol} at {dtype}; "
        f"top-1 agreement {agreement['top1']:.3f}, KL {agreement['kl']:.3g}){hint}"
    ]


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
        with model.disable_adapter():
            base_logits = model(ids).logits
        reference = model(ids).logits
        effect = float((reference - base_logits).abs().max())
        merged = model.merge_and_unload()
        in_memory = written = logit_agreement(reference, merged(ids).logits)
        problems = merge_problems(in_memory, "f32")
        if not problems:
            if dtype == "f16":
                merged = merged.to(torch.float16)
            merged.save_pretrained(str(out))
            copy_tokenizer([adapter_dir, base_dir], out)
            reloaded = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32).eval()
            written = logit_agreement(reference, reloaded(ids).logits)
            problems = merge_problems(written, dtype, f"written {dtype} model")
    if problems:
        raise Conflict(
            f"The merge is not faithful: {problems[0]}. Export as 'peft' instead and report this adapter.", problems
        )
    return {
        "checks": [
            f"merged in memory (f32) vs base+adapter on a {ids.shape[1]}-token probe: max diff "
            f"{in_memory['max_diff']:.3g} on logits up to {in_memory['scale']:.3g} ({in_memory['relative']:.3g} "
            f"<= {REL_TOL_F32} of their scale); the adapter itself moves them by up to {effect:.3g}",
            f"merged folder ({dtype}) reloaded with transformers: max diff {written['max_diff']:.3g} "
            f"({written['relative']:.3g} <= {REL_TOL_F16 if dtype == 'f16' else REL_TOL_F32} of their scale), "
            f"top-1 agreement {written['top1']:.3f}, KL {written['kl']:.3g}",
        ],
        "max_logit_diff": written["max_diff"],
        "warnings": [],
    }
