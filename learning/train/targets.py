"""Which layers an adapter adapts: train_adapter's target_modules resolved, before any job
starts, against the base's own linear layers (read from its safetensors headers by
learning.models.architectures, no weights loaded); and, in the job, the check that PEFT
adapted exactly what the plan says.

- "auto": the architecture's default linear layers (fused ones included: Phi-3's qkv_proj and
  gate_up_proj, GPT-NeoX's query_key_value), else every linear layer but the output head;
- "all-linear": every linear layer but the embeddings and the output head;
- "attention": the architecture's attention projections;
- a list of names: kept where they match a layer of the base (by name or dotted suffix, as
  PEFT matches them); refused when none does, the others dropped with a note.

Where the weights cannot be read (a hub id not downloaded, .bin files) the architecture's
defaults stand in for them; an unknown architecture then keeps PEFT's own "all-linear".
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from learning.models.architectures import ARCHITECTURES, Architecture, architecture, linear_layers, weight_shapes

Targets = list[str] | str  # exact names, or "all-linear" when neither weights nor architecture are known

FIX = "target_modules 'auto' (the architecture's defaults) or 'all-linear'"


def read_shapes(folder: str | Path | None, notes: list[str]) -> dict[str, list[int]] | None:
    """The base's {tensor: shape} from its safetensors headers, or None (noted when unreadable)."""
    if folder is None:
        return None
    try:
        return weight_shapes(folder)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        notes.append(f"could not read the base's safetensors headers ({exc}); using the architecture's defaults")
        return None


def resolve_targets(
    requested: list[str] | str, model_type: str | None, shapes: dict[str, list[int]] | None, notes: list[str]
) -> tuple[list[str], Targets | None]:
    """(problems, the exact target_modules the job will give PEFT); notes say what was chosen."""
    arch = architecture(model_type)
    existing = linear_layers(shapes) if shapes is not None else None
    if existing is not None and not existing:
        return [
            "The base has no linear layers to adapt (no 2-D weight besides its embeddings and output head): "
            "LoRA needs a transformer causal LM such as llama, mistral, qwen2, gemma2, phi3 or gpt_neox."
        ], None
    if requested == "auto":
        return [], _auto(arch, existing, model_type, notes)
    if requested == "all-linear":
        if existing is not None:
            return [], existing
        if arch is not None:
            return [], list(arch.linear)
        notes.append("the base's layers could not be read: PEFT's 'all-linear' picks them when the job loads it")
        return [], "all-linear"
    if requested == "attention":
        return _attention(arch, existing, model_type)
    assert isinstance(requested, list)
    return _listed(requested, arch, shapes, existing, notes)


def _auto(arch: Architecture | None, existing: list[str] | None, model_type: str | None, notes: list[str]) -> Targets:
    if arch is not None:
        names = [n for n in arch.linear if existing is None or n in existing]
        if names:
            return names
        notes.append(f"none of {model_type}'s usual layers is in this base: adapting all its linear layers")
        assert existing is not None  # names is empty only when the weights were read
        return existing
    if existing is not None:
        notes.append(
            f"model_type {model_type!r} is not in learnloop's table: adapting every linear layer but the "
            f"output head ({', '.join(existing)})"
        )
        return existing
    notes.append(f"model_type {model_type!r} is unknown and its weights unreadable: target_modules 'all-linear'")
    return "all-linear"


def _attention(
    arch: Architecture | None, existing: list[str] | None, model_type: str | None
) -> tuple[list[str], Targets | None]:
    if arch is None:
        known = ", ".join(sorted(ARCHITECTURES))
        layers = f" Its linear layers: {', '.join(existing)}." if existing else ""
        return [
            f"target_modules 'attention' needs a known architecture; model_type {model_type!r} is not one of "
            f"{known}.{layers} Use {FIX}, or list the layers to adapt."
        ], None
    names = [n for n in arch.attention if existing is None or n in existing]
    if not names:
        return [
            f"This base has none of {arch.model_type}'s attention projections ({', '.join(arch.attention)}); "
            f"its linear layers: {', '.join(existing or [])}. Use {FIX}, or list the layers to adapt."
        ], None
    return [], names


def _listed(
    requested: list[str],
    arch: Architecture | None,
    shapes: dict[str, list[int]] | None,
    existing: list[str] | None,
    notes: list[str],
) -> tuple[list[str], Targets | None]:
    if shapes is not None:  # every 2-D weight's module: heads and embeddings may be listed explicitly
        modules = {n[: -len(".weight")] for n, s in shapes.items() if n.endswith(".weight") and len(s) == 2}
        listing = existing or []
    elif arch is not None:
        modules, listing = set(arch.linear), list(arch.linear)
    else:
        notes.append("the base's layers could not be read: target_modules are used as given, unchecked")
        return [], list(requested)
    matched = [t for t in requested if any(m == t or m.endswith("." + t) for m in modules)]
    missing = [t for t in requested if t not in matched]
    if not matched:
        return [
            f"target_modules {', '.join(missing)} match no layer of this base. Its linear layers: "
            f"{', '.join(listing)}. List some of them, or use {FIX}."
        ], None
    if missing:
        notes.append(
            f"target_modules {', '.join(missing)} match no layer of this base and are dropped; "
            f"adapting {', '.join(matched)} (its linear layers: {', '.join(listing)})"
        )
    return [], matched


def export_notes(model_type: str | None, formats: list[str], notes: list[str]) -> None:
    if model_type is None:
        notes.append("the base's architecture is unknown until it is downloaded: export formats listed as peft, merged")
    elif "gguf" not in formats:
        notes.append(
            f"model_type {model_type!r} is not an architecture learnloop writes GGUF for: the adapter "
            f"will export as {' or '.join(formats)}, not gguf, ollama or llamacpp"
        )


# ---- in the job: what PEFT adapted -------------------------------------------------------------


def adapted_modules(peft_model: Any) -> dict[str, Any]:
    """The short names and the count of the modules PEFT wrapped with LoRA."""
    names = list(peft_model.base_model.targeted_module_names)
    return {"modules": sorted({n.rsplit(".", 1)[-1] for n in names}), "count": len(names)}


def adapted_mismatch(planned: Targets, adapted: dict[str, Any]) -> str | None:
    """Why PEFT's adapted modules differ from the plan's, or None when they agree."""
    if isinstance(planned, str):
        return None if adapted["count"] else "PEFT adapted no module"
    expected = {t.rsplit(".", 1)[-1] for t in planned}
    got = set(adapted["modules"])
    if got == expected:
        return None
    return (
        f"PEFT adapted {', '.join(sorted(got)) or 'nothing'} where the plan said {', '.join(sorted(expected))}"
        + (f" (missing: {', '.join(sorted(expected - got))})" if expected - got else "")
        + f". Train again with {FIX}."
    )
