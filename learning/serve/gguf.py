"""LoRA adapters as GGUF files that llama.cpp (and Ollama) load, checked before and after writing.

Needs only numpy, safetensors and gguf (no torch), so the MCP server can run it.

What llama.cpp expects of a LoRA GGUF:
- general.type = adapter, adapter.type = lora, adapter.lora.alpha, general.architecture equal
  to the base GGUF's architecture (Mistral bases convert as "llama").
- Tensors `<base tensor name>.lora_a` with PEFT's lora_A as stored, shape (r, in), and
  `.lora_b`, shape (out, r); llama.cpp scales B·A by alpha / r (r read from the tensors).
- llama.cpp's converter rewrites the rows of some projections (the architecture's `layout` in
  learning.models.architectures), and lora_B must get the same row order or the adapter is
  silently wrong: Llama-family q_proj/k_proj rows are permuted for its rotary layout (by
  attention heads for q, by key-value heads for k); GPT-NeoX's fused query_key_value, stored per
  head as [q|k|v], is regrouped as all q heads, then all k, then all v.
- PEFT's rsLoRA scales by alpha / sqrt(r): the file carries alpha * sqrt(r) so alpha / r matches.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from learning.models.architectures import ARCHITECTURES, Architecture, architecture, export_formats

if TYPE_CHECKING:  # numpy loads with the first export, not with the server
    import numpy as np

PREFIX = "base_model.model."
FORBIDDEN_TARGETS = ("embed_tokens", "lm_head", "wte", "word_embeddings", "embed_out")


@dataclass
class BaseShape:
    """What the export needs of the base model's config.json."""

    model_type: str
    n_layers: int
    n_heads: int
    n_kv_heads: int

    @property
    def arch(self) -> Architecture:
        """The architecture's row in learning.models.architectures (the export's checks refuse
        model types without one before anything is written)."""
        found = architecture(self.model_type)
        if found is None:
            raise KeyError(f"no GGUF layout known for model_type {self.model_type!r}")
        return found

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> BaseShape:
        model_type = str(config.get("model_type", ""))
        if "num_hidden_layers" not in config and isinstance(config.get("text_config"), dict):
            config = config["text_config"]  # a multimodal config (gemma3): the language model's shape
        n_heads = int(config["num_attention_heads"])
        return cls(
            model_type=model_type,
            n_layers=int(config["num_hidden_layers"]),
            n_heads=n_heads,
            n_kv_heads=int(config.get("num_key_value_heads") or n_heads),
        )


# ---- checks -------------------------------------------------------------------------------


def lora_problems(
    adapter_config: dict[str, Any], tensor_names: list[str], base: BaseShape | None, target: str = "gguf"
) -> list[str]:
    """Every reason this adapter cannot become a correct LoRA GGUF (empty when it can)."""
    problems = []
    if adapter_config.get("peft_type", "LORA") != "LORA":
        problems.append(
            f"the adapter is {adapter_config.get('peft_type')}, not LoRA; only LoRA adapters export to {target}"
        )
    if adapter_config.get("use_dora"):
        problems.append(f"the adapter uses DoRA, which has no {target} equivalent; export it as 'merged' instead")
    for key in ("rank_pattern", "alpha_pattern"):
        if adapter_config.get(key):
            problems.append(
                f"the adapter sets {key} (per-module ranks/alphas); a LoRA GGUF has one alpha and "
                f"llama.cpp cannot express it; retrain without {key} or export as 'merged'"
            )
    if adapter_config.get("modules_to_save"):
        problems.append(
            f"the adapter fully trains modules_to_save={adapter_config['modules_to_save']}, which a LoRA "
            f"{target} cannot carry; export as 'merged'"
        )
    bad = sorted({n for n in tensor_names if any(f".{t}." in f".{n}." for t in FORBIDDEN_TARGETS)})
    if bad:
        problems.append(
            f"LoRA on embeddings or lm_head ({', '.join(_module(n) for n in bad[:4])}): llama.cpp rejects or "
            "drops it; retrain with target_modules limited to the attention/MLP projections or export as 'merged'"
        )
    extra = sorted({n for n in tensor_names if ".lora_A." not in n and ".lora_B." not in n and n not in bad})
    if extra:
        problems.append(
            f"the adapter holds tensors other than lora_A/lora_B ({', '.join(extra[:3])}); {target} cannot carry them"
        )
    if base is not None:
        if target not in export_formats(base.model_type):
            problems.append(
                f"base architecture {base.model_type!r} is not supported for {target} export "
                f"(supported: {', '.join(sorted(ARCHITECTURES))}); export 'peft' or 'merged' instead"
            )
        else:
            unmapped = [
                n for n in tensor_names if n not in bad and ".lora_A." in n and _gguf_base_name(n, base) is None
            ]
            if unmapped:
                problems.append(f"no GGUF tensor name for {', '.join(_module(n) for n in unmapped[:3])}")
    return problems


def _module(tensor_name: str) -> str:
    """base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight -> model.layers.0.self_attn.q_proj"""
    name = tensor_name[len(PREFIX) :] if tensor_name.startswith(PREFIX) else tensor_name
    for part in (".lora_A.", ".lora_B."):
        if part in name:
            return name.split(part)[0]
    return name


def _gguf_base_name(tensor_name: str, base: BaseShape) -> str | None:
    import gguf

    arch_name = base.arch.gguf_arch
    arch = next((a for a, n in gguf.MODEL_ARCH_NAMES.items() if n == arch_name), None)
    if arch is None:  # a gguf package older than the architecture
        return None
    tmap = gguf.get_tensor_name_map(arch, base.n_layers)
    return tmap.get_name(_module(tensor_name) + ".weight", try_suffixes=(".weight",))


# ---- the converter's row layouts ---------------------------------------------------------


def permute_rows(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's converter (LlamaModel.permute): interleaved rotary halves per head."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def unpermute_rows(w: np.ndarray, n_head: int) -> np.ndarray:
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def regroup_qkv_rows(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's converter (GPTNeoXModel.modify_tensors): rows stored per head as [q|k|v]
    (n_head, 3, head_dim) become (3, n_head, head_dim): all q heads, then all k, then all v."""
    return w.reshape(n_head, 3, w.shape[0] // n_head // 3, *w.shape[1:]).swapaxes(0, 1).reshape(w.shape)


def ungroup_qkv_rows(w: np.ndarray, n_head: int) -> np.ndarray:
    return w.reshape(3, n_head, w.shape[0] // n_head // 3, *w.shape[1:]).swapaxes(0, 1).reshape(w.shape)


def heads_for(module: str, base: BaseShape) -> int | None:
    """How many heads the converter re-lays this module's rows by (None: rows as stored)."""
    layout = base.arch.layout
    if layout == "rope_permute" and module.endswith("q_proj"):
        return base.n_heads
    if layout == "rope_permute" and module.endswith("k_proj"):
        return base.n_kv_heads
    if layout == "neox_qkv" and module.endswith("query_key_value"):
        return base.n_heads
    return None


def to_gguf_rows(b: np.ndarray, module: str, base: BaseShape) -> np.ndarray:
    """lora_B's rows in the order the converter gives the base weight's rows."""
    n = heads_for(module, base)
    if n is None:
        return b
    return permute_rows(b, n) if base.arch.layout == "rope_permute" else regroup_qkv_rows(b, n)


def from_gguf_rows(b: np.ndarray, module: str, base: BaseShape) -> np.ndarray:
    """The inverse of to_gguf_rows: lora_B as read from a GGUF back in PEFT's row order."""
    n = heads_for(module, base)
    if n is None:
        return b
    return unpermute_rows(b, n) if base.arch.layout == "rope_permute" else ungroup_qkv_rows(b, n)


# ---- writing ------------------------------------------------------------------------------


def gguf_alpha(adapter_config: dict[str, Any]) -> float:
    """The alpha to write so that llama.cpp's alpha / r equals PEFT's scaling."""
    alpha, r = float(adapter_config["lora_alpha"]), int(adapter_config["r"])
    return alpha * math.sqrt(r) if adapter_config.get("use_rslora") else alpha


def peft_scaling(adapter_config: dict[str, Any]) -> float:
    alpha, r = float(adapter_config["lora_alpha"]), int(adapter_config["r"])
    return alpha / math.sqrt(r) if adapter_config.get("use_rslora") else alpha / r


def load_peft(adapter_dir: Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    import numpy as np
    from safetensors.numpy import load_file

    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    tensors = load_file(str(adapter_dir / "adapter_model.safetensors"))
    return config, {k: v.astype(np.float32) for k, v in tensors.items()}


def write_lora_gguf(
    adapter_dir: Path, base: BaseShape, out_path: Path, dtype: str = "f32", name: str = "adapter", reorder: bool = True
) -> dict[str, tuple[int, ...]]:
    """Write the adapter as a LoRA GGUF; returns {tensor name: numpy shape}. reorder=False (rows
    left as PEFT stores them) only exists to show in tests that verify_lora_gguf catches it."""
    import gguf
    import numpy as np

    config, tensors = load_peft(adapter_dir)
    np_dtype = np.float16 if dtype == "f16" else np.float32
    writer = gguf.GGUFWriter(str(out_path), base.arch.gguf_arch)
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, gguf_alpha(config))
    writer.add_name(name)
    shapes: dict[str, tuple[int, ...]] = {}
    for key in sorted(tensors):
        if ".lora_A." not in key:
            continue
        a, b = tensors[key], tensors[key.replace(".lora_A.", ".lora_B.")]
        if reorder:
            b = to_gguf_rows(b, _module(key), base)
        stem = _gguf_base_name(key, base)
        assert stem is not None  # the export's checks refuse adapters with unmapped modules first
        for suffix, value in ((".lora_a", a), (".lora_b", b)):
            arr = np.ascontiguousarray(value.astype(np_dtype))
            writer.add_tensor(stem + suffix, arr)
            shapes[stem + suffix] = arr.shape
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return shapes


# ---- verifying ----------------------------------------------------------------------------


def read_lora_gguf(path: Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    import gguf
    import numpy as np

    reader = gguf.GGUFReader(str(path))
    keys: dict[str, Any] = {}
    for key in ("general.architecture", "general.type", gguf.Keys.Adapter.TYPE, gguf.Keys.Adapter.LORA_ALPHA):
        field = reader.get_field(key)
        keys[key] = None if field is None else field.contents()
    keys["f16"] = any(t.data.dtype == np.float16 for t in reader.tensors)
    return keys, {t.name: np.array(t.data, dtype=np.float32) for t in reader.tensors}


def verify_lora_gguf(path: Path, adapter_dir: Path, base: BaseShape) -> dict[str, Any]:
    """Read the file back and check what llama.cpp will compute from it.

    Keys, tensor names and shapes must be as expected; and for every module the delta llama.cpp
    adds, B·A × alpha/r with B's row layout undone (the q/k permutation or the qkv regrouping the
    writer applied), must equal PEFT's delta B·A × scaling.
    Returns {problems, modules, max_delta_diff, max_delta}."""
    import numpy as np

    config, peft = load_peft(adapter_dir)
    keys, tensors = read_lora_gguf(path)
    problems = []
    want = {"general.architecture": base.arch.gguf_arch, "general.type": "adapter", "adapter.type": "lora"}
    for key, value in want.items():
        if keys.get(key) != value:
            problems.append(f"{key} is {keys.get(key)!r}, expected {value!r}")
    alpha = keys.get("adapter.lora.alpha")
    if alpha is None or not math.isclose(float(alpha), gguf_alpha(config), rel_tol=1e-6):
        problems.append(f"adapter.lora.alpha is {alpha}, expected {gguf_alpha(config)}")
    max_diff, max_delta, bound, modules = 0.0, 0.0, 0.0, 0
    expected_names = set()
    for key in sorted(peft):
        if ".lora_A." not in key:
            continue
        stem = _gguf_base_name(key, base)
        assert stem is not None  # the export's checks refuse adapters with unmapped modules first
        expected_names |= {stem + ".lora_a", stem + ".lora_b"}
        a_peft, b_peft = peft[key], peft[key.replace(".lora_A.", ".lora_B.")]
        a, b = tensors.get(stem + ".lora_a"), tensors.get(stem + ".lora_b")
        if a is None or b is None:
            continue
        if a.shape != a_peft.shape or b.shape != b_peft.shape:
            problems.append(f"{stem}: shapes {a.shape}/{b.shape}, expected {a_peft.shape}/{b_peft.shape}")
            continue
        b = from_gguf_rows(b, _module(key), base)
        ours = (b @ a) * (float(alpha or 0) / a.shape[0])
        theirs = (b_peft @ a_peft) * peft_scaling(config)
        max_diff = max(max_diff, float(np.abs(ours - theirs).max()))
        max_delta = max(max_delta, float(np.abs(theirs).max()))
        bound = max(bound, float((np.abs(b_peft) @ np.abs(a_peft)).max()) * abs(peft_scaling(config)))
        modules += 1
    missing, unexpected = expected_names - set(tensors), set(tensors) - expected_names
    if missing:
        problems.append(f"missing tensors: {', '.join(sorted(missing)[:4])}")
    if unexpected:
        problems.append(f"unexpected tensors: {', '.join(sorted(unexpected)[:4])}")
    # Rounding only: relative to the largest |B|·|A| sum, f16 storage allows ~1e-3, f32 ~1e-6.
    tol = (2e-3 if keys["f16"] else 1e-5) * max(bound, 1e-12)
    if max_diff > tol:
        problems.append(
            f"reconstructed delta differs from PEFT's by {max_diff:.3g} (tolerance {tol:.3g}): "
            "wrong row layout (q/k permutation or qkv regrouping) or scaling"
        )
    return {"problems": problems, "modules": modules, "max_delta_diff": max_diff, "max_delta": max_delta}
