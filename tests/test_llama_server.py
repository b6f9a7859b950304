"""A real llama-server (llama.cpp, built by tools/llama_server.py) serving SmolLM2-135M-Instruct's
Q4_1 GGUF with two learnloop LoRAs, started with `deploy --target llamacpp`'s command line; and
the gateway in front of it, driven by the openai SDK.

Checked against PEFT: greedy text from llama-server with an adapter's scale at 1 (the others at
0) equals PEFT's greedy text with that adapter, and with every scale at 0 the base's, the way the
gateway asks. Skipped when the server was not built (`python tools/llama_server.py`).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from learning.gateway.app import build_app, serve_in_thread
from learning.gateway.forward import Forwarding
from learning.jobs import manage as jobs
from learning.registry import adapters as registry
from learning.runs.record import get_run
from learning.serve import deploy, export
from learning.train import launch as training
from tests.support.train_helpers import make_dataset
from tools import llama_server

pytestmark = [pytest.mark.slow, pytest.mark.realmodel]

TOKENS = 24
TIE = 0.5  # logits: below this, Q4_1 and float32 may pick either token
CONTEXT = 1024
PROMPTS = ["Write a function that adds one.", "Name three colours."]
TOOL_CALL_TEXT = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


@pytest.fixture(scope="module")
def server_binary() -> Path:
    found = llama_server.binary()
    if found is None:
        pytest.skip("llama-server is not built: python tools/llama_server.py (cached by version)")
    return found


def _train(store, base: Path, role: str, text: str) -> str:
    """An adapter that learnt to answer everything with `text` (so its answers differ from the base's)."""
    folder = store.home / "datasets" / f"ds-{role}"
    make_dataset(store, f"ds-{role}", role=role, fmt="messages", rows=12)
    rows = [{"messages": [{"role": "user", "content": p}, {"role": "assistant", "content": text}]} for p in PROMPTS]
    (folder / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows * 6))
    fast = {"batch_size": 4, "max_length": 96, "save_steps": 100, "learning_rate": 3e-3}
    started = training.train_adapter(store, role, f"ds-{role}", base=str(base), max_steps=8, overrides=fast)
    status = jobs.wait_job(store, started.job_id, timeout=900)  # type: ignore[arg-type]
    assert status.status == "succeeded", (status.error, status.log_tail)
    registry.set_production(store, started.adapter_id, "test", "llama-server", force=True)
    return started.adapter_id


class Peft:
    """The base (and an adapter) in transformers + PEFT, on the folder imported from the GGUF."""

    def __init__(self, folder: str, adapter_path: str | None):
        import transformers

        self.tok = transformers.AutoTokenizer.from_pretrained(folder)
        self.model: Any = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
        if adapter_path is not None:
            from peft import PeftModel

            self.model = PeftModel.from_pretrained(self.model, adapter_path).eval()

    def _prompt(self, prompt: str) -> list[int]:
        messages = [{"role": "user", "content": prompt}]
        return self.tok(
            self.tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True), add_special_tokens=False
        )["input_ids"]

    def greedy(self, prompt: str) -> str:
        import torch

        ids = torch.tensor([self._prompt(prompt)])
        with torch.no_grad():
            out = self.model.generate(input_ids=ids, max_new_tokens=TOKENS, do_sample=False)
        return self.tok.decode(out[0, ids.shape[1] :], skip_special_tokens=True)

    def ties(self, prompt: str, answer: str) -> list[float]:
        """For each token of `answer` (another runtime's greedy text), how far its logit is below
        PEFT's top logit there, given the answer so far: all 0 when PEFT would say the same."""
        import torch

        head = self._prompt(prompt)
        tail = self.tok(answer, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logits = self.model(input_ids=torch.tensor([head + tail])).logits[0]
        rows = logits[len(head) - 1 : len(head) - 1 + len(tail)]
        return [float(row.max() - row[t]) for row, t in zip(rows, tail)]


@pytest.fixture(scope="module")
def served(imported, real_gguf, server_binary, tmp_path_factory):
    """llama-server started with deploy's command line for the coder adapter plus the fixer's
    LoRA, both deployed at its URL; PEFT's greedy answers for each prompt and adapter."""
    store, record = imported
    (store.home / "templates").mkdir(exist_ok=True)
    for role in ("coder", "fixer", "tooler"):  # the bare instruction: served prompts compare with PEFT's chat template
        (store.home / "templates" / f"{role}.txt").write_text("{instruction}")
    coder, fixer = (
        _train(store, real_gguf, "coder", "CODER SAYS HI"),
        _train(store, real_gguf, "fixer", "fixer fixes it"),
    )
    command = deploy.deploy_adapter(store, coder, "llamacpp").command
    assert command is not None and command[0] == "llama-server"
    fixer_gguf = str(Path(export.export_adapter(store, fixer, "gguf").out_dir) / "adapter.gguf")
    port = _free_port()
    argv = [str(server_binary), *command[1:], "--lora", fixer_gguf, "--port", str(port), "-c", str(CONTEXT)]
    log = (tmp_path_factory.mktemp("llama") / "server.log").open("w")
    proc = subprocess.Popen(argv + ["-t", "2"], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(url, proc)
        for adapter in (coder, fixer):
            deploy.deploy_adapter(store, adapter, "llamacpp", url=url)
        models = {
            "base": Peft(record["folder"], None),
            "coder": Peft(record["folder"], registry.get_adapter(store, coder).path),
            "fixer": Peft(record["folder"], registry.get_adapter(store, fixer).path),
        }
        expected = {name: [m.greedy(p) for p in PROMPTS] for name, m in models.items()}
        yield store, url, {"coder": coder, "fixer": fixer}, expected, models
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)
        log.close()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_ready(url: str, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "llama-server exited at start (see its log)"
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise AssertionError("llama-server did not become ready")


def _direct(url: str, prompt: str, scales: dict[int, float], **extra) -> dict:
    body = {
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": TOKENS,
        "temperature": 0,
        "lora": [{"id": i, "scale": s} for i, s in scales.items()],
        **extra,
    }
    r = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=120)
    assert r.status_code == 200, r.text
    return r.json()


def _ids(url: str, store, adapters: dict[str, str]) -> dict[str, int]:
    """Each adapter's id in llama-server's list (its deployment's served name `lora:<id>`)."""
    out = {}
    for role, adapter_id in adapters.items():
        row = deploy.latest_deployment(store, adapter_id)
        assert row is not None
        served_name = row["served_name"]
        out[role] = int(served_name.split(":")[1])
    return out


def _as_peft(models: dict, role: str, prompt: str, answer: str, expected: str) -> None:
    """llama-server's greedy answer is PEFT's: the same text, or (Q4_1 in llama.cpp against float32
    in transformers) the same up to a near-tie, where every token it chose is within TIE of PEFT's
    top logit given the answer so far."""
    if answer != expected:
        gaps = models[role].ties(prompt, answer)
        assert max(gaps) < TIE, (role, prompt, answer, expected, gaps)


def test_each_adapter_and_the_base_answer_as_peft_does(served):
    store, url, adapters, expected, models = served
    ids = _ids(url, store, adapters)
    assert sorted(ids.values()) == [0, 1]
    for i, prompt in enumerate(PROMPTS):
        base = _direct(url, prompt, dict.fromkeys(ids.values(), 0.0))["choices"][0]["message"]["content"]
        _as_peft(models, "base", prompt, base, expected["base"][i])
        for role, lora in ids.items():
            scales = {j: 1.0 if j == lora else 0.0 for j in ids.values()}
            answer = _direct(url, prompt, scales)["choices"][0]["message"]["content"]
            assert answer == expected[role][i], (role, prompt)  # what it learnt: no near-tie
    assert expected["coder"] != expected["base"] and expected["fixer"] != expected["base"]


def test_global_scales_switch_through_lora_adapters(served):
    store, url, adapters, expected, _ = served
    ids = _ids(url, store, adapters)
    for on in ids.values():
        scales = [{"id": j, "scale": 1.0 if j == on else 0.0} for j in ids.values()]
        assert httpx.post(f"{url}/lora-adapters", json=scales).status_code == 200
        listed = {a["id"]: a["scale"] for a in httpx.get(f"{url}/lora-adapters").json()}
        assert listed == {j: (1.0 if j == on else 0.0) for j in ids.values()}
        # A request naming no adapter (an empty list) gets the global scales: the one switched on.
        body = {"messages": [{"role": "user", "content": PROMPTS[0]}], "max_tokens": TOKENS, "temperature": 0}
        text = httpx.post(f"{url}/v1/chat/completions", json={**body, "lora": []}, timeout=120).json()
        role = next(r for r, j in ids.items() if j == on)
        assert text["choices"][0]["message"]["content"] == expected[role][0]  # what it learnt: exact


@pytest.fixture(scope="module")
def gateway(served):
    store, url, adapters, expected, models = served
    app = build_app(store, Forwarding(url, "llamacpp"))
    with serve_in_thread(app) as gateway_url:
        yield store, url, gateway_url, expected, models


def _client(url: str) -> Any:
    import openai

    return openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0)


def test_the_gateway_routes_each_role_to_its_adapter_and_the_rest_to_the_base(gateway, served):
    store, direct_url, url, expected, models = gateway
    ids = _ids(direct_url, store, served[2])
    client = _client(url)
    for model, want in (("learnloop/coder", "coder"), ("learnloop/fixer", "fixer"), ("learnloop/judge", "base")):
        messages = [{"role": "user", "content": PROMPTS[1]}]
        scales = {j: 1.0 if j == ids.get(want) else 0.0 for j in ids.values()}
        direct = _direct(direct_url, PROMPTS[1], scales)["choices"][0]["message"]["content"]
        _as_peft(models, want, PROMPTS[1], direct, expected[want][1])  # llama-server's answer is PEFT's
        raw = client.chat.completions.with_raw_response.create(
            model=model, messages=messages, max_tokens=TOKENS, temperature=0
        )
        answer = raw.parse()
        assert answer.choices[0].message.content == direct, model
        assert raw.headers["x-learnloop-route"] == ("base" if want == "base" else "role")
        run = get_run(store, int(raw.headers["x-learnloop-run-id"]))  # stored before the answer came
        assert run.output == direct and (run.adapter_id is None) == (want == "base")
        assert run.messages and run.messages[-1]["content"] == direct

        stream = client.chat.completions.create(
            model=model, messages=messages, max_tokens=TOKENS, temperature=0, stream=True
        )
        chunks = list(stream)
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == direct
        run_id = next(c for c in chunks if c.model_extra.get("learnloop")).model_extra["learnloop"]["run_id"]
        assert get_run(store, run_id).output == direct


def test_logprobs_and_big_max_tokens_pass_through(gateway):
    store, _, url, _, _ = gateway
    client = _client(url)
    plain = {"messages": [{"role": "user", "content": PROMPTS[0]}], "temperature": 0}
    with_logprobs = client.chat.completions.create(
        model="learnloop/coder", max_tokens=4, logprobs=True, top_logprobs=2, **plain
    )
    top = with_logprobs.choices[0].logprobs.content[0].top_logprobs
    assert len(top) == 2
    big = client.chat.completions.create(model="learnloop/coder", max_tokens=8192, **plain)
    assert big.choices[0].finish_reason in ("stop", "length")


@pytest.fixture(scope="module")
def tool_server(served, real_gguf, server_binary, tmp_path_factory):
    """A second llama-server, with a tool-aware chat template (Qwen2.5's `<tool_call>` form,
    tests/support/tool_chat.py) and an adapter that learnt to call get_weather: llama-server parses the
    call out of the text into `tool_calls` (SmolLM2 itself calls no tools, and this llama.cpp's
    tool_choice "required" does not force one)."""
    from tests.support.tool_chat import TOOLS_CHATML

    store = served[0]
    tooler = _train(store, real_gguf, "tooler", TOOL_CALL_TEXT)
    folder = tmp_path_factory.mktemp("tools")
    (folder / "tools.jinja").write_text(TOOLS_CHATML)
    gguf = str(Path(export.export_adapter(store, tooler, "gguf").out_dir) / "adapter.gguf")
    port = _free_port()
    argv = [
        str(server_binary),
        "-m",
        str(real_gguf),
        "--lora",
        gguf,
        "--jinja",
        "--chat-template-file",
        str(folder / "tools.jinja"),
        "--port",
        str(port),
        "-c",
        str(CONTEXT),
        "-t",
        "2",
    ]
    log = (folder / "server.log").open("w")
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(url, proc)
        deploy.deploy_adapter(store, tooler, "llamacpp", url=url)
        with serve_in_thread(build_app(store, Forwarding(url, "llamacpp"))) as gateway_url:
            yield store, url, gateway_url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)
        log.close()


def test_tool_calls_pass_through_and_are_recorded(tool_server):
    store, direct_url, url = tool_server
    client = _client(url)
    asked = {
        "messages": [{"role": "user", "content": PROMPTS[0]}],
        "tools": [WEATHER],
        "max_tokens": 48,
        "temperature": 0,
    }
    direct = httpx.post(
        f"{direct_url}/v1/chat/completions", json={**asked, "lora": [{"id": 0, "scale": 1.0}]}, timeout=120
    )
    want = direct.json()["choices"][0]["message"]["tool_calls"]
    assert want[0]["function"]["name"] == "get_weather"
    raw = client.chat.completions.with_raw_response.create(model="learnloop/tooler", **asked)
    answer = raw.parse()
    assert answer.choices[0].finish_reason == "tool_calls"
    got = answer.choices[0].message.model_dump(exclude_none=True)["tool_calls"]
    assert [c["function"] for c in got] == [c["function"] for c in want]  # as llama-server sent it
    assert json.loads(got[0]["function"]["arguments"]) == {"city": "Paris"}
    run = get_run(store, int(raw.headers["x-learnloop-run-id"]))
    assert run.tools and run.messages and run.tools[0]["function"]["name"] == "get_weather"
    assert run.messages[-1]["tool_calls"][0]["function"]["name"] == "get_weather" and "get_weather(" in run.output

    streamed = list(client.chat.completions.create(model="learnloop/tooler", stream=True, **asked))
    pieces = [t for c in streamed if c.choices for t in (c.choices[0].delta.tool_calls or [])]
    assert pieces and pieces[0].function.name == "get_weather"
    assert json.loads("".join(t.function.arguments or "" for t in pieces)) == {"city": "Paris"}
    run_id = next(c for c in streamed if c.model_extra.get("learnloop")).model_extra["learnloop"]["run_id"]
    streamed_run = get_run(store, run_id).messages
    assert streamed_run and streamed_run[-1]["tool_calls"][0]["function"]["name"] == "get_weather"


def test_a_prompt_over_the_context_is_the_runtimes_400_and_no_run(gateway):
    import openai

    store, _, url, _, _ = gateway
    with store.read() as conn:
        before = conn.execute("SELECT count(*) FROM runs").fetchone()[0]
    too_long = "word " * (CONTEXT * 2)
    with pytest.raises(openai.BadRequestError) as caught:
        _client(url).chat.completions.create(model="learnloop/coder", messages=[{"role": "user", "content": too_long}])
    assert "context" in str(caught.value).lower()
    with store.read() as conn:
        assert conn.execute("SELECT count(*) FROM runs").fetchone()[0] == before
