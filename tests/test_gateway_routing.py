"""The gateway and the lifecycle together, for real: adapters (PEFT LoRAs with random non-zero
lora_B on the embedded tiny base) registered, promoted, rolled back and put in a canary while
one gateway keeps serving; answers scored by the tests a request carries; failed backends
recorded only when asked."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from learning.gateway.app import build_app
from learning.gateway.inprocess import InProcess
from learning.gateway.scoring import score_answer
from learning.registry.adapters import create_adapter
from learning.routing import experiments, lifecycle
from learning.runs.record import get_run, log_run
from learning.store import Store
from tests.support.servers import free_port, served
from tests.support.store_helpers import count_runs
from tests.support.tiny import tiny_base

openai = pytest.importorskip("openai")
ASK = [{"role": "user", "content": "Write a function add(a, b)."}]


def make_adapter(store: Store, base: str, adapter_id: str, role: str, seed: int) -> None:
    """A LoRA whose lora_B is random (not PEFT's zeros): it changes what the model says."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    config = LoraConfig(r=4, lora_alpha=16, target_modules="all-linear", init_lora_weights=False)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base), config)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 1.0)
    path = store.home / "adapters" / adapter_id
    model.save_pretrained(str(path))
    create_adapter(store, adapter_id, role, base, str(path), status="candidate")


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    store = Store(tmp_path_factory.mktemp("gateway-routing-home"))
    base = tiny_base(store).path
    for seed, (adapter_id, role) in enumerate(
        [("hot-a", "coder"), ("hot-b", "coder"), ("canary-prod", "fixer"), ("canary-cand", "fixer")]
    ):
        make_adapter(store, base, adapter_id, role, seed)
    with served(build_app(store, InProcess(base, device="cpu"))) as url:
        yield store, openai.OpenAI(base_url=f"{url}/v1", api_key="unused")


def ask(client, model: str, **kw) -> tuple[str, dict[str, str]]:
    raw = client.chat.completions.with_raw_response.create(model=model, messages=ASK, max_tokens=8, **kw)
    return raw.parse().choices[0].message.content, dict(raw.headers)


def wait_for_reward(store: Store, run_id: int, seconds: float = 60.0):
    deadline = time.monotonic() + seconds
    while (run := get_run(store, run_id)).reward is None and time.monotonic() < deadline:
        time.sleep(0.1)
    return run


@pytest.mark.slow
def test_promotion_and_rollback_switch_what_is_served_without_a_restart(gateway):
    store, client = gateway
    base_text, headers = ask(client, "learnloop/coder")
    assert headers["x-learnloop-adapter"] == "base" and headers["x-learnloop-route"] == "base"

    lifecycle.promote_adapter(store, "hot-a", confirm=True)
    a_text, headers = ask(client, "learnloop/coder")
    assert headers["x-learnloop-adapter"] == "hot-a" and "x-learnloop-fallback" not in headers
    assert get_run(store, int(headers["x-learnloop-run-id"])).adapter_id == "hot-a"
    assert a_text != base_text  # the adapter's weights answer, not the base's

    lifecycle.promote_adapter(store, "hot-b", confirm=True)
    _, headers = ask(client, "learnloop/coder")
    assert headers["x-learnloop-adapter"] == "hot-b"

    lifecycle.rollback_adapter(store, "coder", confirm=True)
    again, headers = ask(client, "learnloop/coder")
    assert headers["x-learnloop-adapter"] == "hot-a" and again == a_text  # greedy: hot-a's answer again
    assert get_run(store, int(headers["x-learnloop-run-id"])).adapter_id == "hot-a"


@pytest.mark.slow
def test_a_canary_splits_live_traffic_and_each_run_records_its_arm(gateway):
    store, client = gateway
    lifecycle.promote_adapter(store, "canary-prod", confirm=True)
    exp = experiments.start_experiment(store, "fixer", "canary-cand", "canary", fraction=0.5, seed=1)
    served = []
    for i in range(12):
        _, headers = ask(client, "learnloop/fixer", extra_body={"metadata": {"task_key": f"task-{i}"}})
        run = get_run(store, int(headers["x-learnloop-run-id"]))
        assert run.adapter_id == headers["x-learnloop-adapter"] and run.task_key == f"task-{i}"
        served.append(run.adapter_id)
    assert set(served) == {"canary-prod", "canary-cand"}  # both arms served
    experiments.stop_experiment(store, exp.id)
    _, headers = ask(client, "learnloop/fixer", extra_body={"metadata": {"task_key": "task-0"}})
    assert headers["x-learnloop-adapter"] == "canary-prod"  # stopped: production serves everyone


@pytest.mark.slow
def test_tests_in_metadata_score_the_answer_after_it_is_sent(gateway):
    store, client = gateway
    tests = ["assert add(1, 2) == 3", "assert add(-1, 1) == 0"]
    _, headers = ask(client, "learnloop/reviewer", extra_body={"metadata": {"tests": tests}})
    run = wait_for_reward(store, int(headers["x-learnloop-run-id"]))
    assert run.reward is not None and 0.0 <= run.reward <= 1.0
    signals = run.signals
    assert signals["tests_total"] == 2 and signals["scored_by"] == "gateway" and run.tests == tests

    stream = client.chat.completions.create(
        model="learnloop/reviewer", messages=ASK, max_tokens=6, stream=True, extra_body={"metadata": {"tests": tests}}
    )
    last = [c for c in stream if c.choices][-1]
    run = wait_for_reward(store, last.model_extra["learnloop"]["run_id"])
    assert run.reward is not None and run.signals["tests_total"] == 2


@pytest.mark.slow
def test_bad_metadata_tests_are_a_400_and_no_run(gateway):
    store, client = gateway
    before = count_runs(store)
    for bad in (["assert add(1, 2) =="], "assert True", []):
        with pytest.raises(openai.BadRequestError) as caught:
            ask(client, "learnloop/coder", extra_body={"metadata": {"tests": bad}})
        assert caught.value.body["param"] == "metadata.tests"  # type: ignore[index]
    assert count_runs(store) == before


def test_the_reward_is_the_share_of_tests_passed(tmp_path: Path):
    store = Store(tmp_path)
    answer = "Here it is:\n```python\ndef add(a, b):\n    return a + b\n```"
    run_id = log_run(store, {"role": "coder", "output": answer, "reward": None}).run_id
    tests = ["assert add(1, 2) == 3", "assert add(1, 1) == 3"]
    assert score_answer(store, run_id, answer, tests) == 0.5
    run = get_run(store, run_id)
    assert run.reward == 0.5 and run.signals["tests_passed"] == 1 and run.signals["tests_total"] == 2


@pytest.mark.parametrize("record_failures", [False, True])
def test_a_failed_backend_is_recorded_only_when_asked(tmp_path: Path, record_failures: bool):
    from starlette.testclient import TestClient

    from learning.gateway.forward import Forwarding

    store = Store(tmp_path)
    down = Forwarding(f"http://127.0.0.1:{free_port()}", "vllm", "base-model")
    with TestClient(build_app(store, down, record_failures=record_failures)) as client:  # shut down: all stored
        for stream in (False, True):
            body = {"model": "learnloop/coder", "messages": ASK, "stream": stream}
            r = client.post("/v1/chat/completions", json=body)
            assert r.status_code == 502 and "unreachable" in r.json()["error"]["message"]
    with store.read() as conn:  # the decisions are kept either way, as select_adapter keeps them
        assert conn.execute("SELECT count(*) FROM decisions").fetchone()[0] == 2
    if not record_failures:
        assert count_runs(store) == 0
        return
    assert count_runs(store) == 2
    for run_id in (1, 2):
        run = get_run(store, run_id)
        assert run.reward == 0.0 and run.role == "coder" and run.instruction == ASK[0]["content"]
        assert "unreachable" in run.signals["backend_error"]
        assert run.meta["gateway"]["finish_reason"] == "error"
