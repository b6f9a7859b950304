"""examples/gateway: the openai SDK example runs against a real gateway (in process, on the
embedded tiny base) and its run is scored; the client configs (aider, opencode, Continue, not
run here) parse and point at the gateway's default address with a learnloop/<role> model."""

from __future__ import annotations

import json
import sys

import pytest
import yaml

from learning.gateway.app import build_app
from learning.gateway.inprocess import InProcess
from learning.runs.record import get_run
from learning.store import Store
from tests.conftest import ROOT
from tests.support.servers import served
from tests.support.tiny import tiny_base

pytest.importorskip("openai")
EXAMPLES = ROOT / "examples" / "gateway"
DEFAULT_URL = "http://127.0.0.1:8766/v1"  # learnloop gateway's default --host and --port


@pytest.mark.slow  # builds the tiny base and serves it
def test_the_openai_sdk_example_calls_and_scores(tmp_path):
    store = Store(tmp_path)
    app = build_app(store, InProcess(tiny_base(store).path, device="cpu"))
    sys.path.insert(0, str(EXAMPLES))
    try:
        from openai_sdk import ask_and_score  # pyright: ignore[reportMissingImports]  # examples/gateway on sys.path

        with served(app) as url:
            text, run_id = ask_and_score(f"{url}/v1", "unused", "Write add(a, b).", 0.5)
    finally:
        sys.path.remove(str(EXAMPLES))
    run = get_run(store, run_id)
    assert run.reward == 0.5 and run.output == text and run.model == "learnloop/coder/python"


def test_the_client_configs_point_at_the_gateway():
    aider = yaml.safe_load((EXAMPLES / "aider.conf.yml").read_text())
    assert aider["openai-api-base"] == DEFAULT_URL and aider["model"] == "openai/learnloop/coder"
    opencode = json.loads((EXAMPLES / "opencode.json").read_text())
    provider = opencode["provider"]["learnloop"]
    assert provider["options"]["baseURL"] == DEFAULT_URL and "learnloop/coder" in provider["models"]
    assert opencode["model"] == "learnloop/learnloop/coder"
    (model,) = yaml.safe_load((EXAMPLES / "continue.yaml").read_text())["models"]
    assert model["apiBase"] == DEFAULT_URL and model["provider"] == "openai" and model["model"] == "learnloop/coder"
    for name in ("aider.conf.yml", "opencode.json", "continue.yaml"):
        assert "NOT RUN HERE" in (EXAMPLES / name).read_text()
