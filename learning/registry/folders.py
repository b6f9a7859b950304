"""Adapter folders: what a PEFT adapter folder must hold, whether it loads on its base, and
bringing an adapter trained elsewhere into the registry (`register_adapter`).

The checks read files only; the load check runs in a process of its own, so torch stays out of
the caller's process.
"""

from __future__ import annotations

import fnmatch
import json
import os
import secrets
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field

from learning.data.datasets import recorded_dataset
from learning.errors import Conflict, InvalidInput, LearnloopError, NotFound, check, shown
from learning.home import links_in, safe_id, subdir
from learning.models.generate import load_model
from learning.registry import adapters as registry
from learning.registry.queries import adapter_row
from learning.store import Store

LOAD_CHECK_TIMEOUT_S = 600
WEIGHT_FILES = ("adapter_model.safetensors", "adapter_model.bin")
IGNORED = ("checkpoint-*", "optimizer.pt", "*.pth")  # not copied: training state, not the adapter


def _ignored(name: str) -> bool:
    return any(fnmatch.fnmatch(name, pattern) for pattern in IGNORED)


def inspect_adapter_folder(path: Path) -> dict[str, Any]:
    """Read a PEFT adapter folder's config; report every problem together. No torch needed."""
    problems: list[str] = []
    config: dict[str, Any] = {}
    if not path.is_dir():
        raise NotFound(
            f"No adapter folder at {path}. Give the folder holding adapter_config.json "
            "(the output_dir of Unsloth, Axolotl or LLaMA-Factory)."
        )
    cfg = path / "adapter_config.json"
    if not cfg.is_file():
        problems.append(f"{cfg.name} is missing: this is not a PEFT adapter folder")
    else:
        try:
            config = json.loads(cfg.read_text())
            if not isinstance(config, dict) or "peft_type" not in config:
                problems.append(f"{cfg.name} has no peft_type: not a PEFT adapter config")
                config = config if isinstance(config, dict) else {}
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            problems.append(f"{cfg.name} is not valid JSON ({exc})")
    weights = [f for f in WEIGHT_FILES if (path / f).is_file()]
    if not weights:
        problems.append(f"no weights file ({' or '.join(WEIGHT_FILES)})")
    elif weights[0].endswith(".safetensors"):
        problem = safetensors_problem(path / weights[0])
        if problem:
            problems.append(problem)
    check(problems, f"The adapter folder {path} cannot be used:")
    return config


def safetensors_problem(path: Path) -> str | None:
    """Check a safetensors file's header without loading torch: 8-byte length, then JSON."""
    try:
        with open(path, "rb") as handle:
            size = int.from_bytes(handle.read(8), "little")
            if size <= 0 or size > 100_000_000 or size + 8 > path.stat().st_size:
                return f"{path.name} is corrupt (bad header length)"
            header = json.loads(handle.read(size))
    except (OSError, ValueError) as exc:
        return f"{path.name} is corrupt or unreadable ({exc})"
    if not isinstance(header, dict) or not any(k != "__metadata__" for k in header):
        return f"{path.name} holds no tensors"
    return None


def check_loads(base: str, path: Path) -> dict[str, Any]:
    """Load the base and the adapter on it in a fresh process (torch stays out of the caller);
    raise InvalidInput with the loader's message if it does not load."""
    root = str(Path(__file__).resolve().parents[2])  # the folder holding the learning package
    env = {**os.environ, "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", "")}
    code = "import sys; from learning.registry.folders import load_check_main; sys.exit(load_check_main(sys.argv[1:]))"
    try:
        proc = subprocess.run(
            [sys.executable, "-c", code, base, str(path)],
            capture_output=True,
            text=True,
            timeout=LOAD_CHECK_TIMEOUT_S,
            env=env,
        )
    except subprocess.TimeoutExpired as exc:
        raise InvalidInput(
            f"Loading the adapter on {base!r} took over {LOAD_CHECK_TIMEOUT_S}s; check the base."
        ) from exc
    lines = proc.stdout.strip().splitlines()
    result = (
        json.loads(lines[-1]) if lines and lines[-1].startswith("{") else {"ok": False, "error": proc.stderr[-600:]}
    )
    if not result.get("ok"):
        raise InvalidInput(
            f"The adapter at {path} does not load on base {base!r}: {result.get('error')}. "
            "Pass the base it was trained on (--base, a local model folder or a cached hub id)."
        )
    return result


def register_adapter(
    store: Store,
    path: Annotated[
        str | Path,
        Field(
            description="Folder of a PEFT adapter on this machine (adapter_config.json + weights), "
            "e.g. Unsloth, Axolotl or LLaMA-Factory output."
        ),
    ],
    role: Annotated[str, Field(description="The role it serves: coder, fixer, judge, ...")],
    base: Annotated[
        str | None,
        Field(
            description="Its base model (local folder or cached hub id); default: "
            "base_model_name_or_path from adapter_config.json."
        ),
    ] = None,
    *,
    adapter_id: str | None = None,
    task_type: Annotated[str | None, Field(description="Route it to this task type only.")] = None,
    complexity: Annotated[str | None, Field(description="Route it to this complexity only.")] = None,
    dataset_id: Annotated[str | None, Field(description="A learnloop dataset to evaluate it on by default.")] = None,
    actor: str = "learnloop",
    load_check: bool = True,
) -> registry.Adapter:
    """Bring an adapter trained elsewhere into the registry as 'trained', after checking that it
    loads on its base (takes seconds to minutes: the base is loaded in a separate process).
    Then evaluate_adapter and promote treat it like any other. The files are copied to adapters/<id>/.

    The load check starts a process that imports torch and loads the base (seconds for a small
    model, longer for a large one); it never runs in the server's own process."""
    safe_id(role, "role")
    adapter_id = safe_id(adapter_id or f"{registry.new_adapter_id(role)}-{secrets.token_hex(2)}", "adapter id")
    if adapter_row(store, adapter_id) is not None:
        raise Conflict(f"Adapter {adapter_id} already exists; choose another id.")
    if dataset_id is not None:
        recorded_dataset(store, dataset_id)  # an id the store holds, or NotFound
    src = Path(path).expanduser().resolve()
    if src.is_dir() and (links := links_in(src, _ignored)):
        raise InvalidInput(
            f"The adapter folder {src} holds symbolic links, which learnloop does not copy or follow: "
            f"{', '.join(shown(link) for link in links[:5])}{' ...' if len(links) > 5 else ''}. "
            "Replace each with the file itself, or register a copy of the folder without them."
        )
    config = inspect_adapter_folder(src)
    base = base or config.get("base_model_name_or_path")
    if not base:
        raise InvalidInput(f"{src}/adapter_config.json names no base model; pass the base (--base).")
    if base.startswith((".", "/", "~")) and not Path(base).expanduser().exists():
        raise InvalidInput(f"No base model folder {base}; pass the base the adapter was trained on (--base).")
    loaded = check_loads(base, src) if load_check else {}
    dest = subdir(store.home, "adapters") / adapter_id
    shutil.copytree(src, dest, symlinks=True, ignore=shutil.ignore_patterns(*IGNORED))  # a link stays a link
    lora = {k: config.get(k) for k in ("peft_type", "r", "lora_alpha", "target_modules", "task_type")}
    try:
        return registry.create_adapter(
            store,
            adapter_id,
            role,
            base,
            str(dest),
            status="trained",
            task_type=task_type,
            complexity=complexity,
            dataset_id=dataset_id,
            method="external",
            source="registered",
            actor=actor,
            reason=f"registered from {src}",
            params={"lora": lora, "registered_from": str(src), "load_check": loaded},
        )
    except LearnloopError:
        shutil.rmtree(dest, ignore_errors=True)
        raise


def load_check_main(argv: list[str]) -> int:
    """`load_check_main([base, adapter_folder])`: load the adapter on the base, run one forward
    pass, print one JSON line {"ok", "error", "lora_modules", "params"}."""
    import warnings

    base, folder = argv
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model, tok = load_model(base, folder)
        missing = [str(w.message) for w in caught if "missing adapter keys" in str(w.message)]
        if missing:
            raise ValueError(missing[0][:300])
        import torch

        ids = torch.tensor([tok("def f():")["input_ids"]], device=next(model.parameters()).device)
        with torch.inference_mode():
            logits = model(input_ids=ids).logits
        if not torch.isfinite(logits).all():
            raise ValueError("the adapter gives non-finite logits")
        lora = sum(1 for n, _ in model.named_modules() if n.endswith("lora_A"))
        print(json.dumps({"ok": True, "lora_modules": lora, "params": sum(p.numel() for p in model.parameters())}))
    except Exception as exc:  # noqa: BLE001 - any loading failure is the answer
        print(json.dumps({"ok": False, "error": f"{type(exc).__name__}: {str(exc)[:400]}"}))
    return 0
