"""Deploy adapters to the runtimes people serve with, and keep each route's runtime in step.

- Ollama: upload the exported GGUF as a blob, POST /api/create a model named per adapter
  version (learnloop-<adapter id>) from the base, with the Modelfile's template, system and
  parameters; confirm it is listed by GET /api/tags.
- vLLM: POST /v1/load_lora_adapter with a new name per version (same-name reloads can reuse
  stale prefix-cache blocks), confirm through GET /v1/models, unload the version it replaces.
- llama.cpp server: adapters load only at start (`llama-server -m base.gguf --lora a.gguf`),
  so learnloop writes that command; when the server runs with the adapter loaded, it sets the
  scales through POST /lora-adapters (1 for this adapter, 0 for the one it replaces).

A deployment is recorded only after the runtime confirmed it; a failure records nothing and
says why (unreachable URL, or the runtime's own error message). Each runtime's HTTP calls are in
learning/serve/runtimes.py; this module chooses what to replace and records the deployments.
"""

from __future__ import annotations

import secrets
import sqlite3
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

if TYPE_CHECKING:  # httpx loads with the first deployment, not with the server
    import httpx
from pydantic import BaseModel, Field

from learning.clock import iso, stamp
from learning.errors import InvalidInput
from learning.home import safe_id
from learning.params import CLI_ONLY, Complexity, Role, TaskType
from learning.registry.adapters import get_adapter
from learning.serve.modelfile import plain_value
from learning.serve.runtimes import (
    command_value,
    deploy_llamacpp,
    deploy_ollama,
    deploy_vllm,
    open_client,
    retire,
    served_name,
)
from learning.store import Store

Target = Literal["ollama", "vllm", "llamacpp"]
TARGETS = ("ollama", "vllm", "llamacpp")
DEFAULT_URLS = {
    "ollama": "http://127.0.0.1:11434",
    "vllm": "http://127.0.0.1:8000",
    "llamacpp": "http://127.0.0.1:8080",
}


class Deployment(BaseModel):
    id: str | None = Field(
        description="Deployment id in the store; None when nothing was recorded (llama.cpp command only)."
    )
    adapter_id: str
    target: Target
    url: str
    served_name: str = Field(
        description="The name requests use: the Ollama/vLLM model name, or 'lora:<id>' for llama.cpp."
    )
    created: str | None
    status: str = Field(description="active (confirmed by the runtime) or command_written (llama.cpp, not contacted).")
    artifact: str = Field(description="What the runtime loads: the GGUF file or the PEFT folder.")
    command: list[str] | None = Field(
        default=None, description="llama.cpp: the llama-server command line that loads the adapter."
    )
    replaced: list[str] = Field(
        default_factory=list, description="Served names this deployment replaced on the runtime."
    )
    messages: list[str] = Field(default_factory=list)


class DeployTarget(BaseModel):
    role: str
    task_type: str | None
    complexity: str | None
    target: Target
    url: str


# ---- the entry points ---------------------------------------------------------------------------


def deploy_adapter(
    store: Store,
    adapter_id: Annotated[str, Field(description="The adapter to serve.")],
    target: Annotated[Literal["ollama", "vllm", "llamacpp"], Field(description="The runtime.")],
    url: Annotated[
        str | None,
        Field(
            description="Runtime URL (CLI only). Default: the URL set for the adapter's route with "
            "`learnloop deploy-target` when its runtime is this target, else this machine's "
            "(ollama 127.0.0.1:11434, vllm 127.0.0.1:8000); llamacpp with neither only writes "
            "the llama-server command line.",
            json_schema_extra=CLI_ONLY,
        ),
    ] = None,
    base_gguf: Annotated[str | None, Field(description="llamacpp: the base model GGUF for the command line.")] = None,
    from_model: Annotated[
        str | None, Field(description="ollama: the base as Ollama names it (default: the adapter's base).")
    ] = None,
) -> Deployment:
    """Serve an adapter: Ollama (create model learnloop-<id>), vLLM (load LoRA learnloop-<id>,
    unload the version it replaces) or a llama.cpp server (set its scale). Recorded only after
    the runtime confirmed it; on failure nothing is recorded and the error says why.

    Active deployments of the same route on the same runtime are replaced (vLLM: unloaded;
    llama.cpp: scale 0; Ollama: the old model stays available, marked replaced)."""
    if target not in TARGETS:
        raise InvalidInput(f"Unknown target {target!r}; use one of {', '.join(TARGETS)}.")
    if base_gguf is not None:
        command_value(base_gguf, "base_gguf")
    if from_model is not None:
        plain_value(from_model, "from_model")
    adapter = get_adapter(store, adapter_id)
    if url is None:  # where the person said this route is served, if on this runtime
        configured = deploy_target_row(store, adapter.role, adapter.task_type, adapter.complexity)
        url = configured["url"] if configured is not None and configured["target"] == target else None
    contact = url is not None or target != "llamacpp"
    url = (url or DEFAULT_URLS[target]).rstrip("/")
    old = [
        d
        for d in active_deployment_rows(store, target, url)
        if (d["role"], d["task_type"], d["complexity"]) == (adapter.role, adapter.task_type, adapter.complexity)
    ]
    client = open_client(url) if contact else None
    try:
        done = _serve_on_runtime(client, store, target, adapter_id, old, base_gguf, from_model)
        if client is None:
            return _command_written(adapter_id, target, url, done)
        messages, retired = retire(client, target, [d for d in old if d["served_name"] != done["served_name"]])
    finally:
        if client is not None:
            client.close()
    return _record(store, adapter_id, target, url, done, old, messages, retired)


def _serve_on_runtime(
    client: httpx.Client | None,
    store: Store,
    target: str,
    adapter_id: str,
    old: list,
    base_gguf: str | None,
    from_model: str | None,
) -> dict:
    """The runtime's part: load the adapter there and confirm it (llama.cpp without a client:
    only write the command line)."""
    if target == "llamacpp":
        old_paths = [str(Path(store.home, "exports", d["adapter_id"], "gguf", "adapter.gguf")) for d in old]
        return deploy_llamacpp(client, store, adapter_id, base_gguf, old_paths)
    assert client is not None  # Ollama and vLLM are always contacted
    name = served_name(adapter_id)
    if target == "ollama":
        return deploy_ollama(client, store, adapter_id, name, from_model)
    return deploy_vllm(client, store, adapter_id, name)


def _command_written(adapter_id: str, target: Target, url: str, done: dict) -> Deployment:
    """llama.cpp without a URL: the command line is written, nothing is recorded."""
    return Deployment(
        id=None,
        adapter_id=adapter_id,
        target=target,
        url=url,
        served_name=done["served_name"],
        created=None,
        status="command_written",
        artifact=done["artifact"],
        command=done["command"],
        messages=[
            "Start llama-server with this command, then deploy again with its URL (--url, or set "
            "once with `learnloop deploy-target`) to set its scales and record the deployment."
        ],
    )


def _record(
    store: Store,
    adapter_id: str,
    target: Target,
    url: str,
    done: dict,
    old: list,
    messages: list[str],
    retired: dict[str, str],
) -> Deployment:
    """Record the confirmed deployment and mark the ones of its route it replaced, in one transaction."""
    dep_id = f"dep-{stamp()}-{secrets.token_hex(3)}"
    with store.write() as conn:
        for d in old:  # an older row of this very name is superseded by the new one
            set_deployment_status(conn, d["id"], retired.get(d["id"], "replaced"))
        insert_deployment(conn, dep_id, adapter_id, target, url, done["served_name"])
    row = latest_deployment(store, adapter_id)
    assert row is not None  # the deployment just inserted
    return Deployment(
        id=dep_id,
        adapter_id=adapter_id,
        target=target,
        url=url,
        served_name=done["served_name"],
        created=iso(row["created"]),
        status="active",
        artifact=done["artifact"],
        command=done.get("command"),
        replaced=[d["served_name"] for d in old if d["served_name"] != done["served_name"]],
        messages=messages,
    )


def set_deploy_target(
    store: Store,
    role: Role,
    target: Annotated[
        Literal["ollama", "vllm", "llamacpp", "none"] | None,
        Field(description="The runtime that serves the route; none stops keeping it deployed."),
    ],
    url: Annotated[
        str | None, Field(description="Runtime URL; defaults: ollama :11434, vllm :8000; llamacpp needs one.")
    ] = None,
    task_type: TaskType = None,
    complexity: Complexity = None,
) -> DeployTarget | None:
    """Keep a route deployed on a runtime: promote and rollback then put the adapter that is about
    to serve the route on it first (and retire the old one there). target none stops."""
    safe_id(role, "role")
    target = None if target == "none" else target
    if target is not None and target not in TARGETS:
        raise InvalidInput(f"Unknown target {target!r}; use one of {', '.join(TARGETS)}.")
    if target == "llamacpp" and not url:
        raise InvalidInput("A llama.cpp target needs the server's --url (its adapters are set through /lora-adapters).")
    if target is None:
        write_deploy_target(store, role, task_type, complexity, None, None)
        return None
    url = (url or DEFAULT_URLS[target]).rstrip("/")
    write_deploy_target(store, role, task_type, complexity, target, url)
    return DeployTarget(role=role, task_type=task_type, complexity=complexity, target=target, url=url)


def list_deploy_targets(store: Store) -> list[DeployTarget]:
    return [
        DeployTarget(
            role=r["role"], task_type=r["task_type"], complexity=r["complexity"], target=r["target"], url=r["url"]
        )
        for r in deploy_target_rows(store)
    ]


# ---- SQL: the deployments and deploy_targets tables ---------------------------------------------


def insert_deployment(
    conn: sqlite3.Connection,
    deployment_id: str,
    adapter_id: str,
    target: str,
    url: str,
    served_name: str,
    status: str = "active",
) -> None:
    conn.execute(
        "INSERT INTO deployments (id, adapter_id, target, url, served_name, created, status) VALUES (?, ?, ?, ?, ?, ?, ?)",
        (deployment_id, adapter_id, target, url, served_name, time.time(), status),
    )


def set_deployment_status(conn: sqlite3.Connection, deployment_id: str, status: str) -> None:
    conn.execute("UPDATE deployments SET status = ? WHERE id = ?", (status, deployment_id))


def latest_deployment(store: Store, adapter_id: str, conn: sqlite3.Connection | None = None) -> sqlite3.Row | None:
    """The newest deployment of an adapter that is not failed or removed."""
    sql = (
        "SELECT * FROM deployments WHERE adapter_id = ? AND status NOT IN ('failed', 'removed') "
        "ORDER BY created DESC LIMIT 1"
    )
    with store.read() as c:
        return (conn or c).execute(sql, (adapter_id,)).fetchone()


def active_deployment_rows(store: Store, target: str, url: str) -> list[sqlite3.Row]:
    """Active deployments on one runtime, with their adapter's route."""
    with store.read() as conn:
        return conn.execute(
            "SELECT d.*, a.role, a.task_type, a.complexity FROM deployments d JOIN adapters a ON a.id = d.adapter_id "
            "WHERE d.target = ? AND d.url = ? AND d.status = 'active' ORDER BY d.created",
            (target, url),
        ).fetchall()


def write_deploy_target(
    store: Store, role: str, task_type: str | None, complexity: str | None, target: str | None, url: str | None
) -> None:
    """Set (or, with target None, clear) the runtime a route is deployed to."""
    with store.write() as conn:
        conn.execute(
            "DELETE FROM deploy_targets WHERE role = ? AND ifnull(task_type, '') = ifnull(?, '') "
            "AND ifnull(complexity, '') = ifnull(?, '')",
            (role, task_type, complexity),
        )
        if target is not None:
            conn.execute(
                "INSERT INTO deploy_targets (role, task_type, complexity, target, url, updated) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (role, task_type, complexity, target, url, time.time()),
            )


def deploy_target_row(store: Store, role: str, task_type: str | None, complexity: str | None) -> sqlite3.Row | None:
    with store.read() as conn:
        return conn.execute(
            "SELECT * FROM deploy_targets WHERE role = ? AND ifnull(task_type, '') = ifnull(?, '') "
            "AND ifnull(complexity, '') = ifnull(?, '')",
            (role, task_type, complexity),
        ).fetchone()


def deploy_target_rows(store: Store) -> list[sqlite3.Row]:
    with store.read() as conn:
        return conn.execute("SELECT * FROM deploy_targets ORDER BY role, task_type, complexity").fetchall()
