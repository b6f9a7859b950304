"""The README is a map that tests keep true: set-up commands, every MCP tool, every CLI command."""

from __future__ import annotations

import re

import anyio
from mcp import Client

from server.cli import app
from server.mcp import build_server
from tests.conftest import ROOT

README = (ROOT / "README.md").read_text()


def section(title: str) -> str:
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", README, flags=re.S | re.M)
    assert match, f"README has no '## {title}' section"
    return match.group(1)


def table_rows(text: str) -> list[list[str]]:
    rows = []
    for line in text.splitlines():
        if line.startswith("|") and not re.match(r"^\|[\s:-]+\|", line):
            rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
    return rows[1:]  # without the header


def test_setup_commands_match_ci():
    setup = section("Set up, run, test")
    ci = (ROOT / ".ci" / "run").read_text()
    assert 'pip install -e ".[dev]"' in setup and 'pip install -e ".[dev]"' in ci
    assert "learnloop demo" in setup
    assert "python -m pytest -q" in setup and "python -m pytest -q" in ci


def test_every_mcp_tool_is_documented_with_its_inputs(home):
    async def tools():
        async with Client(build_server(str(home))) as client:
            return {t.name: t for t in (await client.list_tools()).tools}

    served = anyio.run(tools)
    rows = table_rows(section("MCP tools"))
    documented = {re.sub(r"[`]", "", row[0]): row for row in rows}
    assert set(documented) == set(served), "README's MCP tool table differs from the server's tools"
    for name, row in documented.items():
        inputs = set(re.findall(r"`(\w+)`", row[1]))
        schema = served[name].input_schema
        assert inputs <= set(schema.get("properties", {})), f"{name}: README names inputs the tool lacks"
        assert set(schema.get("required", [])) <= inputs, f"{name}: README omits required inputs"


def test_every_cli_command_is_documented():
    commands = {c.name or c.callback.__name__ for c in app.registered_commands}
    commands |= {g.name for g in app.registered_groups}
    rows = table_rows(section("CLI"))
    documented = {re.match(r"`learnloop ([\w-]+)", row[0]).group(1) for row in rows}
    assert documented == commands
