"""The three runtimes' HTTP calls: what deploying one adapter on Ollama, vLLM or a llama.cpp
server sends and checks, and how the version it replaces is retired there.

Every request goes through `call`, which turns an unreachable runtime or an error answer
into a Conflict naming the cause. Recording a deployment is learning/serve/deploy.py's job.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # httpx loads with the first deployment, not with the server
    import httpx

from learning.errors import Conflict, InvalidInput, shown
from learning.models.gguf_base import gguf_origin
from learning.registry.adapters import get_adapter
from learning.serve.export import export_adapter, resolve_base
from learning.serve.modelfile import controls
from learning.serve.served import LLAMACPP_TEMPLATE
from learning.store import Store

TIMEOUT = 10.0  # seconds to wait for an answer (connecting: CONNECT_TIMEOUT)
SLOW = 300.0  # blob upload and create (the base may be read from disk)
CONNECT_TIMEOUT = 3.0


def _timeout(seconds: float) -> httpx.Timeout:
    import httpx

    return httpx.Timeout(seconds, connect=CONNECT_TIMEOUT)


def open_client(url: str) -> httpx.Client:
    """A client for one runtime, with the usual timeouts."""
    import httpx

    return httpx.Client(base_url=url, timeout=_timeout(TIMEOUT))


def served_name(adapter_id: str) -> str:
    return f"learnloop-{adapter_id}".lower()


# ---- HTTP with clear errors -------------------------------------------------------------------


def call(
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


def _blob(client: httpx.Client, path: Path) -> str:
    """Upload a file to Ollama's blob store unless it holds it already; its digest."""
    digest = "sha256:" + _sha256(path)
    if call(client, "HEAD", f"/api/blobs/{digest}", "Ollama", allow=(404,)).status_code != 200:
        with open(path, "rb") as handle:
            call(client, "POST", f"/api/blobs/{digest}", "Ollama", content=handle, timeout=_timeout(SLOW))
    return digest


# ---- the three runtimes ---------------------------------------------------------------------


def deploy_ollama(client: httpx.Client, store: Store, adapter_id: str, name: str, from_model: str | None) -> dict:
    exported = export_adapter(store, adapter_id, "ollama", from_model=from_model)
    folder = Path(exported.out_dir)
    spec = json.loads((folder / "ollama.json").read_text())
    gguf_path = folder / spec["adapter_file"]
    digest = _blob(client, gguf_path)
    # A base imported from a GGUF: Ollama's API takes the file itself as a blob, not its path.
    base_file = Path(spec["from"]) if spec["from"].endswith(".gguf") and Path(spec["from"]).is_file() else None
    base = {"files": {base_file.name: _blob(client, base_file)}} if base_file else {"from": spec["from"]}
    body = {
        "model": name,
        **base,
        "adapters": {spec["adapter_file"]: digest},
        "template": spec["template"],
        "parameters": spec["parameters"],
        "stream": False,
    }
    if spec.get("system"):
        body["system"] = spec["system"]
    answer = call(client, "POST", "/api/create", "Ollama", json=body, timeout=_timeout(SLOW)).json()
    if isinstance(answer, dict) and answer.get("error"):
        raise Conflict(f"Ollama refused to create {name}: {answer['error']}. Nothing was recorded.")
    listed = {m.get("name") for m in call(client, "GET", "/api/tags", "Ollama").json().get("models", [])}
    if name not in listed and f"{name}:latest" not in listed:
        raise Conflict(f"Ollama accepted {name} but does not list it in /api/tags. Nothing was recorded.")
    return {"artifact": str(gguf_path), "served_name": name}


def deploy_vllm(client: httpx.Client, store: Store, adapter_id: str, name: str) -> dict:
    exported = export_adapter(store, adapter_id, "peft")
    try:
        call(client, "POST", "/v1/load_lora_adapter", "vLLM", json={"lora_name": name, "lora_path": exported.out_dir})
    except Conflict as exc:
        if "already" not in str(exc):  # this very version already loaded: confirmed below
            raise
    models = {m.get("id") for m in call(client, "GET", "/v1/models", "vLLM").json().get("data", [])}
    if name not in models:
        raise Conflict(f"vLLM accepted {name} but does not list it in /v1/models. Nothing was recorded.")
    return {"artifact": exported.out_dir, "served_name": name}


def command_value(value: str, field: str) -> str:
    """A value that becomes one argument of a command line a person runs: one line, no control
    characters, and not an option (a leading '-'). Written with shell quoting."""
    bad = controls(value)
    if bad or not value.strip() or value.startswith("-"):
        why = f"control characters {', '.join(bad)}" if bad else "a leading '-'" if value.strip() else "nothing"
        raise InvalidInput(f"{field} {shown(value)} cannot go on the llama-server command line: it holds {why}.")
    return value


def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.abspath(a) == os.path.abspath(b)


def deploy_llamacpp(
    client: httpx.Client | None, store: Store, adapter_id: str, base_gguf: str | None, replaced_paths: list[str]
) -> dict:
    exported = export_adapter(store, adapter_id, "gguf")
    gguf_path = str(Path(exported.out_dir) / "adapter.gguf")
    base_gguf = base_gguf or gguf_origin(resolve_base(get_adapter(store, adapter_id))) or "BASE.gguf"
    command = ["llama-server", "-m", command_value(base_gguf, "base_gguf"), "--lora", gguf_path]
    template = Path(exported.out_dir) / LLAMACPP_TEMPLATE
    if template.exists():  # the chat template training used, rendered by llama-server itself
        command += ["--jinja", "--chat-template-file", str(template)]
    (Path(exported.out_dir) / "llama-server.txt").write_text(shlex.join(command) + "\n")
    if client is None:
        return {"artifact": gguf_path, "command": command, "served_name": served_name(adapter_id)}
    loaded = call(client, "GET", "/lora-adapters", "llama.cpp server").json()
    ours = next((a for a in loaded if _same_file(a.get("path", ""), gguf_path)), None)
    if ours is None:
        raise Conflict(
            f"The llama.cpp server at {client.base_url} has not loaded {gguf_path} (adapters load only "
            f"at start). Restart it with: {shlex.join(command)} and deploy again. Nothing was recorded."
        )
    scales = [{"id": ours["id"], "scale": 1.0}] + [
        {"id": a["id"], "scale": 0.0}
        for a in loaded
        if a is not ours and any(_same_file(a.get("path", ""), p) for p in replaced_paths)
    ]
    call(client, "POST", "/lora-adapters", "llama.cpp server", json=scales)
    now = {a["id"]: a.get("scale") for a in call(client, "GET", "/lora-adapters", "llama.cpp server").json()}
    if now.get(ours["id"]) != 1.0:
        raise Conflict(
            f"The llama.cpp server did not take scale 1.0 for adapter id {ours['id']}. Nothing was recorded."
        )
    return {"artifact": gguf_path, "command": command, "served_name": f"lora:{ours['id']}"}


def retire(client: httpx.Client, target: str, old: list) -> tuple[list[str], dict[str, str]]:
    """Take out what the new deployment replaces: vLLM unloads it, llama.cpp already set its
    scale to 0 (both 'removed'); Ollama keeps the model ('replaced'). Failures are reported."""
    messages, status = [], {}
    for d in old:
        if target == "vllm":
            try:
                call(client, "POST", "/v1/unload_lora_adapter", "vLLM", json={"lora_name": d["served_name"]})
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
