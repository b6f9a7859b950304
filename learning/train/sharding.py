"""How a run's processes share the model: DDP (a full copy each, the default) or FSDP (each
process holds a shard of every wrapped block; for bases that do not fit one device).

FSDP is FSDP2 (`fully_shard`, per-parameter sharding: LoRA's trainable and the base's frozen
weights share a block) through transformers' `fsdp_config`. The blocks wrapped are the model's
transformer layer class, found from the loaded model; the adapter is saved from a full state
dict gathered on rank 0, so it is a normal PEFT adapter.

accelerate enables FSDP on GPU-like devices only (a CPU run stays DDP silently); torch's FSDP2
runs on CPU over gloo, so `enable_on_cpu` turns accelerate's state to FSDP for CPU runs.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from learning.train.config import TrainConfig


def wrap_classes(model: Any) -> list[str]:
    """The transformer block class(es) to wrap: transformers' `_no_split_modules`, else the
    module class that repeats num_hidden_layers times."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    present = {type(m).__name__ for m in base.modules()}
    declared = [name for name in getattr(base, "_no_split_modules", None) or [] if name in present]
    if declared:
        return declared
    layers = getattr(getattr(base, "config", None), "num_hidden_layers", None)
    counts = Counter(type(m).__name__ for m in base.modules())
    repeated = [name for name, n in counts.items() if layers and n == layers and not name.startswith("Lora")]
    if not repeated:
        raise ValueError(f"cannot tell {type(base).__name__}'s transformer block class to wrap with FSDP")
    return repeated[:1]  # the outermost: modules() lists parents before their children


def fsdp_config(wrap: list[str]) -> dict[str, Any]:
    return {
        "version": 2,
        "auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
        "transformer_layer_cls_to_wrap": wrap,
        "reshard_after_forward": True,  # full shard: parameters gathered per block, freed after
        "state_dict_type": "FULL_STATE_DICT",  # the saved adapter: gathered on rank 0
        "cpu_ram_efficient_loading": False,
    }


def sharding_args(cfg: TrainConfig, model: Any) -> dict[str, Any]:
    """The trainer arguments of the run's sharding (none for DDP)."""
    if cfg.sharding != "fsdp":
        return {}
    return {"fsdp": True, "fsdp_config": fsdp_config(wrap_classes(model))}


def sharding_record(cfg: TrainConfig, num_processes: int, args: Any) -> dict[str, Any]:
    """What metadata.json says of the sharding (from the trainer's arguments)."""
    if cfg.sharding != "fsdp":
        return {"kind": "ddp" if num_processes > 1 else "none"}
    conf = args.fsdp_config
    return {
        "kind": "fsdp",
        "version": conf["version"],
        "wrap": conf["transformer_layer_cls_to_wrap"],
        "state_dict": "full",
    }


def enable_on_cpu(trainer: Any) -> None:
    """Make accelerate shard with FSDP on CPU (gloo), where it would keep DDP: its state takes
    the plugin the trainer built from fsdp_config, before train() prepares the model."""
    plugin_args = getattr(trainer.args, "fsdp_plugin_args", None)
    if plugin_args is None or trainer.is_fsdp_enabled:
        return
    from accelerate.state import PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    state = trainer.accelerator.state
    if state.distributed_type != DistributedType.MULTI_CPU:
        raise RuntimeError(f"FSDP needs several processes; accelerate runs {state.distributed_type}")
    state.fsdp_plugin = FullyShardedDataParallelPlugin(**plugin_args)
    # Both shared states: AcceleratorState() copies PartialState's type each time it is built.
    state.distributed_type = PartialState().distributed_type = DistributedType.FSDP
    trainer.is_fsdp_enabled = True


def sharding_problems(cfg: TrainConfig, num_processes: int) -> list[str]:
    """Combinations the plan refuses."""
    if cfg.sharding != "fsdp":
        return []
    if num_processes < 2:
        return [
            "sharding fsdp shards the model across processes: pass num_processes >= 2 (one per GPU; "
            "again when resuming), or use ddp (the default) with one process."
        ]
    return []
