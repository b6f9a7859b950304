"""How the recipe loads the base and which speed features it turns on.

Everything here is decided from the adapter's configuration and the machine, once, before the
model loads: the dtype (bfloat16 on a GPU that has it, else float32), 4-/8-bit quantisation
(QLoRA), the attention kernel, Liger's Triton kernels and gradient checkpointing. Packing (which
in TRL is padding-free: rows are concatenated with their own position ids, no pad tokens) is the
`packing` field itself. `bench/gpu_check.py` measures these against a plain SFTTrainer.
"""

from __future__ import annotations

import importlib.util
from typing import Any

from learning.errors import InvalidInput
from learning.train.config import TrainConfig

# Above this many parameters the activations of a long row outgrow what recomputing them costs.
CHECKPOINTING_ABOVE = 500_000_000


def attention_implementation(cfg: TrainConfig, cuda: bool) -> str | None:
    """The attention kernel: `auto` is flash_attention_2 on a CUDA GPU with flash-attn installed,
    else None: transformers' own choice, PyTorch's sdpa where the model supports it (sdpa keeps
    packed rows apart by their position ids), eager attention where not."""
    choice = cfg.attention
    if choice == "auto":
        return "flash_attention_2" if cuda and _installed("flash_attn") else None
    if choice == "flash_attention_2" and not (cuda and _installed("flash_attn")):
        raise InvalidInput(
            "attention=flash_attention_2 needs a CUDA GPU and the flash-attn package; "
            "install it (pip install flash-attn) or set attention to auto or sdpa."
        )
    return choice


def liger_enabled(cfg: TrainConfig, cuda: bool) -> bool:
    """Liger's kernels (RMSNorm, SwiGLU, RoPE): `auto` uses them on a CUDA GPU when liger-kernel
    is installed; `on` insists (they are Triton kernels: GPU only)."""
    choice = cfg.liger
    if choice == "off":
        return False
    available = cuda and _installed("liger_kernel")
    if choice == "on" and not available:
        raise InvalidInput(
            "liger=on needs a CUDA GPU and the liger-kernel package; "
            "install it (pip install liger-kernel) or set liger to auto or off."
        )
    return available


def missing_packages(cfg: TrainConfig) -> list[str]:
    """For the plan, before any job starts: the speed features asked for by name whose package is
    not installed (whether a CUDA GPU is there only the job can tell: the server never imports torch)."""
    problems = []
    if cfg.liger == "on" and not _installed("liger_kernel"):
        problems.append("liger=on needs the liger-kernel package (pip install liger-kernel) and a CUDA GPU.")
    if cfg.attention == "flash_attention_2" and not _installed("flash_attn"):
        problems.append(
            "attention=flash_attention_2 needs the flash-attn package (pip install flash-attn) and a CUDA GPU."
        )
    if cfg.method == "grpo" and cfg.vllm == "colocate" and not _installed("vllm"):
        problems.append("vllm=colocate needs the vllm package (pip install vllm) and a CUDA GPU.")
    return problems


def model_kwargs(cfg: TrainConfig, cuda: bool) -> dict[str, Any]:
    """from_pretrained's arguments: dtype, quantisation when asked (nf4 with double quantisation
    for 4bit), and the attention kernel."""
    import torch
    import transformers

    dtype = torch.bfloat16 if uses_bf16(cuda) else torch.float32
    kwargs: dict[str, Any] = {"dtype": dtype}
    attention = attention_implementation(cfg, cuda)
    if attention is not None:
        kwargs["attn_implementation"] = attention
    if cfg.quantize in ("4bit", "8bit"):
        kwargs["quantization_config"] = transformers.BitsAndBytesConfig(
            load_in_4bit=cfg.quantize == "4bit",
            load_in_8bit=cfg.quantize == "8bit",
            bnb_4bit_quant_type="nf4",
            bnb_4bit_compute_dtype=dtype,
            bnb_4bit_use_double_quant=True,
        )
    return kwargs


def uses_bf16(cuda: bool) -> bool:
    """bfloat16 on a GPU that has it; float32 elsewhere (bfloat16 on a CPU is slower)."""
    import torch

    return cuda and torch.cuda.is_bf16_supported()


def needs_checkpointing(model) -> bool:
    """Gradient checkpointing only pays for itself on big models; tiny ones just get slower."""
    return sum(p.numel() for p in model.parameters()) > CHECKPOINTING_ABOVE


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None
