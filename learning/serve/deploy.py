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
says why (unreachable URL, or the runtime's own error message).
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import sqlite3
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

if TYPE_CHECKING:  # httpx loads with the first deployment, not with the server
    import httpx
from pydantic import BaseModel, Field

from learning.clock import iso, stamp
from learning.errors import Conflict, InvalidInput
from learning.params import Complexity, Role, TaskType
from learning.registry.adapters import get_adapter
from learning.serve.export import export_adapter
from learning.store import Store

Target = Literal["ollama", "vllm", "llamacpp"]
TARGETS = ("ollama", "vllm", "llamacpp")
DEFAULT_URLS = {
    "ollama": "http://127.0.0.1:11434",
    "vllm": "http://127.0.0.1:8000",
    "llamacpp": "http://127.0.0.1:8080",
}
TIMEOUT = 10.0  # seconds to wait for an answer (connecting: CONNECT_TIMEOUT)
SLOW = 300.0  # blob upload and create (the base may be read from disk)
CONNECT_TIMEOUT = 3.0


def _timeout(seconds: float) -> httpx.Timeout:
    import httpx

    return httpx.Timeout(seconds, connect=CONNECT_TIMEOUT)


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


def served_name(adapter_id: str) -> str:
    return f"learnloop-{adapter_id}".lower()


# ---- HTTP with clear errors -------------------------------------------------------------------


def _call(
    client: httpx.Client, method: str, path: str, runtime: str, allow: tuple[int, ...] = (), **kwargs: Any
) -> httpx.Response:
    """One request; an unreachable runtime or an error answer becomes a Conflict naming the cause."""
    import httpx

    try:
        response = client.request(method, path, **kwargs)
    except httpx.TimeoutException as exc:
        raise Conflict(
            f"{runtime} at {client.base_url} did not answer {method} {path} in time ({exc!s}); "
            "check that it is running and not overloaded. Nothing was recorded."
        ) from exc
    except httpx.HTTPError as exc:
        raise Conflict(
            f"Cannot reach {runtime} at {client.base_url} ({exc!s}); start it or pass the right --url. "
            "Nothing was recorded."
        ) from exc
    if response.status_code >= 400 and response.status_code not in allow:
        raise Conflict(
            f"{runtime} answered HTTP {response.status_code} to {method} {path}: {_error_text(response)}. "
            "Nothing was recorded."
        )
    return response


def _error_text(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:300] or response.reason_phrase
    if isinstance(body, dict):
        err = body.get("error") or body.get("message") or body.get("detail")
        if isinstance(err, dict):
            err = err.get("message") or json.dumps(err)
        if err:
            return str(err)[:300]
    return json.dumps(body)[:300]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


# ---- the three runtimes ---------------------------------------------------------------------


def _deploy_ollama(client: httpx.Client, store: Store, adapter_id: str, name: str, from_model: str | None) -> dict:
    exported = export_adapter(store, adapter_id, "ollama", from_model=from_model)
    folder = Path(exported.out_dir)
    spec = json.loads((folder / "ollama.json").read_text())
    gguf_path = folder / spec["adapter_file"]
    digest = "sha256:" + _sha256(gguf_path)
    if _call(client, "HEAD", f"/api/blobs/{digest}", "Ollama", allow=(404,)).status_code != 200:
        with open(gguf_path, "rb") as handle:
            _call(client, "POST", f"/api/blobs/{digest}", "Ollama", content=handle, timeout=_timeout(SLOW))
    body = {
        "model": name,
        "from": spec["from"],
        "adapters": {spec["adapter_file"]: digest},
        "template": spec["template"],
        "parameters": spec["parameters"],
        "stream": False,
    }
    if spec.get("system"):
        body["system"] = spec["system"]
    answer = _call(client, "POST", "/api/create", "Ollama", json=body, timeout=_timeout(SLOW)).json()
    if isinstance(answer, dict) and answer.get("error"):
        raise Conflict(f"Ollama refused to create {name}: {answer['error']}. Nothing was recorded.")
    listed = {m.get("name") for m in _call(client, "GET", "/api/tags", "Ollama").json().get("models", [])}
    if name not in listed and f"{name}:latest" not in listed:
        raise Conflict(f"Ollama accepted {name} but does not list it in /api/tags. Nothing was recorded.")
    return {"artifact": str(gguf_path), "served_name": name}


def _deploy_vllm(client: httpx.Client, store: Store, adapter_id: str, name: str) -> dict:
    exported = export_adapter(store, adapter_id, "peft")
    try:
        _call(client, "POST", "/v1/load_lora_adapter", "vLLM", json={"lora_name": name, "lora_path": exported.out_dir})
    except Conflict as exc:
        if "already" not in str(exc):  # this very version already loaded: confirmed below
            raise
    models = {m.get("id") for m in _call(client, "GET", "/v1/models", "vLLM").json().get("data", [])}
    if name not in models:
        raise Conflict(f"vLLM accepted {name} but does not list it in /v1/models. Nothing was recorded.")
    return {"artifact": exported.out_dir, "served_name": name}


def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.abspath(a) == os.path.abspath(b)


def _deploy_llamacpp(
    client: httpx.Client | None, store: Store, adapter_id: str, base_gguf: str | None, replaced_paths: list[str]
) -> dict:
    exported = export_adapter(store, adapter_id, "gguf")
    gguf_path = str(Path(exported.out_dir) / "adapter.gguf")
    command = ["llama-server", "-m", base_gguf or "BASE.gguf", "--lora", gguf_path]
    (Path(exported.out_dir) / "llama-server.txt").write_text(" ".join(command) + "\n")
    if client is None:
        return {"artifact": gguf_path, "command": command, "served_name": served_name(adapter_id)}
    loaded = _call(client, "GET", "/lora-adapters", "llama.cpp server").json()
    ours = next((a for a in loaded if _same_file(a.get("path", ""), gguf_path)), None)
    if ours is None:
        raise Conflict(
            f"The llama.cpp server at {client.base_url} has not loaded {gguf_path} (adapters load only "
            f"at start). Restart it with: {' '.join(command)} and deploy again. Nothing was recorded."
        )
    scales = [{"id": ours["id"], "scale": 1.0}] + [
        {"id": a["id"], "scale": 0.0}
        for a in loaded
        if a is not ours and any(_same_file(a.get("path", ""), p) for p in replaced_paths)
    ]
    _call(client, "POST", "/lora-adapters", "llama.cpp server", json=scales)
    now = {a["id"]: a.get("scale") for a in _call(client, "GET", "/lora-adapters", "llama.cpp server").json()}
    if now.get(ours["id"]) != 1.0:
        raise Conflict(
            f"The llama.cpp server did not take scale 1.0 for adapter id {ours['id']}. Nothing was recorded."
        )
    return {"artifact": gguf_path, "command": command, "served_name": f"lora:{ours['id']}"}


# ---- the entry points ---------------------------------------------------------------------------


def deploy_adapter(
    store: Store,
    adapter_id: Annotated[str, Field(description="The adapter to serve.")],
    target: Annotated[Literal["ollama", "vllm", "llamacpp"], Field(description="The runtime.")],
    url: Annotated[
        str | None,
        Field(
            description="Runtime URL; defaults: ollama :11434, vllm :8000. llamacpp without "
            "a URL only writes the llama-server command line."
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
    adapter = get_adapter(store, adapter_id)
    contact = url is not None or target != "llamacpp"
    url = (url or DEFAULT_URLS[target]).rstrip("/")
    old = [
        d
        for d in active_deployment_rows(store, target, url)
        if (d["role"], d["task_type"], d["complexity"]) == (adapter.role, adapter.task_type, adapter.complexity)
    ]
    name = served_name(adapter_id)
    import httpx

    client = httpx.Client(base_url=url, timeout=_timeout(TIMEOUT)) if contact else None
    try:
        if target == "llamacpp":
            old_paths = [str(Path(store.home, "exports", d["adapter_id"], "gguf", "adapter.gguf")) for d in old]
            done = _deploy_llamacpp(client, store, adapter_id, base_gguf, old_paths)
        else:
            assert client is not None  # Ollama and vLLM are always contacted
            if target == "ollama":
                done = _deploy_ollama(client, store, adapter_id, name, from_model)
            else:
                done = _deploy_vllm(client, store, adapter_id, name)
        if client is None:
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
                    "Start llama-server with this command, then deploy again with --url to set "
                    "its scales and record the deployment."
                ],
            )
        messages, retired = _retire(client, target, [d for d in old if d["served_name"] != done["served_name"]])
    finally:
        if client is not None:
            client.close()
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


def _retire(client: httpx.Client, target: str, old: list) -> tuple[list[str], dict[str, str]]:
    """Take out what the new deployment replaces: vLLM unloads it, llama.cpp already set its
    scale to 0 (both 'removed'); Ollama keeps the model ('replaced'). Failures are reported."""
    messages, status = [], {}
    for d in old:
        if target == "vllm":
            try:
                _call(client, "POST", "/v1/unload_lora_adapter", "vLLM", json={"lora_name": d["served_name"]})
                messages.append(f"unloaded {d['served_name']}")
                status[d["id"]] = "removed"
            except Conflict as exc:
                messages.append(f"could not unload {d['served_name']}: {exc}")
        elif target == "llamacpp":
            status[d["id"]] = "removed"
        else:
            messages.append(
                f"{d['served_name']} stays in Ollama (marked replaced); remove it with `ollama rm` if unwanted"
            )
    return messages, status


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
