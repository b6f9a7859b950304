"""The model architectures learnloop trains and exports, and a base's linear layers read from its
weight files (safetensors headers only: no torch, so the server can plan without loading a model).

One table says, per Hugging Face `model_type`: the linear layers to adapt by default, which of
them are attention projections, the architecture name llama.cpp's converter writes into GGUF
files, and how that converter rewrites the rows of a projection (which a LoRA GGUF's lora_B must
follow, or the adapter is silently wrong):
- "rope_permute": Llama-family q/k rows interleaved per head for llama.cpp's rotary layout;
- "neox_qkv": GPT-NeoX's fused query_key_value, stored per head as [q|k|v], regrouped as q, k, v;
- "none": rows as stored (Qwen, Gemma, Phi-3, OLMo 2, StableLM).
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

Layout = Literal["none", "rope_permute", "neox_qkv"]

LLAMA_ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")
LLAMA_MLP = ("gate_proj", "up_proj", "down_proj")
# Module names that are never LoRA targets by default: embeddings and output heads.
NOT_TARGETS = ("embed_tokens", "lm_head", "wte", "wpe", "word_embeddings", "embed_in", "embed_out", "output")


@dataclass(frozen=True)
class Architecture:
    model_type: str
    gguf_arch: str  # general.architecture as llama.cpp's convert_hf_to_gguf.py writes it
    attention: tuple[str, ...]
    mlp: tuple[str, ...]
    layout: Layout

    @property
    def linear(self) -> tuple[str, ...]:
        return self.attention + self.mlp


def _llama_like(model_type: str, gguf_arch: str, layout: Layout = "none") -> Architecture:
    return Architecture(model_type, gguf_arch, LLAMA_ATTENTION, LLAMA_MLP, layout)


ARCHITECTURES: dict[str, Architecture] = {
    a.model_type: a
    for a in (
        _llama_like("llama", "llama", "rope_permute"),
        _llama_like("mistral", "llama", "rope_permute"),  # the converter writes Mistral as llama
        _llama_like("qwen2", "qwen2"),
        _llama_like("qwen3", "qwen3"),
        _llama_like("gemma2", "gemma2"),
        _llama_like("gemma3_text", "gemma3"),
        _llama_like("gemma3", "gemma3"),
        _llama_like("olmo2", "olmo2"),
        _llama_like("stablelm", "stablelm"),
        Architecture("phi3", "phi3", ("qkv_proj", "o_proj"), ("gate_up_proj", "down_proj"), "none"),
        Architecture(
            "gpt_neox", "gptneox", ("query_key_value", "dense"), ("dense_h_to_4h", "dense_4h_to_h"), "neox_qkv"
        ),
    )
}

# Formats every causal LM exports to; GGUF ones need the architecture in the table above.
ALWAYS_FORMATS: tuple[str, ...] = ("peft", "merged")
GGUF_FORMATS: tuple[str, ...] = ("gguf", "ollama", "llamacpp")


def architecture(model_type: str | None) -> Architecture | None:
    return ARCHITECTURES.get(model_type or "")


def export_formats(model_type: str | None) -> list[str]:
    """The export formats a base of this model_type supports."""
    return list(ALWAYS_FORMATS) + (list(GGUF_FORMATS) if architecture(model_type) else [])


# ---- linear layers from the weight files ----------------------------------------------------------


def _safetensors_header(path: Path) -> dict:
    with path.open("rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        if length > 100 * 2**20:
            raise ValueError(f"{path.name} has an implausible header ({length} bytes)")
        return json.loads(f.read(length))


def weight_shapes(folder: str | Path) -> dict[str, list[int]] | None:
    """{tensor name: shape} of a model folder's safetensors files, or None where there are none
    (pytorch .bin weights, a hub id): then only the architecture's defaults are known."""
    files = sorted(Path(folder).glob("*.safetensors"))
    if not files:
        return None
    shapes: dict[str, list[int]] = {}
    for file in files:
        for name, info in _safetensors_header(file).items():
            if name != "__metadata__":
                shapes[name] = list(info["shape"])
    return shapes


def linear_layers(shapes: dict[str, list[int]]) -> list[str]:
    """The short names (q_proj, qkv_proj, ...) of the 2-D `.weight` tensors that are not
    embeddings or output heads: what PEFT's 'all-linear' would adapt."""
    names = set()
    for name, shape in shapes.items():
        if not name.endswith(".weight") or len(shape) != 2:
            continue
        short = name[: -len(".weight")].rsplit(".", 1)[-1]
        if short not in NOT_TARGETS:
            names.add(short)
    return sorted(names)
