"""Over MCP nothing reaches outside the home: a file to import is named only on the CLI, an
adapter folder with links in it is not registered, and the adapter resource reads no link.

Each test drives the real MCP server through the SDK's client, with a secret JSON file beside
the home that no call may read or return."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import anyio
import pytest
from mcp import Client

from learning.errors import InvalidInput
from learning.registry import adapters as registry
from learning.registry import folders
from learning.store import Store
from server.mcp import build_server
from tests.conftest import run_cli, text_of

SECRET = {"role": "coder", "reward": 1.0, "output": "sk-not-for-agents"}


@pytest.fixture
def secret(tmp_path) -> Path:
    path = tmp_path / "private" / "secret.json"
    path.parent.mkdir()
    path.write_text(json.dumps(SECRET))
    return path


def _folder(root: Path) -> Path:
    """A PEFT adapter folder's files (config and a valid, tiny safetensors header)."""
    root.mkdir(parents=True)
    (root / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "base_model_name_or_path": "x/y"}))
    header = json.dumps({"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}).encode()
    (root / "adapter_model.safetensors").write_bytes(len(header).to_bytes(8, "little") + header + b"\0" * 4)
    return root


async def _call(home: Path, tool: str, args: dict):
    async with Client(build_server(str(home))) as client:
        return await client.call_tool(tool, args)


def test_import_reads_no_file_over_mcp(home, secret):
    jsonl = secret.with_suffix(".jsonl")
    jsonl.write_text(json.dumps(SECRET) + "\n")
    res = anyio.run(_call, home, "import_runs", {"path": str(jsonl)})
    assert res.is_error and "Unknown argument for import_runs: 'path'" in text_of(res.content[0])
    res = anyio.run(_call, home, "import_runs", {})
    assert res.is_error and "jsonl" in text_of(res.content[0])
    with Store(home).read() as conn:
        assert conn.execute("SELECT count(*) FROM runs").fetchone()[0] == 0
    by_person = run_cli("import", str(jsonl), "--json", home=home)  # the CLI still reads files
    assert by_person.returncode == 0 and json.loads(by_person.stdout)["imported"] == 1


def test_register_refuses_a_folder_with_links(home, secret, tmp_path):
    folder = _folder(tmp_path / "adapter")
    (folder / "eval").mkdir()
    (folder / "eval" / "metrics.json").symlink_to(secret)
    (folder / "tokens").symlink_to(secret.parent)
    res = anyio.run(_call, home, "register_adapter", {"path": str(folder), "role": "coder"})
    text = text_of(res.content[0])
    assert res.is_error and "symbolic links" in text and "'eval/metrics.json'" in text and "'tokens'" in text
    assert not (home / "adapters").exists() or list((home / "adapters").iterdir()) == []
    assert registry.list_adapters(Store(home)) == []
    with pytest.raises(InvalidInput, match="symbolic links"):
        folders.register_adapter(Store(home), str(folder), "coder", base="x/y", load_check=False)
    # without the links it registers, and a link to the folder itself is fine (it names the folder)
    (folder / "eval" / "metrics.json").unlink()
    (folder / "tokens").unlink()
    (tmp_path / "named").symlink_to(folder)
    made = folders.register_adapter(Store(home), str(tmp_path / "named"), "coder", base="x/y", load_check=False)
    assert Path(made.path).is_relative_to(home.resolve())


def test_adapter_resource_reads_no_link(home, secret):
    """metrics.json of an adapter (however it came to be a link) is read only when it is a regular
    file under the home."""
    store = Store(home)
    folder = _folder(home / "adapters" / "coder-x")
    (folder / "eval").mkdir()
    (folder / "eval" / "metrics.json").symlink_to(secret)
    registry.create_adapter(store, "coder-x", "coder", "x/y", str(folder), status="trained")
    linked_eval = home / "adapters" / "coder-y"
    _folder(linked_eval)
    (linked_eval / "eval").symlink_to(secret.parent)
    shutil.copy(secret, secret.parent / "metrics.json")
    registry.create_adapter(store, "coder-y", "coder", "x/y", str(linked_eval), status="trained")

    async def main():
        async with Client(build_server(str(home))) as client:
            return [
                json.loads(text_of((await client.read_resource(f"learnloop://adapters/{a}")).contents[0]))
                for a in ("coder-x", "coder-y")
            ]

    assert [r["evaluation"] for r in anyio.run(main)] == [None, None]
    assert "sk-not-for-agents" not in json.dumps(anyio.run(main))
    (folder / "eval" / "metrics.json").unlink()
    (folder / "eval" / "metrics.json").write_text(json.dumps({"pass_rate": 0.5}))
    assert anyio.run(main)[0]["evaluation"] == {"pass_rate": 0.5}  # a regular file is read
