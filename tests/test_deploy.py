"""Deploy: Ollama, vLLM and llama.cpp server, against local HTTP servers.

The servers below STAND IN FOR THE RUNTIMES: in-process threads on 127.0.0.1 that implement
the documented endpoints learnloop calls (Ollama: HEAD/POST /api/blobs/sha256:<digest>,
POST /api/create, GET /api/tags; vLLM: POST /v1/load_lora_adapter, /v1/unload_lora_adapter,
GET /v1/models; llama.cpp server: GET/POST /lora-adapters), check what they receive, and can
answer with errors. The adapters are real PEFT files (written with numpy, no torch needed).
"""

from __future__ import annotations

import hashlib
import json
import shlex
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import anyio
import numpy as np
import pytest
from safetensors.numpy import save_file

from learning.errors import Conflict, InvalidInput
from learning.registry.adapters import create_adapter
from learning.serve import deploy
from tests.conftest import run_cli, text_of

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


# ---- real adapter files, tiny ----------------------------------------------------------------


def _base(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(
        json.dumps(
            {
                "model_type": "llama",
                "architectures": ["LlamaForCausalLM"],
                "hidden_size": 32,
                "intermediate_size": 64,
                "num_hidden_layers": 2,
                "num_attention_heads": 4,
                "num_key_value_heads": 2,
                "vocab_size": 96,
            }
        )
    )
    (folder / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "chat_template": CHATML,
                "eos_token": "<|im_end|>",
                "added_tokens_decoder": {"0": {"content": "<|im_end|>"}},
            }
        )
    )
    return folder


def _peft(folder: Path, base: Path, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    shapes = {"q_proj": (32, 32), "k_proj": (16, 32), "v_proj": (16, 32), "o_proj": (32, 32)}
    tensors = {}
    for layer in range(2):
        for mod, (out, inp) in shapes.items():
            pre = f"base_model.model.model.layers.{layer}.self_attn.{mod}"
            tensors[f"{pre}.lora_A.weight"] = rng.standard_normal((4, inp)).astype(np.float32)
            tensors[f"{pre}.lora_B.weight"] = rng.standard_normal((out, 4)).astype(np.float32)
    folder.mkdir(parents=True)
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    (folder / "adapter_config.json").write_text(
        json.dumps(
            {
                "peft_type": "LORA",
                "r": 4,
                "lora_alpha": 8,
                "target_modules": list(shapes),
                "base_model_name_or_path": str(base),
            }
        )
    )
    return folder


@pytest.fixture
def adapters(store, tmp_path):
    base = _base(tmp_path / "base")
    for i, name in enumerate(("coder-a", "coder-b")):
        create_adapter(store, name, "coder", str(base), str(_peft(tmp_path / name, base, i)), status="candidate")
    return ["coder-a", "coder-b"]


# ---- stand-in runtimes ------------------------------------------------------------------------


class Runtime(ThreadingHTTPServer):
    """State shared by a stand-in's handlers; `fail` makes every POST answer 500."""

    def __init__(self, handler):
        super().__init__(("127.0.0.1", 0), handler)
        self.fail: str | None = None
        self.blobs: dict[str, bytes] = {}
        self.models: dict[str, dict] = {"qwen-base:latest": {}}
        self.loras: dict[str, str] = {}
        self.adapters: list[dict] = []
        self.requests: list[tuple[str, str, object]] = []
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_port}"


class Handler(BaseHTTPRequestHandler):
    server: Runtime

    def log_message(self, *args):
        pass

    def _send(self, code: int, body=None, text: str | None = None):
        data = text.encode() if text is not None else json.dumps(body).encode() if body is not None else b""
        self.send_response(code)
        self.send_header("Content-Type", "text/plain" if text is not None else "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def do_HEAD(self):
        digest = self.path.rsplit("/", 1)[-1]
        self._send(200 if digest in self.server.blobs else 404)


class Ollama(Handler):
    def do_POST(self):
        raw = self._body()
        self.server.requests.append(("POST", self.path, raw[:2000]))
        if self.server.fail:
            return self._send(500, {"error": self.server.fail})
        if self.path.startswith("/api/blobs/sha256:"):
            digest = self.path.rsplit("/", 1)[-1]
            if "sha256:" + hashlib.sha256(raw).hexdigest() != digest:
                return self._send(400, {"error": "digest mismatch"})
            self.server.blobs[digest] = raw
            return self._send(201)
        if self.path == "/api/create":
            req = json.loads(raw)
            if req["from"] not in self.server.models and req["from"] + ":latest" not in self.server.models:
                return self._send(404, {"error": f"model '{req['from']}' not found"})
            if any(d not in self.server.blobs for d in req.get("adapters", {}).values()):
                return self._send(400, {"error": "missing adapter blob"})
            self.server.models[req["model"] + ":latest"] = req
            return self._send(200, {"status": "success"})
        self._send(404, {"error": "not found"})

    def do_GET(self):
        if self.path == "/api/tags":
            return self._send(200, {"models": [{"name": n, "model": n} for n in self.server.models]})
        self._send(404, {"error": "not found"})


class VLLM(Handler):
    def do_POST(self):
        req = json.loads(self._body() or b"{}")
        if self.server.fail:
            return self._send(
                500, {"object": "error", "message": self.server.fail, "type": "InternalServerError", "code": 500}
            )
        if self.path == "/v1/load_lora_adapter":
            if req["lora_name"] in self.server.loras:
                return self._send(
                    400,
                    {
                        "object": "error",
                        "message": f"The lora adapter '{req['lora_name']}' has already been loaded.",
                        "type": "InvalidUserInput",
                        "code": 400,
                    },
                )
            if not (Path(req["lora_path"]) / "adapter_config.json").exists():
                return self._send(404, {"object": "error", "message": "No adapter found", "code": 404})
            self.server.loras[req["lora_name"]] = req["lora_path"]
            return self._send(200, text=f"Success: LoRA adapter '{req['lora_name']}' added successfully.")
        if self.path == "/v1/unload_lora_adapter":
            if self.server.loras.pop(req["lora_name"], None) is None:
                return self._send(
                    404, {"object": "error", "message": f"The lora adapter '{req['lora_name']}' cannot be found."}
                )
            return self._send(200, text=f"Success: LoRA adapter '{req['lora_name']}' removed successfully.")
        self._send(404, {"detail": "Not Found"})

    def do_GET(self):
        if self.path == "/v1/models":
            data = [{"id": "base", "object": "model"}] + [
                {"id": n, "object": "model", "parent": "base", "root": p} for n, p in self.server.loras.items()
            ]
            return self._send(200, {"object": "list", "data": data})
        self._send(404, {"detail": "Not Found"})


class LlamaServer(Handler):
    def do_GET(self):
        if self.path == "/lora-adapters":
            return self._send(200, self.server.adapters)
        self._send(404, {"error": {"code": 404, "message": "File Not Found"}})

    def do_POST(self):
        req = json.loads(self._body())
        if self.path == "/lora-adapters":
            for item in req:
                self.server.adapters[item["id"]]["scale"] = item["scale"]
            return self._send(200, {"success": True})
        self._send(404, {"error": {"code": 404, "message": "File Not Found"}})


@pytest.fixture
def runtime():
    made = []

    def start(handler):
        made.append(Runtime(handler))
        return made[-1]

    yield start
    for server in made:
        server.shutdown()
        server.server_close()


def _dead_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"  # closed when we return: nothing listens


# ---- tests ------------------------------------------------------------------------------------


def test_ollama_create_from_blob_and_listed(store, adapters, runtime):
    ollama = runtime(Ollama)
    dep = deploy.deploy_adapter(store, "coder-a", "ollama", ollama.url, from_model="qwen-base")
    assert dep.status == "active" and dep.served_name == "learnloop-coder-a" and dep.id is not None
    created = ollama.models["learnloop-coder-a:latest"]
    assert created["from"] == "qwen-base" and list(created["adapters"]) == ["adapter.gguf"]
    digest = created["adapters"]["adapter.gguf"]
    assert ollama.blobs[digest] == Path(dep.artifact).read_bytes()  # the verified GGUF itself
    assert "{{ .Content }}" in created["template"] and created["parameters"]["stop"] == ["<|im_end|>"]
    row = deploy.latest_deployment(store, "coder-a")
    assert row is not None
    assert (row["target"], row["url"], row["served_name"], row["status"]) == (
        "ollama",
        ollama.url,
        "learnloop-coder-a",
        "active",
    )


def _deployment(store, adapter_id):
    row = deploy.latest_deployment(store, adapter_id)
    assert row is not None, f"no deployment of {adapter_id}"
    return row


def test_ollama_error_and_unreachable_record_nothing(store, adapters, runtime):
    ollama = runtime(Ollama)
    with pytest.raises(Conflict, match="model 'no-such-base' not found"):
        deploy.deploy_adapter(store, "coder-a", "ollama", ollama.url, from_model="no-such-base")
    ollama.fail = "out of disk space"
    with pytest.raises(Conflict, match=r"HTTP 500 .*out of disk space"):
        deploy.deploy_adapter(store, "coder-a", "ollama", ollama.url, from_model="qwen-base")
    with pytest.raises(Conflict, match="Cannot reach"):
        deploy.deploy_adapter(store, "coder-a", "ollama", _dead_url(), from_model="qwen-base")
    assert deploy.latest_deployment(store, "coder-a") is None


def test_vllm_new_name_per_version_and_unload_replaced(store, adapters, runtime):
    vllm = runtime(VLLM)
    first = deploy.deploy_adapter(store, "coder-a", "vllm", vllm.url)
    assert set(vllm.loras) == {"learnloop-coder-a"}
    assert (Path(vllm.loras["learnloop-coder-a"]) / "adapter_model.safetensors").exists()
    second = deploy.deploy_adapter(store, "coder-b", "vllm", vllm.url)
    assert set(vllm.loras) == {"learnloop-coder-b"}  # the replaced version was unloaded
    assert second.replaced == ["learnloop-coder-a"] and first.served_name != second.served_name
    assert deploy.latest_deployment(store, "coder-a") is None  # unloaded: no longer served
    assert _deployment(store, "coder-b")["status"] == "active"
    vllm.fail = "CUDA out of memory"
    with pytest.raises(Conflict, match="CUDA out of memory"):
        deploy.deploy_adapter(store, "coder-a", "vllm", vllm.url)
    assert _deployment(store, "coder-b")["status"] == "active"  # nothing changed
    with pytest.raises(Conflict, match="Cannot reach"):
        deploy.deploy_adapter(store, "coder-a", "vllm", _dead_url())


def test_llamacpp_command_then_scales(store, adapters, runtime):
    dep = deploy.deploy_adapter(store, "coder-a", "llamacpp", base_gguf="/models/base.gguf")
    assert dep.id is None and dep.status == "command_written" and deploy.latest_deployment(store, "coder-a") is None
    template = str(Path(dep.artifact).parent / "chat_template.jinja")  # the chat template training used
    assert dep.command == [
        *["llama-server", "-m", "/models/base.gguf", "--lora", dep.artifact],
        *["--jinja", "--chat-template-file", template],
    ]
    server = runtime(LlamaServer)
    with pytest.raises(Conflict, match="has not loaded"):  # started without our adapter
        deploy.deploy_adapter(store, "coder-a", "llamacpp", server.url)
    assert deploy.latest_deployment(store, "coder-a") is None
    b = deploy.deploy_adapter(store, "coder-b", "llamacpp")
    server.adapters[:] = [{"id": 0, "path": b.artifact, "scale": 1.0}, {"id": 1, "path": dep.artifact, "scale": 0.0}]
    deploy.deploy_adapter(store, "coder-b", "llamacpp", server.url)
    done = deploy.deploy_adapter(store, "coder-a", "llamacpp", server.url)
    assert done.served_name == "lora:1" and done.status == "active"
    assert [a["scale"] for a in server.adapters] == [0.0, 1.0]  # the replaced adapter is off


def test_promote_and_rollback_keep_the_runtime_in_step(store, adapters, runtime):
    from learning.registry.adapters import get_adapter
    from learning.routing import lifecycle
    from learning.routing.router import select_adapter

    vllm = runtime(VLLM)
    deploy.set_deploy_target(store, "coder", "vllm", vllm.url)
    lifecycle.promote(store, "coder-a", "production", force=True, reason="first", confirm=True)
    assert set(vllm.loras) == {"learnloop-coder-a"}
    lifecycle.promote(store, "coder-b", "production", force=True, reason="better", confirm=True)
    assert set(vllm.loras) == {"learnloop-coder-b"}  # loaded under a new name, the old one unloaded
    assert select_adapter(store, "coder", record=False).served_name == "learnloop-coder-b"
    lifecycle.rollback(store, "coder", reason="drift", confirm=True)
    assert set(vllm.loras) == {"learnloop-coder-a"}
    chosen = select_adapter(store, "coder", record=False)
    assert (chosen.served_name, chosen.deployment_url) == ("learnloop-coder-a", vllm.url)
    assert [t.target for t in deploy.list_deploy_targets(store)] == ["vllm"]
    # A runtime that fails: the deployment error is raised and the registry stays as it was.
    vllm.fail = "CUDA out of memory"
    with pytest.raises(Conflict, match="CUDA out of memory"):
        lifecycle.rollback(store, "coder", reason="again", confirm=True)
    assert get_adapter(store, "coder-a").status == "production"
    assert get_adapter(store, "coder-b").status == "archived"


def test_cli_and_mcp(store, adapters, runtime, home):
    vllm = runtime(VLLM)
    out = run_cli("deploy", "coder-a", "--target", "vllm", "--url", vllm.url, "--json", home=home)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["served_name"] == "learnloop-coder-a"
    bad = run_cli("deploy", "coder-b", "--target", "vllm", "--url", _dead_url(), home=home)
    assert bad.returncode == 1 and "Cannot reach" in bad.stderr
    gguf = run_cli("export", "coder-b", "--format", "gguf", "--json", home=home)
    assert gguf.returncode == 0, gguf.stderr
    assert json.loads(gguf.stdout)["max_delta_diff"] < 1e-6

    async def main():
        from mcp import Client

        from server.mcp import build_server

        async with Client(build_server(str(home))) as client:
            res = await client.call_tool(
                "export_adapter", {"adapter_id": "coder-b", "format": "ollama", "from_model": "qwen-base", "wait_s": 40}
            )
            assert res.structured_content["status"] == "succeeded", res
            assert res.structured_content["result"]["max_delta_diff"] < 1e-6
            res = await client.call_tool("deploy_adapter", {"adapter_id": "nope", "target": "vllm"})
            assert res.is_error and "No adapter 'nope'" in text_of(res.content[0])

    anyio.run(main)


def test_over_mcp_deployments_go_only_where_a_person_said(store, adapters, runtime, home):
    """An agent cannot name a URL: deploy_adapter has no `url` over MCP and set_deploy_target is
    the CLI's. Without a URL, the route's deploy target (set by a person) is used when it is this
    runtime; the adapter's local path is posted nowhere else."""
    theirs, ours = runtime(VLLM), runtime(VLLM)

    async def call(name, args):
        from mcp import Client

        from server.mcp import build_server

        async with Client(build_server(str(home))) as client:
            return await client.call_tool(name, args)

    res = anyio.run(call, "deploy_adapter", {"adapter_id": "coder-a", "target": "vllm", "url": theirs.url})
    assert res.is_error and "Unknown argument for deploy_adapter: 'url'" in text_of(res.content[0])
    res = anyio.run(call, "set_deploy_target", {"role": "coder", "target": "vllm", "url": theirs.url})
    assert res.is_error and "set_deploy_target" in text_of(res.content[0])
    assert theirs.loras == {} and deploy.list_deploy_targets(store) == []
    set_by_person = run_cli("deploy-target", "--role", "coder", "--target", "vllm", "--url", ours.url, home=home)
    assert set_by_person.returncode == 0, set_by_person.stderr
    res = anyio.run(call, "deploy_adapter", {"adapter_id": "coder-a", "target": "vllm"})
    assert not res.is_error, text_of(res.content[0])
    assert res.structured_content["url"] == ours.url and set(ours.loras) == {"learnloop-coder-a"}
    assert theirs.loras == {}


def test_command_line_values_are_checked(store, adapters, tmp_path):
    """base_gguf goes on the llama-server command line: one argument, never an option or a second
    line; the written command is quoted for the shell. from_model is checked before any call."""
    for bad in ("base.gguf\nrm -rf ~", "--rpc=evil:50052", "a\x00b", " "):
        with pytest.raises(InvalidInput, match="base_gguf"):
            deploy.deploy_adapter(store, "coder-a", "llamacpp", base_gguf=bad)
    with pytest.raises(InvalidInput, match="from_model"):
        deploy.deploy_adapter(store, "coder-a", "ollama", _dead_url(), from_model="qwen\nSYSTEM obey")
    spaced = str(tmp_path / "my models" / "base.gguf")
    dep = deploy.deploy_adapter(store, "coder-a", "llamacpp", base_gguf=spaced)
    assert dep.command is not None
    assert dep.command[:5] == ["llama-server", "-m", spaced, "--lora", dep.artifact]
    written = (Path(dep.artifact).parent / "llama-server.txt").read_text()
    assert shlex.split(written) == dep.command


def test_over_mcp_exports_stay_under_the_home(store, adapters, home, tmp_path):
    """export_adapter has no `out` over MCP: an agent's export lands in <home>/exports/ and
    nowhere else; a `.NAME.partial` folder beside a target is never removed unless learnloop made it."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / ".gguf.partial").mkdir()
    (outside / ".gguf.partial" / "keep.txt").write_text("keep")

    async def main():
        from mcp import Client

        from server.mcp import build_server

        async with Client(build_server(str(home))) as client:
            tools = {t.name: t for t in (await client.list_tools()).tools}
            assert "out" not in tools["export_adapter"].input_schema["properties"]
            res = await client.call_tool(
                "export_adapter", {"adapter_id": "coder-a", "format": "gguf", "out": str(outside / "gguf")}
            )
            assert res.is_error and "Unknown argument for export_adapter: 'out'" in text_of(res.content[0])
            res = await client.call_tool("export_adapter", {"adapter_id": "coder-a", "format": "gguf", "wait_s": 40})
            assert res.structured_content["status"] == "succeeded", res
            return res.structured_content["result"]["out_dir"]

    out_dir = anyio.run(main)
    assert Path(out_dir) == home.resolve() / "exports" / "coder-a" / "gguf"
    assert sorted(p.name for p in outside.rglob("*")) == [".gguf.partial", "keep.txt"]
