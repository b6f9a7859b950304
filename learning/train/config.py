"""Training configuration: one pydantic model, three named presets, YAML as its file form.

A preset is a starting point; any field can be overridden by name. Validation happens once,
here, and reports every problem together.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from learning.errors import InvalidInput

Method = Literal["sft", "dpo", "kto", "grpo"]
Quantize = Literal["none", "4bit", "8bit", "auto"]
Preset = Literal["light", "default", "heavy"]
# Words target_modules takes besides a list of names; the plan resolves them against the base's
# own linear layers (learning/train/targets.py).
TARGET_WORDS = ("auto", "all-linear", "attention")
Switch = Literal["auto", "on", "off"]
Attention = Literal["auto", "sdpa", "flash_attention_2", "eager"]
Sharding = Literal["ddp", "fsdp"]


class TrainConfig(BaseModel):
    """Every hyper-parameter of one training run, with the defaults of the `default` preset."""

    model_config = ConfigDict(extra="forbid")

    method: Method = Field(
        default="sft",
        description="sft on prompt/completion or messages; dpo or kto on preference data; grpo samples answers "
        "to an SFT dataset's prompts and rewards them by running the rows' tests.",
    )
    rank: int = Field(default=16, ge=1, le=1024, description="LoRA rank r.")
    alpha: float = Field(default=32, gt=0, description="LoRA alpha; the update is scaled by alpha / r.")
    dropout: float = Field(default=0.05, ge=0, lt=1, description="LoRA dropout.")
    target_modules: list[str] | str = Field(
        default="auto",
        description="Layers to adapt: 'auto' (the architecture's projections, else every linear layer but "
        "the output head), 'all-linear', 'attention' (the attention projections), or a list of module names. "
        "The plan resolves it to the base's exact layer names.",
    )
    learning_rate: float = Field(default=2e-4, gt=0, le=1, description="Peak learning rate (AdamW, linear decay).")
    epochs: float = Field(default=2, gt=0, le=100, description="Passes over the training rows (max_steps wins if set).")
    max_steps: int | None = Field(default=None, ge=1, description="Stop after this many optimizer steps.")
    batch_size: int = Field(
        default=4,
        ge=1,
        le=4096,
        description="Rows per device per step (grpo: prompts, each answered num_generations times).",
    )
    grad_accum: int = Field(default=1, ge=1, le=1024, description="Gradient accumulation steps.")
    max_length: int = Field(default=1024, ge=16, le=262144, description="Longest tokenized row; longer rows are cut.")
    warmup_ratio: float = Field(default=0.03, ge=0, lt=1)
    weight_decay: float = Field(default=0.0, ge=0, lt=1)
    beta: float = Field(default=0.1, gt=0, le=10, description="DPO/KTO temperature of the implicit reward.")
    quantize: Quantize = Field(
        default="auto",
        description="4bit (QLoRA, nf4), 8bit, none, or auto (4bit when the model would not fit in memory, else none).",
    )
    seed: int = Field(default=0, description="Seed of data order, LoRA init and dropout.")
    save_steps: int = Field(default=50, ge=1, description="Checkpoint every this many steps (the last two are kept).")
    logging_steps: int = Field(default=1, ge=1)
    packing: bool = Field(default=False, description="Pack rows into max_length sequences (SFT; faster on GPU).")
    liger: Switch = Field(
        default="auto",
        description="Liger's Triton kernels (RMSNorm, SwiGLU, RoPE) for SFT: auto = on a CUDA GPU when liger-kernel is installed.",
    )
    attention: Attention = Field(
        default="auto",
        description="Attention kernel: auto = flash_attention_2 on a CUDA GPU when flash-attn is installed, else transformers' default (sdpa).",
    )
    sharding: Sharding = Field(
        default="ddp",
        description="With several processes: ddp (a full copy of the model each) or fsdp (each holds a shard; "
        "for a base that does not fit one device; needs num_processes >= 2 and no 4bit/8bit).",
    )

    num_generations: int = Field(default=8, ge=2, le=256, description="GRPO: answers sampled per prompt (a group).")
    max_completion_length: int = Field(
        default=256, ge=1, le=32768, description="GRPO: longest sampled answer, in tokens."
    )
    temperature: float = Field(default=1.0, gt=0, le=5, description="GRPO: sampling temperature.")
    kl_coef: float = Field(
        default=0.0, ge=0, le=10, description="GRPO: weight of the KL penalty to the base (0: none)."
    )
    stop: list[str] = Field(
        default_factory=list,
        description="GRPO: an answer ends at the first of these strings (as served) before scoring.",
    )
    vllm: str = Field(
        default="auto",
        pattern=r"^(auto|off|colocate|https?://[A-Za-z0-9.\-\[\]:]+)$",
        description="GRPO: sample with vLLM: colocate (in each training process's GPU), a `trl vllm-serve` "
        "server's URL (across nodes), off, or auto (colocate where CUDA and vLLM are installed).",
    )
    compile_bonus: float = Field(
        default=0.0,
        ge=0,
        le=1,
        description="GRPO: added to the reward when the answer's code compiles (a format term).",
    )
    length_penalty: float = Field(
        default=0.0, ge=0, le=1, description="GRPO: subtracted, times the answer's share of max_completion_length."
    )
    no_signal_steps: int = Field(
        default=10,
        ge=1,
        description="GRPO: stop with an error after this many steps in a row in which no group's rewards varied.",
    )
    log_samples: bool = Field(
        default=False, description="GRPO: log every scored answer as a run (agent learnloop-grpo) with its reward."
    )

    @model_validator(mode="after")
    def _coherent(self) -> TrainConfig:
        problems = []
        if self.method == "kto" and self.batch_size < 2:
            problems.append("KTO needs batch_size >= 2 (it compares rows within a batch).")
        if isinstance(self.target_modules, str) and self.target_modules not in TARGET_WORDS:
            problems.append("target_modules must be 'auto', 'all-linear', 'attention' or a list of module names.")
        if isinstance(self.target_modules, list) and not self.target_modules:
            problems.append("target_modules is empty: name at least one module, e.g. q_proj.")
        if self.method == "grpo" and self.batch_size * self.num_generations > 4096:
            problems.append("grpo samples batch_size x num_generations answers a step; keep it at most 4096.")
        if self.packing and self.method != "sft":
            problems.append("packing applies to sft only.")
        if self.sharding == "fsdp" and self.quantize in ("4bit", "8bit"):
            problems.append("sharding fsdp does not take quantize 4bit/8bit (not supported here); use quantize none.")
        if problems:
            raise ValueError("; ".join(problems))
        return self


PRESETS: dict[str, dict[str, Any]] = {
    # Attention projections only, small rank: quick, least likely to forget what the base knew.
    "light": dict(
        rank=8,
        alpha=16,
        dropout=0.05,
        target_modules="attention",
        learning_rate=2e-4,
        epochs=1,
        batch_size=4,
        grad_accum=1,
        max_length=1024,
    ),
    "default": {},
    # The default layers at rank 64: most capacity, most memory.
    "heavy": dict(
        rank=64, alpha=128, dropout=0.1, learning_rate=1e-4, epochs=3, batch_size=4, grad_accum=2, max_length=2048
    ),
}


def _problems(exc: ValidationError) -> list[str]:
    out = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "config"
        msg = err["msg"].removeprefix("Value error, ")
        out.append(f"{where}: {msg}" + (f" (got {err['input']!r})" if where != "config" and "input" in err else ""))
    return out


def build_config(preset: str = "default", overrides: dict[str, Any] | None = None) -> TrainConfig:
    """The preset with overrides applied (None values ignored), validated; all problems at once."""
    if preset not in PRESETS:
        raise InvalidInput(f"Unknown preset {preset!r}; use one of {', '.join(PRESETS)} (or override fields).")
    values = {**PRESETS[preset], **{k: v for k, v in (overrides or {}).items() if v is not None}}
    try:
        return TrainConfig(**values)
    except ValidationError as exc:
        problems = _problems(exc)
        head = "Invalid training configuration:" + (f" {problems[0]}" if len(problems) == 1 else "")
        raise InvalidInput(head, problems) from None


def load_yaml(path: str | Path) -> tuple[str, dict[str, Any]]:
    """A YAML file with an optional `preset:` key and any TrainConfig fields -> (preset, overrides)."""
    import yaml  # here, not at the top: the MCP server imports this module at start

    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise InvalidInput(f"Cannot read the training config {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise InvalidInput(f"The training config {path} must be a mapping of field: value.")
    preset = data.pop("preset", "default")
    return preset, data


def to_yaml(config: TrainConfig) -> str:
    import yaml

    return yaml.safe_dump(config.model_dump(), sort_keys=False)
