"""Curation on real runs imported into a temp home: make_sft, make_preferences, list/get, the
MCP tools and the CLI. One slow test trains TRL's SFTTrainer on the files for two steps."""

from __future__ import annotations

import io
import json
import re
from datetime import datetime, timedelta, timezone
from pathlib import Path

import anyio
import pytest
from mcp import Client

from learning.data import curate as sft
from learning.data import curation_result, preferences
from learning.data.datasets import get_dataset, list_datasets
from learning.errors import InvalidInput, NotFound
from learning.runs import record as runs
from server.mcp import build_server
from tests.conftest import annotations_of, run_cli, text_of
from tests.support.redact_corpus import planted_secrets
from tests.support.tiny_models import token_id

TASKS = 30
REWARDS = (0.95, 0.8, 0.75, 0.1)  # four attempts per task
GITHUB = next(p for p in planted_secrets() if p.name == "github_token")
EMAIL = next(p for p in planted_secrets() if p.name == "email")


def _runs() -> list[dict]:
    now = datetime.now(timezone.utc)
    out = []
    for k in range(TASKS):
        for a, reward in enumerate(REWARDS):
            output = f"def f{k}():\n    return {k} * {a}\n"
            if a == 2 and k < 5:  # a near-exact duplicate of attempt 1: case and white space only
                output = f"DEF   F{k}():\n\treturn {k} * 1\n"
            if k == 5 and a == 0:
                output += f"# push with {GITHUB.secret}, questions to {EMAIL.secret}\n"
            out.append(
                {
                    "role": "coder",
                    "instruction": f"Task {k}: write function f{k}",
                    "output": output,
                    "reward": reward - (k % 3) * 0.01,
                    "task_key": f"task-{k}",
                    "agent": "a" if k % 2 else "b",
                    "task_type": "feature" if k % 3 else "bugfix",
                    "complexity": "easy",
                    "time": (now - timedelta(days=200 if k >= 25 else 1)).isoformat(),
                }
            )
    for j in range(12):
        out.append(
            {
                "role": "judge",
                "instruction": f"Task {j}: review",
                "input": f"def g{j}(): pass",
                "output": "pass: correct" if j % 2 else "fail: wrong",
                "reward": 0.9,
                "task_key": f"judge-{j}",
            }
        )
    return out


@pytest.fixture
def loaded(store):
    text = "\n".join(json.dumps(r) for r in _runs())
    assert runs.import_runs(store, io.StringIO(text)).imported == TASKS * 4 + 12
    return store


def _rows(path: str) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def _task(text: str) -> int:
    match = re.search(r"Task (\d+):", text)
    assert match is not None, text
    return int(match.group(1))


def test_sft_split_by_task_dedupe_cap_and_metadata(loaded):
    r = sft.make_sft(loaded, "coder", max_per_task=3, test_fraction=0.2)
    train, test = _rows(r.files["train"]), _rows(r.files["test"])
    train_tasks, test_tasks = {_task(x["prompt"]) for x in train}, {_task(x["prompt"]) for x in test}
    assert train_tasks and test_tasks and not train_tasks & test_tasks
    # 3 attempts of each task pass min_reward 0.7; tasks 0-4 have one near-exact duplicate each.
    assert r.counts["matched"] == TASKS * 3 and r.counts["duplicates"] == 5
    assert len(train) + len(test) == TASKS * 3 - 5 == r.train_rows + r.test_rows
    meta = json.loads(Path(r.files["metadata"]).read_text())
    assert meta["id"] == r.dataset_id and meta["kind"] == "sft" and meta["format"] == "prompt_completion"
    assert meta["counts"]["train"] == len(train) and meta["counts"]["duplicates"] == 5
    assert len(meta["run_ids"]) == len(train) + len(test)
    assert meta["redaction"] == {"enabled": True, "counts": {"API_KEY": 1, "EMAIL": 1}}
    assert meta["content_hash"] == r.content_hash and meta["seed"] == 0 and meta["test_fraction"] == 0.2
    assert meta["template"]["source"] == "builtin" and "{instruction}" in meta["template"]["text"]
    assert meta["filters"]["min_reward"] == 0.7 and meta["filters"]["max_per_task"] == 3
    assert 0.7 <= meta["mean_reward"] <= 0.95
    assert train[0]["prompt"].endswith("### Code\n") and "### Context" not in train[0]["prompt"]


def test_sft_never_writes_a_secret(loaded):
    r = sft.make_sft(loaded, "coder")
    body = Path(r.files["train"]).read_text() + Path(r.files["test"]).read_text()
    assert GITHUB.secret not in body and EMAIL.secret not in body
    assert "[API_KEY]" in body and "[EMAIL]" in body
    raw = sft.make_sft(loaded, "coder", redact=False)
    meta = json.loads(Path(raw.files["metadata"]).read_text())
    assert meta["redaction"] == {"enabled": False, "counts": {}}
    assert GITHUB.secret in Path(raw.files["train"]).read_text() + Path(raw.files["test"]).read_text()


def test_filters_limit_and_determinism(loaded):
    best = sft.make_sft(loaded, "coder", limit=10, max_per_task=1)
    rows = _rows(best.files["train"]) + _rows(best.files["test"])
    assert best.mean_reward is not None
    assert len(rows) == 10 and best.mean_reward >= 0.93  # the best attempts (0.95, 0.94) first
    assert sft.make_sft(loaded, "coder", task_type="bugfix", min_rows=1).counts["matched"] == 10 * 3
    assert sft.make_sft(loaded, "coder", agent="a", min_rows=1).counts["matched"] == 15 * 3
    assert sft.make_sft(loaded, "coder", days=30, min_rows=1).counts["matched"] == 25 * 3
    assert sft.make_sft(loaded, "coder", max_length=20 + 33, min_rows=1).counts["matched"] < TASKS * 3
    one = sft.make_sft(loaded, "coder", seed=7)
    two = sft.make_sft(loaded, "coder", seed=7)
    assert one.dataset_id != two.dataset_id and one.content_hash == two.content_hash
    assert one.dataset_id is not None
    assert get_dataset(loaded, one.dataset_id).train_path == one.files["train"]
    assert {d.id for d in list_datasets(loaded)} >= {one.dataset_id, two.dataset_id, best.dataset_id}


@pytest.mark.parametrize(
    "fmt, columns",
    [
        ("prompt_completion", {"prompt", "completion"}),
        ("messages", {"messages"}),
        ("alpaca", {"instruction", "input", "output"}),
        ("sharegpt", {"conversations"}),
    ],
)
def test_each_sft_format_loads_with_datasets(loaded, fmt, columns):
    from datasets import load_dataset

    r = sft.make_sft(loaded, "judge", format=fmt, min_reward=0.5, test_fraction=0.25, min_rows=5)
    ds = load_dataset("json", data_files={"train": r.files["train"], "test": r.files["test"]})
    assert set(ds["train"].column_names) == columns
    assert len(ds["train"]) == r.train_rows and len(ds["test"]) == r.test_rows > 0
    if fmt == "alpaca":
        assert ds["train"][0]["input"].startswith("def g") and "### Code" not in ds["train"][0]["instruction"]


def test_preferences_dpo_and_kto(loaded):
    from datasets import load_dataset

    dpo = preferences.make_preferences(loaded, "coder", "dpo", margin=0.3, max_per_task=2)
    rows = _rows(dpo.files["train"]) + _rows(dpo.files["test"])
    assert rows and all(set(r) == {"prompt", "chosen", "rejected"} and r["chosen"] != r["rejected"] for r in rows)
    assert all(r["rejected"].endswith(" * 3\n") for r in rows)  # only the 0.1 attempt is 0.3 below the others
    assert set(load_dataset("json", data_files=dpo.files["train"])["train"].column_names) == {
        "prompt",
        "chosen",
        "rejected",
    }
    train_tasks = {_task(r["prompt"]) for r in _rows(dpo.files["train"])}
    assert not train_tasks & {_task(r["prompt"]) for r in _rows(dpo.files["test"])}
    kto = preferences.make_preferences(loaded, "coder", "kto", high=0.9, low=0.2, format="messages")
    ds = load_dataset("json", data_files=kto.files["train"])["train"]
    assert set(ds.column_names) == {"prompt", "completion", "label"}
    assert kto.counts["desirable"] == TASKS and kto.counts["undesirable"] == TASKS
    assert json.loads(Path(kto.files["metadata"]).read_text())["filters"]["high"] == 0.9


def _nothing_written(store) -> None:
    assert list_datasets(store) == []
    folder = store.home / "datasets"
    assert not folder.exists() or list(folder.iterdir()) == []


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (
            {"role": "planner"},
            r"Unknown role 'planner'.*coder, fixer, judge.*Roles with runs: coder \(120\), judge \(12\)",
        ),
        (
            {"role": "coder", "task_type": "refactor"},
            r"role coder: 120 -> min_reward 0.7: 90 -> task_type 'refactor': 0",
        ),
        ({"role": "coder", "min_reward": 0.99}, r"0 kept.*after 'min_reward'"),
        ({"role": "coder", "min_length": 50, "max_length": 10}, "min_length"),
        ({"role": "coder", "since": "2026-01-01", "days": 3}, "either 'since' or 'days'"),
        ({"role": "coder", "template": "Do {instruction} as {persona}"}, r"unknown placeholder.*\{persona\}"),
        ({"role": "coder", "template": "no placeholders"}, "must use {instruction} or {input}"),
        ({"role": "coder", "format": "csv"}, "format 'csv'"),
    ],
)
def test_bad_input_is_clear_and_writes_nothing(loaded, kwargs, message):
    with pytest.raises(InvalidInput, match=message):
        sft.make_sft(loaded, **kwargs)
    _nothing_written(loaded)


def test_contradictions_reported_together_and_kto_thresholds(loaded):
    with pytest.raises(InvalidInput) as err:
        sft.make_sft(loaded, "coder", min_length=9, max_length=1, limit=0, test_fraction=0.9)
    assert len(err.value.problems) == 3
    with pytest.raises(InvalidInput, match="low < high"):
        preferences.make_preferences(loaded, "coder", "kto", high=0.3, low=0.6)
    with pytest.raises(NotFound, match="list_datasets"):
        get_dataset(loaded, "coder-sft-nope")
    _nothing_written(loaded)


def test_custom_template_for_a_new_role(loaded):
    runs.log_run(loaded, {"role": "planner", "instruction": "plan a release", "output": "1. tag 2. build", "reward": 1})
    r = sft.make_sft(loaded, "planner", template="Plan ({role}): {instruction}\n", min_rows=1, test_fraction=0)
    assert _rows(r.files["train"]) == [{"prompt": "Plan (planner): plan a release\n", "completion": "1. tag 2. build"}]
    (loaded.home / "templates").mkdir()
    (loaded.home / "templates" / "planner.txt").write_text("PLAN {instruction}\n")
    r = sft.make_sft(loaded, "planner", min_rows=1, test_fraction=0)
    assert _rows(r.files["train"])[0]["prompt"] == "PLAN plan a release\n"


def test_crash_mid_write_leaves_no_dataset(loaded, monkeypatch):
    import learning.data.datasets as datasets_module

    def disk_full(folder):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(datasets_module, "content_hash", disk_full)
    monkeypatch.setattr(curation_result, "content_hash", disk_full)
    with pytest.raises(OSError):
        sft.make_sft(loaded, "coder")
    _nothing_written(loaded)

    monkeypatch.undo()

    def db_gone(store, row):
        raise RuntimeError("database went away")

    monkeypatch.setattr(datasets_module, "insert_dataset", db_gone)
    with pytest.raises(RuntimeError):
        sft.make_sft(loaded, "coder")
    monkeypatch.undo()
    _nothing_written(loaded)


def test_dry_run_reports_funnel_and_writes_nothing(loaded):
    r = sft.make_sft(loaded, "coder", task_type="feature", dry_run=True)
    assert r.dry_run and r.dataset_id is None and r.files == {}
    assert [(s.step, s.runs_left) for s in r.funnel] == [("role", 120), ("min_reward", 90), ("task_type", 60)]
    assert r.train_rows + r.test_rows == 60 - 3  # tasks 1, 2, 4 are features with a duplicate
    _nothing_written(loaded)


def test_mcp_tools_in_process(loaded):
    async def main():
        async with Client(build_server(str(loaded.home))) as client:
            tools = {t.name: t for t in (await client.list_tools()).tools}
            assert annotations_of(tools["list_datasets"]).read_only_hint is True
            assert annotations_of(tools["make_sft"]).read_only_hint is False
            made = await client.call_tool("make_sft", {"role": "coder", "format": "messages", "limit": 20})
            assert not made.is_error, made
            result = made.structured_content
            assert result["train_rows"] + result["test_rows"] == 20 and Path(result["files"]["train"]).is_file()
            pref = await client.call_tool("make_preferences", {"role": "coder", "kind": "kto", "dry_run": True})
            assert pref.structured_content["dry_run"] is True
            listed = (await client.call_tool("list_datasets", {"role": "coder"})).structured_content
            assert [d["id"] for d in listed["datasets"]] == [result["dataset_id"]]
            bad = await client.call_tool("make_sft", {"role": "coder", "template": "{instruction} {nope}"})
            assert bad.is_error and "{nope}" in text_of(bad.content[0])

    anyio.run(main)


def test_cli_json_dry_run_and_listing(loaded):
    home = loaded.home
    dry = run_cli("make-sft", "--role", "coder", "--dry-run", "--json", home=home)
    assert dry.returncode == 0, dry.stderr
    assert json.loads(dry.stdout)["dry_run"] is True and not (home / "datasets").exists()
    out = run_cli(
        "make-sft", "--role", "coder", "--limit", "12", "--format", "alpaca", "--no-redact", "--json", home=home
    )
    made = json.loads(out.stdout)
    assert made["dataset_id"] and Path(made["files"]["metadata"]).is_file() and made["redacted"] is False
    pref = run_cli("make-preferences", "--role", "coder", "--kind", "dpo", "--json", home=home)
    assert json.loads(pref.stdout)["kind"] == "dpo"
    listed = json.loads(run_cli("datasets", "--json", home=home).stdout)
    assert len(listed["datasets"]) == 2
    bad = run_cli("make-sft", "--role", "coder", "--task-type", "nope", home=home)
    assert bad.returncode != 0 and "task_type" in bad.stderr


@pytest.mark.slow
def test_trl_sft_trainer_accepts_prompt_completion_and_messages(loaded, tmp_path):
    """Two optimizer steps of TRL's SFTTrainer on each format, with a tiny local Llama."""
    import torch
    from datasets import load_dataset
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
    from trl import SFTConfig, SFTTrainer

    torch.manual_seed(0)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    corpus = [json.dumps(r) for r in _runs()[:40]]
    tok.train_from_iterator(
        corpus,
        trainers.BpeTrainer(
            vocab_size=300,
            special_tokens=["<pad>", "<s>", "</s>"],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        ),
    )
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>")
    tokenizer.chat_template = (
        "{% for m in messages %}<s>{{ m['role'] }}\n{{ m['content'] }}</s>{% endfor %}"
        "{% if add_generation_prompt %}<s>assistant\n{% endif %}"
    )
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=256,
        pad_token_id=token_id(tokenizer.pad_token_id),
        bos_token_id=1,
        eos_token_id=2,
    )
    # The best runs carry tests: their rows have a `tests` column, which TRL must leave alone.
    runs.import_runs(loaded, io.StringIO("\n".join(json.dumps(r) for r in _tested_runs())))
    for fmt in ("prompt_completion", "messages"):
        r = sft.make_sft(loaded, "coder", format=fmt, limit=16)
        data = load_dataset("json", data_files=r.files["train"])["train"]
        assert "tests" in data.column_names
        args = SFTConfig(
            output_dir=str(tmp_path / fmt),
            max_steps=2,
            per_device_train_batch_size=2,
            use_cpu=True,
            bf16=False,
            gradient_checkpointing=False,
            report_to=[],
            save_strategy="no",
            max_length=128,
            logging_steps=1,
            learning_rate=1e-3,
        )
        trainer = SFTTrainer(model=LlamaForCausalLM(config), args=args, train_dataset=data, processing_class=tokenizer)
        out = trainer.train()
        assert out.global_step == 2 and out.training_loss > 0


def test_written_files_are_read_only(loaded):
    import os
    import stat

    r = sft.make_sft(loaded, "coder")
    for path in r.files.values():
        assert not os.stat(path).st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH)


def _tested_runs() -> list[dict]:
    """Two attempts per task (one good, one bad), each run carrying its task's tests."""
    return [
        {
            "role": "coder",
            "instruction": f"Task {k}: write f{k}",
            "output": f"def f{k}():\n    return {k * good}\n",
            "reward": 1.0 if good else 0.0,
            "task_key": f"tested-{k}",
            "tests": [f"assert f{k}() == {k}", "assert True"],
        }
        for k in range(1, 13)
        for good in (1, 0)
    ]


@pytest.mark.parametrize("fmt", ["prompt_completion", "messages", "alpaca", "sharegpt"])
def test_sft_rows_carry_their_runs_tests_in_every_format(store, fmt):
    from learning.data.formats import to_example

    runs.import_runs(store, io.StringIO("\n".join(json.dumps(r) for r in _tested_runs())))
    r = sft.make_sft(store, "coder", format=fmt, test_fraction=0.25, min_rows=5)
    rows = _rows(r.files["train"]) + _rows(r.files["test"])
    assert r.test_rows and len(rows) == 12
    for row in rows:
        example = to_example(row)
        k = _task(json.dumps(example["prompt"]))
        assert row["tests"] == example["tests"] == [f"assert f{k}() == {k}", "assert True"]


@pytest.mark.parametrize("kind, fmt", [("dpo", "prompt_completion"), ("dpo", "messages"), ("kto", "messages")])
def test_preference_rows_carry_their_runs_tests(store, kind, fmt):
    runs.import_runs(store, io.StringIO("\n".join(json.dumps(r) for r in _tested_runs())))
    r = preferences.make_preferences(store, "coder", kind, format=fmt, min_rows=5, test_fraction=0.25)
    rows = _rows(r.files["train"]) + _rows(r.files["test"])
    assert rows and all(row["tests"][1] == "assert True" and row["tests"][0].startswith("assert f") for row in rows)


def test_rows_without_tests_have_no_tests_key(loaded):
    r = sft.make_sft(loaded, "coder")
    assert not any("tests" in row for row in _rows(r.files["train"]) + _rows(r.files["test"]))
