"""Rough estimates for train_adapter's plan: optimizer steps, parameters, tokens, time and memory,
from the model's config and the dataset's size (nothing is loaded)."""

from __future__ import annotations

import math
from pathlib import Path

from learning.models.architectures import linear_layers
from learning.train.config import TrainConfig


def estimate_steps(rows: int, cfg: TrainConfig, num_processes: int = 1) -> int:
    if cfg.max_steps:
        return cfg.max_steps
    batches = math.ceil(rows / (cfg.batch_size * num_processes))
    return max(1, math.ceil(cfg.epochs * math.ceil(batches / cfg.grad_accum)))


def _param_counts(config: dict, cfg: TrainConfig, shapes: dict[str, list[int]] | None = None) -> tuple[int, int]:
    """(base parameters, LoRA parameters): from the weight files' shapes when known, else from
    the model config (Llama-shaped projections)."""
    if shapes:
        return _counts_from_shapes(shapes, cfg.target_modules, cfg.rank)
    h = config.get("hidden_size") or 0
    n = config.get("num_hidden_layers") or 0
    inter = config.get("intermediate_size") or 4 * h
    heads = config.get("num_attention_heads") or 1
    kv = (config.get("num_key_value_heads") or heads) * (config.get("head_dim") or h // max(1, heads))
    sizes = {
        "q_proj": (h, h),
        "k_proj": (h, kv),
        "v_proj": (h, kv),
        "o_proj": (h, h),
        "gate_proj": (h, inter),
        "up_proj": (h, inter),
        "down_proj": (inter, h),
    }
    embed = (config.get("vocab_size") or 0) * h * (1 if config.get("tie_word_embeddings") else 2)
    base = embed + n * sum(a * b for a, b in sizes.values())
    targets = (
        sizes if isinstance(cfg.target_modules, str) else {k: v for k, v in sizes.items() if k in cfg.target_modules}
    )
    lora = n * sum(cfg.rank * (a + b) for a, b in targets.values())
    return base, lora


def _counts_from_shapes(shapes: dict[str, list[int]], targets: list[str] | str, rank: int) -> tuple[int, int]:
    """LoRA adds rank x (in + out) per adapted 2-D weight; "all-linear" counts every linear layer."""
    base = sum(math.prod(shape) for shape in shapes.values())
    linear = set(linear_layers(shapes))
    lora = 0
    for name, shape in shapes.items():
        if not name.endswith(".weight") or len(shape) != 2:
            continue
        module = name[: -len(".weight")]
        if isinstance(targets, str):
            adapted = module.rsplit(".", 1)[-1] in linear
        else:
            adapted = any(module == t or module.endswith("." + t) for t in targets)
        if adapted:
            lora += rank * (shape[0] + shape[1])
    return base, lora


def avg_row_tokens(path: Path, max_length: int) -> int:
    """Characters per row / 3.5, from the first 200 rows."""
    lengths = []
    with open(path, encoding="utf-8") as handle:
        for i, line in enumerate(handle):
            if i >= 200:
                break
            lengths.append(len(line))
    return min(max_length, int(sum(lengths) / max(1, len(lengths)) / 3.5) + 1)


def estimate_run(
    config: dict,
    cfg: TrainConfig,
    steps: int,
    row_tokens: int,
    num_processes: int,
    shapes: dict[str, list[int]] | None = None,
) -> tuple[int, float, float, int]:
    """(tokens, seconds, MiB per process, LoRA parameters): rough, for the plan."""
    base, lora = _param_counts(config, cfg, shapes)
    factor = 2 if cfg.method in ("dpo", "kto") else 1  # chosen and rejected, or policy and reference
    tokens = steps * cfg.batch_size * cfg.grad_accum * num_processes * row_tokens * factor
    flops = 6 * base * tokens  # forward + backward through the frozen base dominates
    est_time = steps * 0.05 + flops / (20e9 * num_processes)  # ~20 GFLOP/s per CPU process, plus overhead
    bytes_per = 0.55 if cfg.quantize == "4bit" else 1.1 if cfg.quantize == "8bit" else 4
    activations = (
        cfg.batch_size * row_tokens * (config.get("hidden_size") or 0) * (config.get("num_hidden_layers") or 0) * 40
    )
    shards = num_processes if cfg.sharding == "fsdp" else 1  # fsdp: each process holds 1/N of the weights
    memory = (base * bytes_per / shards + lora * 16 + activations) / 2**20 + 600  # + the Python, torch and TRL runtime
    return tokens, round(est_time, 1), round(memory, 1), lora
