"""Chat-format SFT learns the assistant's turns only, also under a chat template without
generation markers (a SmolLM2-like ChatML template with a default system prompt)."""

from __future__ import annotations

from pathlib import Path

import pytest

from learning.data.chat_loss import IGNORE, assistant_only_rows, tokenize_assistant_only
from tests.support.tool_chat import build_chat_base

SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
# SmolLM2-Instruct's template: ChatML, a default system prompt, no {% generation %} markers.
CHATML = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\n" + SYSTEM + "<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
# Renders the last assistant turn unlike earlier ones (as Qwen3 drops past reasoning).
LAST_DIFFERS = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n'}}"
    "{% if loop.last and message['role'] == 'assistant' %}{{ '<think></think>' }}{% endif %}"
    "{{ message['content'] + '<|im_end|>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
TALK = [
    {"role": "user", "content": "Write a function that adds two numbers."},
    {"role": "assistant", "content": "def add(x, y):\n    return x + y\n"},
    {"role": "user", "content": "Now subtract them."},
    {"role": "assistant", "content": "def sub(x, y):\n    return x - y"},
]


def build_chatml(folder: Path, with_model: bool = False) -> Path:
    """A tokenizer with the ChatML template above (and, with_model, a 2-layer Llama), saved to folder."""
    corpus = [SYSTEM, *(m["content"] for m in TALK), "Write a function add_1 that returns x plus 1.\n"]
    return build_chat_base(folder, CHATML, corpus, with_model)


@pytest.fixture(scope="module")
def chatml(tmp_path_factory):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(build_chatml(tmp_path_factory.mktemp("chatml") / "tok"))


def learned_runs(tok, ids: list[int], labels: list[int]) -> list[str]:
    """The texts of the runs of tokens that carry a label."""
    runs, current = [], []
    for i, label in zip(ids, labels):
        if label == IGNORE:
            if current:
                runs.append(tok.decode(current))
            current = []
        else:
            assert label == i
            current.append(i)
    return runs + ([tok.decode(current)] if current else [])


def test_only_the_assistant_turns_and_their_end_token_are_learned(chatml):
    out = tokenize_assistant_only(chatml, TALK)
    ids, labels = out["input_ids"], out["labels"]
    assert chatml.decode(ids) == chatml.apply_chat_template(TALK, tokenize=False)
    assert learned_runs(chatml, ids, labels) == [
        "def add(x, y):\n    return x + y\n<|im_end|>",
        "def sub(x, y):\n    return x - y<|im_end|>",
    ]
    # The default system prompt, the user turns and every turn's header carry no loss.
    masked = chatml.decode([i for i, label in zip(ids, labels) if label == IGNORE])
    assert SYSTEM in masked and "Write a function that adds" in masked and "Now subtract" in masked
    assert ids[0] == chatml.convert_tokens_to_ids("<|im_start|>") and labels[0] == IGNORE


def test_rows_are_tokenized_only_where_trl_cannot_mask(chatml):
    rows, note = assistant_only_rows(chatml, [{"messages": TALK}, {"messages": TALK[:2]}])
    assert rows is not None and len(rows) == 2 and note.startswith("assistant turns")
    assert set(rows[0]) == {"input_ids", "labels"}
    # prompt/completion rows stay as they are; so do chat rows under a template with markers.
    assert assistant_only_rows(chatml, [{"prompt": "p", "completion": "c"}])[0] is None
    marked = CHATML.replace("message['content'] + '<|im_end|>'", "message['content']")
    chatml.chat_template = marked.replace("{{'<|im_start|>'", "{% generation %}{% endgeneration %}{{'<|im_start|>'")
    try:
        rows, note = assistant_only_rows(chatml, [{"messages": TALK}])
        assert rows is None and "generation markers" in note
        # A template whose prefixes render differently falls back to every token, and says why.
        chatml.chat_template = LAST_DIFFERS
        rows, note = assistant_only_rows(chatml, [{"messages": TALK}])
        assert rows is None and note.startswith("every token (row 1:") and "differently" in note
    finally:
        chatml.chat_template = CHATML


@pytest.mark.slow
def test_a_chat_sft_job_on_a_chatml_base_learns_the_assistant_turns(tmp_path):
    from learning.jobs import manage as jobs
    from learning.registry import adapters as registry
    from learning.store import Store
    from learning.train import launch as training
    from tests.support.train_helpers import make_dataset

    base = build_chatml(tmp_path / "base", with_model=True)
    store = Store(tmp_path / "home")
    try:
        make_dataset(store, "ds-chat", fmt="messages", rows=12)
        started = training.train_adapter(
            store, "coder", "ds-chat", base=str(base), max_steps=3, overrides={"batch_size": 4, "save_steps": 100}
        )
        assert started.job_id is not None and started.adapter_id is not None
        status = jobs.wait_job(store, started.job_id, timeout=300)
        assert status.status == "succeeded", (status.error, status.log_tail)
        adapter = registry.get_adapter(store, started.adapter_id)
        assert adapter.status == "trained" and adapter.metrics["steps"] == 3
        assert adapter.metrics["loss_on"] == "assistant turns (found by rendering the conversation's prefixes)"
    finally:
        store.close()
