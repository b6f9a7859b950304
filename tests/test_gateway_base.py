"""`learnloop gateway` (in process) serves the base its adapters were trained on: without --base the
production adapters' (and running experiments' candidates') base, else the embedded small base
that train_adapter uses by default; a routed adapter that cannot load on the chosen base stops it
at start, naming --base and the adapter. Chosen from the registry's records: no model is loaded."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from learning.errors import Conflict
from learning.gateway.served_base import served_base
from learning.models.tinybase import MARKER, base_dir
from learning.registry import adapters as registry
from learning.routing import experiments
from learning.store import Store
from server.cli import app
from tests.conftest import ROOT, subprocess_env
from tests.support.tiny import tiny_base

runner = CliRunner()


def fake_base(folder: Path) -> str:
    """A folder that stands for a base: the gateway's choice reads records, never weights."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / MARKER).write_text(json.dumps({"seed": 0, "parameters": 1, "final_loss": 1.0, "build_s": 0.0}))
    return str(folder)


def in_production(store: Store, adapter_id: str, role: str, base: str) -> None:
    registry.create_adapter(
        store, adapter_id, role, base, str(store.home / "adapters" / adapter_id), status="candidate"
    )
    registry.set_production(store, adapter_id, "a person", "promoted")


def test_without_base_the_production_adapters_base_is_served(store):
    small = fake_base(base_dir(store.home, "small"))
    tiny = fake_base(base_dir(store.home, "tiny"))
    assert served_base(store).base == small  # nothing routed yet: train's default, embedded:small
    in_production(store, "coder-1", "coder", tiny)
    in_production(store, "fixer-1", "fixer", tiny + "/")  # the same folder, written another way
    chosen = served_base(store)
    assert chosen.base == tiny and sorted(chosen.adapters) == ["coder-1", "fixer-1"]
    assert served_base(store, "embedded:tiny").base == tiny and served_base(store, tiny).base == tiny


def test_a_production_adapter_on_another_base_is_refused_naming_base(store):
    small = fake_base(base_dir(store.home, "small"))
    in_production(store, "coder-1", "coder", small)
    with pytest.raises(Conflict) as refused:
        served_base(store, "embedded:tiny")
    assert "--base embedded:tiny" in str(refused.value) and "coder-1" in str(refused.value)
    other = fake_base(store.home / "elsewhere")
    in_production(store, "judge-1", "judge", other)
    with pytest.raises(Conflict, match="different bases") as refused:
        served_base(store)
    assert "coder-1" in str(refused.value) and "judge-1" in str(refused.value) and "--base" in str(refused.value)


def test_a_running_experiments_candidate_counts(store):
    in_production(store, "coder-1", "coder", fake_base(base_dir(store.home, "small")))
    registry.create_adapter(store, "coder-2", "coder", "other/hub-base", str(store.home / "a2"), status="candidate")
    experiments.start_experiment(store, "coder", "coder-2")
    with pytest.raises(Conflict, match="coder-2"):
        served_base(store)


def test_a_base_no_longer_there_is_refused(store):
    gone = store.home / "gone"
    in_production(store, "coder-1", "coder", str(gone))
    with pytest.raises(Conflict, match="not there any more") as refused:
        served_base(store)
    assert "coder-1" in str(refused.value) and "--base" in str(refused.value)


def test_the_cli_refuses_before_starting(home):
    store = Store(home)
    in_production(store, "coder-1", "coder", fake_base(base_dir(home, "small")))
    other = fake_base(home / "other")
    result = runner.invoke(app, ["gateway", "--home", str(home), "--base", other])
    assert isinstance(result.exception, Conflict), (result.output, result.exception)
    assert f"--base {other}" in str(result.exception) and "coder-1" in str(result.exception)


STARTUP = """
import sys
import uvicorn
uvicorn.run = lambda *a, **k: print("would serve")  # everything up to the server's start
from server.cli import app
app(["gateway", "--home", sys.argv[1]], standalone_mode=False)
heavy = [m for m in ("torch", "transformers", "peft", "trl", "datasets") if m in sys.modules]
print("heavy:" + ",".join(heavy))
"""


def test_gateway_start_up_imports_no_torch(home):
    store = Store(home)
    in_production(store, "coder-1", "coder", fake_base(base_dir(home, "small")))
    out = subprocess.run(
        [sys.executable, "-c", STARTUP, str(home)], capture_output=True, text=True, env=subprocess_env(), cwd=ROOT
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "would serve" in out.stdout and out.stdout.strip().endswith("heavy:"), out.stdout
    assert f"base: {base_dir(home, 'small')} (the base the routed adapters were trained on)" in out.stderr


@pytest.mark.slow
def test_a_promoted_adapter_is_answered_on_the_base_chosen_for_it(store):
    """For real: a LoRA on the tiny base, promoted; the gateway started without --base loads the
    tiny base and the adapter answers (on the small base it would be a size mismatch, a 502)."""
    import openai

    from learning.gateway.app import build_app
    from learning.gateway.inprocess import InProcess
    from tests.support.servers import served
    from tests.test_gateway_routing import make_adapter

    make_adapter(store, tiny_base(store).path, "coder-tiny", "coder", seed=0)
    registry.set_production(store, "coder-tiny", "a person", "promoted")
    chosen = served_base(store)
    with served(build_app(store, InProcess(chosen.base, device="cpu"))) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused")
        raw = client.completions.with_raw_response.create(
            model="learnloop/coder", prompt="def add(a, b):", max_tokens=4
        )
    assert raw.http_response.status_code == 200 and raw.headers["x-learnloop-adapter"] == "coder-tiny"
