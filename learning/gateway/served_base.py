"""Which base the in-process gateway loads: the one its adapters were trained on.

An adapter loads only on the base it was trained on (another base's layers have other shapes:
PEFT's "size mismatch", a 502 on every request it serves). The adapters the gateway routes to
are the production adapters and the candidates of running experiments; each records its base in
the registry (`base_model`: the folder or hub id it was trained on). So, checked at start from
those records alone (no model is loaded, no weight read):

- `--base` given: it is loaded, and start-up is refused when a routed adapter was trained on
  another base;
- no `--base`: the routed adapters' base, refused when they were trained on different bases;
- nothing routed to: the embedded small base, train_adapter's default, so the adapters trained
  without `--base` load on the base the gateway already serves once they are promoted.
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import BaseModel, Field

from learning.errors import Conflict, InvalidInput
from learning.models.gguf_base import find_imported
from learning.registry.adapters import Adapter, get_adapter, list_adapters
from learning.routing.experiments import list_experiments
from learning.store import Store
from learning.train.checks import EMBEDDED_PREFIX
from learning.train.launch import DEFAULT_BASE


class ServedBase(BaseModel):
    base: str = Field(description="What the in-process backend loads: a folder or a hub id.")
    reason: str = Field(description="Why this base, in words.")
    adapters: list[str] = Field(default_factory=list, description="The routed adapters trained on it.")


def served_base(store: Store, base: str | None = None, log=None) -> ServedBase:
    """The base the in-process gateway serves; Conflict when a routed adapter cannot load on it."""
    routed = routed_adapters(store)
    if base is not None:
        chosen = resolve_base(store, base, log)
        wrong = [a for a in routed if identity(a.base_model) != identity(chosen)]
        if wrong:
            raise Conflict(
                f"--base {base} is not the base these adapters were trained on, so none of them could load on "
                f"it: {_listed(wrong)}. Start the gateway without --base: it serves the base they were trained on."
            )
        return ServedBase(base=chosen, reason="--base", adapters=[a.id for a in routed])
    by_base: dict[str, list[Adapter]] = {}
    for a in routed:
        by_base.setdefault(identity(a.base_model), []).append(a)
    if len(by_base) > 1:
        raise Conflict(
            "The adapters the gateway routes to were trained on different bases, and one gateway serves one "
            f"base: {_listed(routed)}. Take the ones on the other base out of routing (learnloop promote ID "
            "--to archived, learnloop rollback, learnloop experiment stop), then start it again; --base does "
            "not help: it refuses every adapter trained on another base."
        )
    if by_base:
        adapters = next(iter(by_base.values()))
        recorded = adapters[0].base_model
        if os.path.isabs(recorded) and not Path(recorded).is_dir():
            raise Conflict(
                f"{_listed(adapters)}: trained on {recorded}, which is not there any more, so the gateway "
                "cannot load it. Put that base back at that path, or take those adapters out of routing "
                "(learnloop promote ID --to archived) and start again; --base names the base to serve."
            )
        return ServedBase(
            base=identity(recorded),
            reason="the base the routed adapters were trained on",
            adapters=[a.id for a in adapters],
        )
    return ServedBase(
        base=resolve_base(store, DEFAULT_BASE, log),
        reason=f"no adapter routed yet: {DEFAULT_BASE}, the base train_adapter uses without --base",
    )


def routed_adapters(store: Store) -> list[Adapter]:
    """The adapters the router may choose: production ones and running experiments' candidates."""
    found = {a.id: a for a in list_adapters(store, status="production")}
    for experiment in list_experiments(store):
        if experiment.status == "running" and experiment.candidate_id not in found:
            found[experiment.candidate_id] = get_adapter(store, experiment.candidate_id)
    return list(found.values())


def resolve_base(store: Store, base: str, log=None) -> str:
    """A base as train_adapter takes it (a folder, a hub id, embedded:<size>, an imported GGUF base's
    id or file) as the folder or hub id training records and the backend loads."""
    if base.startswith(EMBEDDED_PREFIX):
        from learning.models.tinybase import base_dir, ensure_base, read_info

        size = base.removeprefix(EMBEDDED_PREFIX)
        if log is not None and read_info(base_dir(store.home, size)) is None:
            log(f"building the embedded {size} base, once (about a minute or two on a CPU)")
        return ensure_base(store, size, log=log).path
    if Path(base).expanduser().is_dir():
        return str(Path(base).expanduser().resolve())
    folder, problem = find_imported(store.home, base)
    if problem:
        raise InvalidInput(problem)
    return str(folder) if folder is not None else base


def identity(base: str) -> str:
    """A base as recorded, comparable: a folder by its resolved path, a hub id as it is."""
    path = Path(base).expanduser()
    return str(path.resolve()) if path.is_dir() or path.is_absolute() else base


def _listed(adapters: list[Adapter]) -> str:
    return "; ".join(f"{a.id} ({a.role}, {a.status}) on {a.base_model}" for a in adapters)
