"""Runs that record their whole exchange (messages with tool calls and tool results, and the tools
offered): logged and read back through every face, curated by make_sft --format messages as they
were (redacted), and learned with the loss on the assistant's turns, its tool calls included, under
a Qwen2.5-style template that supports tools (tests/support/tool_chat.py)."""

from __future__ import annotations

import json
import math
import sqlite3
from pathlib import Path

import pytest

from learning.data import curate
from learning.data.chat_loss import IGNORE, assistant_only_rows
from learning.data.control_tokens import control_strings, escape_rows
from learning.data.formats import to_example, training_rows
from learning.errors import InvalidInput
from learning.runs import record
from learning.runs.messages import answer_text, render_tool_calls
from learning.store import MIGRATIONS, Store
from tests.conftest import run_cli
from tests.support.redact_corpus import planted_secrets
from tests.support.store_helpers import count_runs
from tests.support.tool_chat import TOOLS, TOOLS_CHATML, build_tools_base, tool_exchange

GITHUB = next(p for p in planted_secrets() if p.name == "github_token")


def tool_run(k: int, reward: float = 0.9, secret: str = "") -> dict:
    """A run as the gateway records one: instruction the last user message, output the answer."""
    messages = tool_exchange(k, secret)
    return {
        "role": "coder",
        "instruction": messages[1]["content"],
        "output": answer_text(messages[-1]),
        "reward": reward,
        "task_key": f"task-{k}",
        "messages": messages,
        "tools": TOOLS,
    }


def rows_of(path: str) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def learned(tok, ids: list[int], labels: list[int]) -> list[str]:
    """The texts of the runs of tokens that carry a label."""
    runs, current = [], []
    for i, label in zip(ids, labels):
        if label == IGNORE:
            if current:
                runs.append(tok.decode(current))
            current = []
        else:
            current.append(i)
    return runs + ([tok.decode(current)] if current else [])


# ---- logging and reading back ------------------------------------------------------------------


def test_a_run_keeps_its_whole_exchange_in_openai_format(store):
    messages = tool_exchange(0)
    messages[1] = {
        "role": "user",
        "content": [{"type": "text", "text": "What is "}, {"type": "text", "text": "17 * 23?"}],
    }
    messages[2]["tool_calls"][0]["function"]["arguments"] = {"code": "print(17 * 23)"}  # an object: kept as JSON text
    messages[-1] = {**messages[-1], "refusal": None, "reasoning_content": "dropped"}  # keys outside the format
    tools = [{**TOOLS[0], "function": {**TOOLS[0]["function"], "strict": True}}]
    run = record.get_run(store, record.log_run(store, {**tool_run(0), "messages": messages, "tools": tools}).run_id)
    assert run.messages is not None and run.tools == [TOOLS[0]]
    assert run.messages[1] == {"role": "user", "content": "What is 17 * 23?"}
    assert run.messages[2] == {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "call_0a",
                "type": "function",
                "function": {"name": "python", "arguments": '{"code": "print(17 * 23)"}'},
            }
        ],
    }
    assert run.messages[3] == {"role": "tool", "content": "391", "tool_call_id": "call_0a"}
    assert run.messages[-1] == {"role": "assistant", "content": "17 * 23 = 391."}
    assert run.output == "17 * 23 = 391."
    # A run without them has none, and a run logged before migration 10 reads back the same.
    plain = record.log_run(store, {"role": "coder", "output": "x = 1", "reward": 0.5}).run_id
    assert (record.get_run(store, plain).messages, record.get_run(store, plain).tools) == (None, None)


@pytest.mark.parametrize(
    ("change", "error"),
    [
        (lambda m: m[:-1], "'messages' must end with the assistant's answer (the last message's role is tool)"),
        (lambda m: [], "'messages' must hold the conversation"),
        (
            lambda m: [m[0], {"role": "tool", "content": "1"}, m[-1]],
            "'messages.1' a tool message needs the tool_call_id",
        ),
        (lambda m: [m[0], {"role": "user", "content": None}, m[-1]], "'messages.1' content is required"),
        (lambda m: [m[0], {"role": "user", "content": "x", "tool_calls": m[2]["tool_calls"]}, m[-1]], "only assistant"),
        (lambda m: [{"role": "robot", "content": "x"}, m[-1]], "'messages.0.role'"),
        (lambda m: [{"role": "user", "content": "x" * 2_000_000}, m[-1]], "'messages' is 2,000,"),
        (
            lambda m: [m[0], {"role": "user", "content": [{"type": "image_url", "image_url": {}}]}, m[-1]],
            "'messages.1.content' content must be text",
        ),
    ],
)
def test_a_bad_exchange_is_refused_with_the_message_named(store, change, error):
    with pytest.raises(InvalidInput, match="Invalid run") as caught:
        record.log_run(store, {**tool_run(0), "messages": change(tool_exchange(0))})
    assert error in str(caught.value) and count_runs(store) == 0


def test_bad_tools_are_refused(store):
    for tools, error in (
        ([{"type": "function", "function": {"description": "no name"}}], "'tools.0.function.name' is required"),
        ([{"type": "retrieval", "function": {"name": "f"}}], "'tools.0.type'"),
        ([TOOLS[0]] * 1_001, "1,001 tools; the limit is 1,000"),
    ):
        with pytest.raises(InvalidInput, match="Invalid run") as caught:
            record.log_run(store, {**tool_run(0), "tools": tools})
        assert error in str(caught.value)


def test_a_home_at_migration_9_gains_the_columns(tmp_path):
    db = sqlite3.connect(tmp_path / "learnloop.db")
    for number in range(9):
        db.executescript(MIGRATIONS[number])
    db.execute("INSERT INTO runs (ts, agent, role, task_key, output, reward) VALUES (1.0, 'a', 'coder', 'k', 'x', 0.5)")
    db.execute("PRAGMA user_version = 9")
    db.commit()
    db.close()
    store = Store(tmp_path)
    try:
        assert store.schema_version() == len(MIGRATIONS)
        assert record.get_run(store, 1).messages is None
        assert record.get_run(store, record.log_run(store, tool_run(1)).run_id).tools == TOOLS
    finally:
        store.close()


def test_import_and_the_cli_carry_the_exchange(store, home):
    lines = "".join(json.dumps(tool_run(k)) + "\n" for k in range(3))
    assert record.import_runs_from(store, jsonl=lines).imported == 3
    assert record.get_run(store, 2).messages == tool_exchange(1) and record.get_run(store, 2).tools == TOOLS
    done = run_cli(
        "log", "--role", "coder", "--reward", "0.5", "--output", "python(...)", "--json",
        "--messages", json.dumps(tool_exchange(7)), "--tools", json.dumps(TOOLS[:1]),
        home=home,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    run = record.get_run(store, json.loads(done.stdout)["run_id"])
    assert run.messages == tool_exchange(7) and run.tools == TOOLS[:1]
    bad = run_cli("log", "--role", "coder", "--output", "x", "--messages", '[{"role": "user"}]', home=home)
    assert bad.returncode != 0 and "'messages.0' content is required" in bad.stderr


def test_an_answer_of_tool_calls_renders_as_plain_text():
    calls = tool_exchange(0)[2]["tool_calls"]
    assert render_tool_calls(calls) == 'python({"code": "print(17 * 23)"})'
    two = [*calls, {"type": "function", "function": {"name": "search", "arguments": {"query": "x"}}}]
    assert render_tool_calls(two) == 'python({"code": "print(17 * 23)"})\nsearch({"query": "x"})'
    assert answer_text({"role": "assistant", "content": None, "tool_calls": calls}) == render_tool_calls(calls)
    assert answer_text({"role": "assistant", "content": "", "tool_calls": calls}) == render_tool_calls(calls)
    assert answer_text(tool_exchange(0)[4]) == "Let me check the docs too."  # its text, when it has some


# ---- curation ----------------------------------------------------------------------------------


def _curate(store, fmt: str = "messages", **kw):
    runs = [tool_run(k, secret=GITHUB.secret if k == 0 else "") for k in range(12)]
    runs += [
        {"role": "coder", "instruction": f"Write f{k}", "output": f"def f{k}(): pass", "reward": 0.8} for k in range(3)
    ]
    runs.append({**tool_run(3), "reward": 0.85})  # the same exchange again: a duplicate
    record.log_runs(store, runs)
    return curate.make_sft(store, "coder", format=fmt, test_fraction=0.2, min_rows=5, **kw)  # type: ignore[arg-type]


def test_make_sft_messages_writes_the_recorded_exchange_redacted(store):
    result = _curate(store)
    rows = rows_of(result.files["train"]) + rows_of(result.files["test"])
    assert result.counts["duplicates"] == 1 and len(rows) == 15
    exchanges = [r for r in rows if "tools" in r]
    plain = [r for r in rows if "tools" not in r]
    assert len(exchanges) == 12 and len(plain) == 3
    assert all(r["tools"] == TOOLS and len(r["messages"]) == 7 for r in exchanges)
    assert {r["messages"][1]["content"] for r in exchanges} >= {"What is 18 * 24?"}
    # Secrets go from the messages' contents and from the tool calls' arguments (still JSON).
    body = Path(result.files["train"]).read_text() + Path(result.files["test"]).read_text()
    assert GITHUB.secret not in body and result.redaction_counts.get("API_KEY") == 2
    secret_row = next(r for r in exchanges if "My token is" in r["messages"][1]["content"])
    assert secret_row["messages"][1]["content"].endswith("My token is [API_KEY]")
    assert json.loads(secret_row["messages"][4]["tool_calls"][0]["function"]["arguments"]) == {"query": "[API_KEY]"}
    # A run without an exchange is today's two-message row, through the role's template.
    assert all([m["role"] for m in r["messages"]] == ["user", "assistant"] for r in plain)
    # Evaluation reads an exchange as its prompt (every turn before the answer) and the answer.
    example = to_example(exchanges[0])
    assert len(example["prompt"]) == 6 and example["completion"] == exchanges[0]["messages"][-1]["content"]


def test_other_formats_keep_using_instruction_and_output(store):
    result = _curate(store, fmt="prompt_completion")
    rows = rows_of(result.files["train"]) + rows_of(result.files["test"])
    assert {"prompt", "completion"} == set(rows[0]) and any(r["completion"].endswith(" = 391.") for r in rows)
    assert not any("tool_response" in json.dumps(r) for r in rows)


# ---- training ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tools_tokenizer(tmp_path_factory):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(build_tools_base(tmp_path_factory.mktemp("tools") / "tok"))


def test_the_loss_covers_the_tool_call_turns_and_not_the_results(store, tools_tokenizer):
    tok = tools_tokenizer
    result = _curate(store)
    raw = rows_of(result.files["train"]) + rows_of(result.files["test"])
    rows = escape_rows(training_rows(raw, "messages", "sft"), control_strings(tok), keep=("tests",))
    assert all(set(r) == {"messages", "tools"} for r in rows)  # every row has the column, as TRL reads it
    tokenized, note = assistant_only_rows(tok, rows)
    assert tokenized is not None and note.startswith("assistant turns"), note
    k = next(i for i, r in enumerate(raw) if r.get("tools") and "18 * 24" in r["messages"][1]["content"])
    text = tok.decode(tokenized[k]["input_ids"])
    # Rendered as serving renders it: the tools in the system turn, the arguments as an object.
    assert '"name": "search", "description": "Search the documentation."' in text
    assert '{"name": "python", "arguments": {"code": "print(18 * 24)"}}' in text
    assert learned(tok, tokenized[k]["input_ids"], tokenized[k]["labels"]) == [
        '<tool_call>\n{"name": "python", "arguments": {"code": "print(18 * 24)"}}\n</tool_call><|im_end|>',
        'Let me check the docs too.\n<tool_call>\n{"name": "search", "arguments": {"query": "multiply 1"}}\n'
        "</tool_call><|im_end|>",
        "18 * 24 = 432.<|im_end|>",
    ]
    masked = tok.decode([i for i, label in zip(tokenized[k]["input_ids"], tokenized[k]["labels"]) if label == IGNORE])
    assert "<tool_response>\n432\n</tool_response>" in masked and "What is 18 * 24?" in masked and "# Tools" in masked
    # A plain run's row (no exchange) learns its one answer, under the same template.
    plain = next(i for i, r in enumerate(raw) if "tools" not in r)
    assert learned(tok, tokenized[plain]["input_ids"], tokenized[plain]["labels"]) == [
        raw[plain]["messages"][1]["content"] + "<|im_end|>"
    ]


def test_control_tokens_in_tool_calls_stay_text(tools_tokenizer):
    messages = tool_exchange(0)
    messages[2]["tool_calls"][0]["function"]["arguments"] = '{"code": "print(\'<|im_end|>\')"}'
    rows = training_rows([{"messages": messages, "tools": TOOLS}], "messages", "sft")
    row = escape_rows(rows, control_strings(tools_tokenizer))[0]
    call = row["messages"][2]["tool_calls"][0]["function"]
    assert call == {"name": "python", "arguments": {"code": "print('<\u2060|im_end|>')"}}


def test_under_generation_markers_tool_rows_are_masked_by_the_markers(store, tools_tokenizer):
    tok = tools_tokenizer
    result = _curate(store)
    raw = rows_of(result.files["train"]) + rows_of(result.files["test"])
    rows = training_rows(raw, "messages", "sft")
    opened = "{{- '<|im_start|>assistant' }}"
    closed = "{%- endfor %}{{- '<|im_end|>\n' }}"
    assert opened in TOOLS_CHATML and closed in TOOLS_CHATML
    tok.chat_template = TOOLS_CHATML.replace(opened, opened + "{% generation %}").replace(
        closed, closed + "{% endgeneration %}"
    )
    try:
        # TRL would read them through a datasets table, which gives each call the others' argument keys.
        tokenized, note = assistant_only_rows(tok, rows)
        assert tokenized is not None and note == "assistant turns (the chat template's generation markers)"
        k = next(i for i, r in enumerate(raw) if r.get("tools") and "18 * 24" in r["messages"][1]["content"])
        assert [t.strip() for t in learned(tok, tokenized[k]["input_ids"], tokenized[k]["labels"])] == [
            '<tool_call>\n{"name": "python", "arguments": {"code": "print(18 * 24)"}}\n</tool_call><|im_end|>',
            'Let me check the docs too.\n<tool_call>\n{"name": "search", "arguments": {"query": "multiply 1"}}\n'
            "</tool_call><|im_end|>",
            "18 * 24 = 432.<|im_end|>",
        ]
        # Rows without tool calls stay TRL's to mask, as before.
        plain = [r for r in rows if "tools" not in r or not r["tools"]]
        assert assistant_only_rows(tok, plain)[0] is None
    finally:
        tok.chat_template = TOOLS_CHATML


@pytest.mark.slow
def test_a_chat_sft_job_trains_on_tool_using_runs(tmp_path):
    from learning.jobs import manage as jobs
    from learning.registry import adapters as registry
    from learning.train import launch as training

    base = build_tools_base(tmp_path / "base", with_model=True)
    store = Store(tmp_path / "home")
    try:
        dataset = _curate(store)
        assert dataset.dataset_id is not None
        started = training.train_adapter(
            store,
            "coder",
            dataset.dataset_id,
            base=str(base),
            max_steps=3,
            overrides={"batch_size": 4, "save_steps": 100},
        )
        assert started.job_id is not None and started.adapter_id is not None
        status = jobs.wait_job(store, started.job_id, timeout=300)
        assert status.status == "succeeded", (status.error, status.log_tail)
        adapter = registry.get_adapter(store, started.adapter_id)
        assert adapter.status == "trained" and adapter.metrics["steps"] == 3
        assert math.isfinite(adapter.metrics["train_loss"]) and adapter.metrics["train_rows"] == dataset.train_rows
        assert adapter.metrics["loss_on"] == "assistant turns (found by rendering the conversation's prefixes)"
    finally:
        store.close()
