"""Ids from callers are ids: every dataset, adapter, job, experiment id and role that reaches a
verb is looked up in the store or checked as a name, never joined into a path.

A home with a real trained adapter and a recorded dataset sits beside a neighbour folder that
holds a dataset's files (test.jsonl with tests); each hostile id is tried on every verb that
takes one, through the real MCP server: each call is an error that names the id, and neither
the home (files and tables) nor the neighbour changes."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path
from urllib.parse import quote

import anyio
import pytest
from mcp import Client
from mcp.shared.exceptions import MCPError

from learning.errors import InvalidInput, NotFound
from learning.evaluate import evaluation
from learning.registry import adapters as registry
from learning.registry import folders
from learning.store import Store
from server.mcp import build_server
from tests.conftest import run_cli, text_of
from tests.support.tiny_models import build_base, toy_rows, train_toy_adapter, write_dataset


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    root = tmp_path_factory.mktemp("toy")
    base = build_base(root / "base")
    return base, train_toy_adapter(base, root / "adapter", toy_rows(0, 20), steps=2)


@pytest.fixture
def world(tmp_path, toy):
    """root/home: an adapter coder-toy trained on dataset toy-ds; root/somewhere: a dataset's files
    that no store recorded, whose tests would leave a mark if anything ran them."""
    base, folder = toy
    home, neighbour = tmp_path / "home", tmp_path / "somewhere"
    store = Store(home)
    dest = home / "adapters" / "coder-toy"
    shutil.copytree(folder, dest)
    write_dataset(home, "toy-ds", toy_rows(0, 20), toy_rows(100, 4))
    registry.create_adapter(store, "coder-toy", "coder", str(base), str(dest), status="trained", dataset_id="toy-ds")
    neighbour.mkdir()
    mark = tmp_path / "ran"
    row = {"prompt": "p", "completion": "def f():\n    return 1\n", "tests": [f"open({str(mark)!r}, 'w')"]}
    for name in ("train.jsonl", "test.jsonl"):
        (neighbour / name).write_text(json.dumps(row) + "\n")
    (neighbour / "metadata.json").write_text("{}")
    (neighbour / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(base)}))
    return store, tmp_path


def state(store: Store, root: Path) -> tuple:
    """Every file under root (home and neighbour) with its size, and the row count of every table."""
    files = sorted(
        (str(p.relative_to(root)), p.stat().st_size)
        for p in root.rglob("*")
        if p.is_file() and not p.name.startswith("learnloop.db")
    )
    with sqlite3.connect(store.path) as conn:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
        counts = {t: conn.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0] for t in tables}
    return files, counts


BAD = ["../../somewhere", "../somewhere", "a/b", "a\x00b", "x" * 5000, "coder\n", "..", "ABSOLUTE"]


def calls(bad: str) -> list[tuple[str, dict]]:
    """(tool, arguments) for every id-taking argument of every tool, with `bad` in that argument."""
    return [
        ("job_status", {"job_id": bad}),
        ("wait_job", {"job_id": bad, "timeout_s": 1}),
        ("cancel_job", {"job_id": bad}),
        ("make_sft", {"role": bad}),
        ("make_preferences", {"role": bad}),
        ("train_adapter", {"role": "coder", "dataset_id": bad, "dry_run": True}),
        ("train_adapter", {"role": bad, "dataset_id": "toy-ds", "dry_run": True}),
        ("train_adapter", {"role": "coder", "dataset_id": "toy-ds", "adapter_id": bad}),
        ("evaluate_adapter", {"adapter_id": "coder-toy", "dataset_id": bad}),
        ("evaluate_adapter", {"adapter_id": bad}),
        ("promote", {"adapter_id": bad, "confirm": True}),
        ("rollback", {"role": bad, "confirm": True}),
        ("register_adapter", {"path": "PATH", "role": "coder", "dataset_id": bad}),
        ("register_adapter", {"path": "PATH", "role": bad}),
        ("adapter_history", {"adapter_id": bad}),
        ("select_adapter", {"role": bad}),
        ("detect_drift", {"new_id": bad, "old_id": "coder-toy"}),
        ("detect_drift", {"new_id": "coder-toy", "old_id": bad}),
        ("detect_drift", {"experiment_id": bad}),
        ("detect_drift", {"role": bad}),
        ("start_experiment", {"role": "coder", "candidate_id": bad}),
        ("stop_experiment", {"experiment_id": bad}),
        ("stop_experiment", {"role": bad}),
        ("export_adapter", {"adapter_id": bad, "format": "peft"}),
        ("deploy_adapter", {"adapter_id": bad, "target": "llamacpp"}),
        ("run_cycle", {"role": bad, "confirm": True}),
    ]


@pytest.mark.parametrize("bad", BAD, ids=["up2", "up1", "slash", "nul", "long", "newline", "dotdot", "absolute"])
def test_every_verb_refuses_a_hostile_id_and_changes_nothing(world, bad):
    store, root = world
    bad = str(root / "somewhere") if bad == "ABSOLUTE" else bad
    before = state(store, root)
    named = repr(bad)[1:21]  # errors show the id as its repr, cut when long

    async def main():
        async with Client(build_server(str(store.home))) as client:
            tools = {t.name for t in (await client.list_tools()).tools}
            for tool, args in calls(bad):
                assert tool in tools, tool
                args = {k: str(root / "somewhere") if v == "PATH" else v for k, v in args.items()}
                result = await client.call_tool(tool, args)
                text = text_of(result.content[0])
                assert result.is_error, (tool, args, text[:300])
                assert named in text, (tool, text[:300])
                assert len(text) < 1500, (tool, len(text))
            with pytest.raises(MCPError, match="No adapter|Unknown resource|Error creating resource"):
                await client.read_resource(f"learnloop://adapters/{quote(bad, safe='')}")

    anyio.run(main)
    assert state(store, root) == before
    assert not (root / "ran").exists()


def test_evaluate_refuses_a_dataset_path_and_starts_nothing(world):
    """The hole this closes: a test.jsonl anywhere on disk was evaluated when its folder was
    given as a dataset id, and the gate recorded "evaluated on ../../somewhere"."""
    store, root = world
    before = state(store, root)
    for bad in ("../../somewhere", "../somewhere", str(root / "somewhere")):
        with pytest.raises((NotFound, InvalidInput), match="dataset id|No dataset"):
            evaluation.evaluate_adapter(store, "coder-toy", bad)
    with pytest.raises(NotFound, match="No dataset 'not-made-yet'.*list_datasets.*make_sft"):
        evaluation.evaluate_adapter(store, "coder-toy", "not-made-yet")
    assert state(store, root) == before
    cli = run_cli("eval", "coder-toy", "--dataset", "../../somewhere", "--no-wait", home=store.home)
    assert cli.returncode != 0 and "../../somewhere" in cli.stderr + cli.stdout
    assert state(store, root) == before


def test_a_dataset_recorded_outside_the_home_is_not_used(world):
    """A row whose path leads out of the home (a tampered or moved store) is refused by name."""
    store, root = world
    with store.write() as conn:
        conn.execute(
            "INSERT INTO datasets (id, role, kind, format, created, path, train_rows, test_rows, content_hash)"
            " VALUES ('far', 'coder', 'sft', 'prompt_completion', 0, ?, 1, 1, 'x')",
            (str(root / "somewhere"),),
        )
    before = state(store, root)
    with pytest.raises(InvalidInput, match="Dataset far is recorded at .*outside the learnloop home"):
        evaluation.evaluate_adapter(store, "coder-toy", "far")
    assert state(store, root) == before


def test_register_checks_its_ids_before_reading_or_copying(world, toy):
    store, root = world
    _, folder = toy
    before = state(store, root)
    for kwargs, error, words in [
        ({"adapter_id": "../../somewhere"}, InvalidInput, "Invalid adapter id '../../somewhere'"),
        ({"adapter_id": "ok\n"}, InvalidInput, "Invalid adapter id 'ok\\\\n'"),
        ({"dataset_id": "../../somewhere"}, InvalidInput, "Invalid dataset id '../../somewhere'"),
        ({"dataset_id": "no-such"}, NotFound, "No dataset 'no-such'"),
        ({"adapter_id": "coder-toy"}, Exception, "already exists"),
    ]:
        with pytest.raises(error, match=words):
            folders.register_adapter(store, str(folder), "coder", load_check=False, **kwargs)
    assert state(store, root) == before
