"""The checks of train_adapter's inputs: the dataset, the base model (from its files, without
loading weights: a folder's config, weights and tokenizer files, or a hub id) and the adapter id.
Each check returns its problems instead of raising, so that all of them are reported together.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from learning.data.datasets import dataset_row
from learning.data.formats import PREF_FORMATS, SFT_FORMATS
from learning.errors import InvalidInput, shown
from learning.home import safe_id
from learning.registry import adapters as registry
from learning.store import Store
from learning.train.config import Method
from learning.train.job import BaseRef, DatasetRef, StartFrom

METHOD_KINDS = {"sft": ("sft",), "dpo": ("dpo",), "kto": ("kto",), "grpo": ("sft",)}
MIN_ROWS = 10
EMBEDDED_PREFIX = "embedded:"


def check_arguments(role: str, method: Method, num_processes: int) -> tuple[list[str], Method]:
    """Problems with the plain arguments, and the method to check the rest with (sft if unknown)."""
    problems: list[str] = []
    try:
        safe_id(role, "role")
    except InvalidInput as exc:
        problems.append(str(exc))
    if method not in METHOD_KINDS:
        problems.append(f"Unknown method {method!r}; use sft, dpo, kto or grpo.")
        method = "sft"
    if not 1 <= num_processes <= 64:
        problems.append(f"num_processes must be between 1 and 64, not {num_processes}.")
    return problems, method


def check_dataset(store: Store, dataset_id: str, role: str, method: str) -> tuple[list[str], DatasetRef | None, int]:
    """(problems, the dataset, its training rows)."""
    row = dataset_row(store, dataset_id)
    if row is None:
        return (
            [f"No dataset {shown(dataset_id)}. Make one with make_sft (CLI: learnloop make-sft) and pass its id."],
            None,
            0,
        )
    ds = dict(row)
    problems = []
    if ds["role"] != role:
        problems.append(
            f"Dataset {dataset_id} is for role {ds['role']!r}, not {shown(role)}; use a dataset of this role."
        )
    if ds["kind"] not in METHOD_KINDS[method]:
        need = (
            "a preference dataset (prompt/chosen/rejected)"
            if method == "dpo"
            else "a KTO dataset (prompt/completion/label)"
            if method == "kto"
            else "an SFT dataset whose rows carry tests"
            if method == "grpo"
            else "an SFT dataset"
        )
        problems.append(f"Method {method} needs {need}; dataset {dataset_id} is kind {ds['kind']!r}.")
    formats = SFT_FORMATS if method in ("sft", "grpo") else PREF_FORMATS
    if ds["format"] not in formats:
        problems.append(f"Dataset {dataset_id} has format {ds['format']!r}; {method} takes {', '.join(formats)}.")
    path = (store.home / ds["path"]).resolve()
    if store.home not in path.parents or not (path / "train.jsonl").is_file():
        problems.append(f"Dataset {dataset_id}'s train.jsonl is missing under {path}; make the dataset again.")
    elif ds["train_rows"] < MIN_ROWS:
        problems.append(
            f"Dataset {dataset_id} has {ds['train_rows']} training rows; at least {MIN_ROWS} are needed. "
            "Log more runs or lower make_sft's reward threshold."
        )
    elif method == "grpo":
        problems += _tested_rows_problems(dataset_id, path / "train.jsonl")
    ref = DatasetRef(id=ds["id"], path=str(path), format=ds["format"], content_hash=ds["content_hash"])
    return problems, ref, ds["train_rows"]


def _tested_rows_problems(dataset_id: str, train_file: Path) -> list[str]:
    """GRPO's reward runs each row's tests: enough rows must carry them."""
    rows = tested = 0
    with train_file.open(encoding="utf-8") as f:
        for line in f:
            if line.strip():
                rows += 1
                tested += bool(json.loads(line).get("tests"))
    if tested >= MIN_ROWS:
        return []
    return [
        f"GRPO rewards answers by running each row's tests, and dataset {dataset_id} has {tested} of {rows} "
        f"training rows with tests (at least {MIN_ROWS} are needed). Curate runs logged with tests "
        "(log_run tests=..., or run_tests log=true)."
    ]


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _token_name(value: Any) -> str | None:
    return value.get("content") if isinstance(value, dict) else value


def check_base(base: str) -> tuple[list[str], BaseRef | None, dict]:
    """Check a base model from its files without loading weights.
    Returns (problems, the base resolved, its config.json)."""
    if base.startswith(EMBEDDED_PREFIX):
        from learning.models.tinybase import SIZES

        size = base[len(EMBEDDED_PREFIX) :]
        if size not in SIZES:
            return [f"Unknown embedded base {base!r}; use {', '.join(EMBEDDED_PREFIX + s for s in SIZES)}."], None, {}
        spec = SIZES[size]
        return (
            [],
            BaseRef(kind="embedded", size=size),
            dict(
                model_type="llama",  # learning.models.tinybase builds Llama models
                hidden_size=spec.hidden_size,
                num_hidden_layers=spec.num_layers,
                intermediate_size=spec.intermediate_size,
                vocab_size=spec.vocab_size,
                num_attention_heads=spec.num_heads,
                tie_word_embeddings=True,
            ),
        )
    path = Path(base).expanduser()
    if not path.exists():
        if base.count("/") == 1 and not base.startswith((".", "/", "~")):
            return _check_hub(base)
        return (
            [
                f"Base model {base!r} does not exist. Pass a folder with config.json and weights, a hub id, or "
                "leave --base out to use the embedded base."
            ],
            None,
            {},
        )
    config = _read_json(path / "config.json")
    problems = []
    if not config:
        problems.append(f"{path} has no readable config.json: not a transformers model folder.")
        return problems, None, {}
    archs = config.get("architectures") or []
    if not any(a.endswith("ForCausalLM") for a in archs):
        problems.append(
            f"{path} is not a causal language model (architectures {archs or 'missing'}); "
            "train_adapter needs a *ForCausalLM model."
        )
    if not (list(path.glob("*.safetensors")) or list(path.glob("*.bin"))):
        problems.append(f"{path} has no weights (*.safetensors or *.bin).")
    problems += _check_tokenizer_files(path, config)
    return problems, BaseRef(kind="path", ref=str(path.resolve())), config


def _check_tokenizer_files(path: Path, config: dict) -> list[str]:
    tok_cfg = _read_json(path / "tokenizer_config.json")
    special = _read_json(path / "special_tokens_map.json")
    if not tok_cfg and not (path / "tokenizer.json").exists() and not (path / "tokenizer.model").exists():
        return [f"{path} has no tokenizer files (tokenizer.json / tokenizer.model / tokenizer_config.json)."]
    eos = _token_name(tok_cfg.get("eos_token") or special.get("eos_token")) or config.get("eos_token_id")
    if eos is None:
        return [f"{path}'s tokenizer has no eos token: set eos_token in tokenizer_config.json."]
    return []


def _check_hub(repo: str) -> tuple[list[str], BaseRef | None, dict]:
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(repo, "config.json")
    if isinstance(cached, str):
        return _check_hub_snapshot(repo, Path(cached).parent)
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        return (
            [
                f"Base model {repo!r} is not in the local hub cache and HF_HUB_OFFLINE=1; download it first "
                "or pass a local folder."
            ],
            None,
            {},
        )
    return [], BaseRef(kind="hub", ref=repo), {}


def _check_hub_snapshot(repo: str, folder: Path) -> tuple[list[str], BaseRef | None, dict]:
    problems, _, config = check_base(str(folder))
    return problems, BaseRef(kind="hub", ref=repo, revision=folder.name), config


def resolve_adapter_id(store: Store, role: str, adapter_id: str | None, resume: bool) -> tuple[list[str], str | None]:
    if adapter_id is None:
        if not resume:
            return [], None
        rows = [
            r
            for r in registry.adapter_rows(store, role=role, status="failed")
            if (Path(r["path"]) / "checkpoints").is_dir()
        ]
        if not rows:
            return [
                f"Nothing to resume for role {shown(role)}: no failed or cancelled adapter with a checkpoint."
            ], None
        return [], rows[0]["id"]
    try:
        safe_id(adapter_id, "adapter id")
    except InvalidInput as exc:
        return [str(exc)], None
    row = registry.adapter_row(store, adapter_id)
    if resume and row is None:
        return [f"No adapter {adapter_id!r} to resume."], None
    if not resume and row is not None:
        return [f"Adapter {adapter_id} already exists; pass resume to continue it, or another id."], None
    if resume and row is not None and row["status"] != "failed":  # (resume without a row returned above)
        return [f"Adapter {adapter_id} is {row['status']}; only a failed or cancelled adapter can be resumed."], None
    return [], adapter_id


def check_start_from(store: Store, start_from: str | None, base_path: str | None) -> tuple[list[str], StartFrom | None]:
    """The adapter a run continues (e.g. GRPO after SFT): it must exist, be trained, and be on the
    same base. Returns its folder and the LoRA shape it fixes (rank, alpha, layers)."""
    if start_from is None:
        return [], None
    try:
        safe_id(start_from, "start_from")
    except InvalidInput as exc:
        return [str(exc)], None
    row = registry.adapter_row(store, start_from)
    if row is None:
        return [
            f"No adapter {shown(start_from)} to start from. List adapters with list_adapters (CLI: learnloop list)."
        ], None
    path = Path(row["path"])
    config = _read_json(path / "adapter_config.json")
    if row["status"] in ("training", "failed") or not config:
        return [f"Adapter {start_from} is {row['status']} and has no trained weights to start from."], None
    if base_path is not None and row["base_model"] != base_path:
        return [
            f"Adapter {start_from} was trained on {row['base_model']}, not on this run's base {base_path}; "
            "start from an adapter of the same base, or pass its base."
        ], None
    targets = config.get("target_modules") or []
    try:
        shape = {"rank": config.get("r"), "alpha": config.get("lora_alpha")}
        targets = sorted(targets) if isinstance(targets, list) else targets
        return [], StartFrom.model_validate({"id": start_from, "path": str(path), **shape, "target_modules": targets})
    except ValidationError:
        return [f"Adapter {start_from}'s adapter_config.json does not say its rank, alpha and layers."], None
