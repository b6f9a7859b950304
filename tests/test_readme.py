"""The README stays true: set-up commands first, every MCP tool and CLI command listed, and every
`learnloop` command it shows exists."""

from __future__ import annotations

import re

import typer

from tests.conftest import ROOT

README = (ROOT / "README.md").read_text()


def _commands() -> set[str]:
    from server.cli import app

    return set(typer.main.get_command(app).commands)


def test_setup_install_demo_and_test_commands_come_first():
    first_block = README.split("```bash", 1)[1].split("```", 1)[0]
    assert 'pip install -e ".[dev]"' in first_block
    assert "learnloop demo" in first_block and "python -m pytest" in first_block


def test_every_mcp_tool_is_documented(tmp_path):
    from server.mcp import build_server

    tools = [t.name for t in build_server(str(tmp_path))._tool_manager.list_tools()]
    missing = [t for t in tools if f"| `{t}` |" not in README]
    assert not missing, f"add these tools to the README's map: {missing}"


def test_every_cli_command_is_documented_and_every_shown_command_exists():
    commands = _commands()
    missing = [c for c in commands if f"`learnloop {c}`" not in README]
    assert not missing, f"add these commands to the README's map: {missing}"
    blocks = re.findall(r"```(?:bash|sh)?\n(.*?)```", README, flags=re.S)
    shown = {m for block in blocks for m in re.findall(r"^\s*(?:\S+=\S+\s+)*learnloop ([a-z][a-z-]*)", block, flags=re.M)}
    assert shown, "the README shows no learnloop command"
    assert shown <= commands, f"the README shows commands that do not exist: {shown - commands}"
