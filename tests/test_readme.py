"""The README and docs/ stay true: set-up commands first, every MCP tool and CLI command listed in
the README's map, every `learnloop` command (and option) they show exists, every file they cite
and every page they link exists, and the README stays a map."""

from __future__ import annotations

import re

import anyio
import typer
from typer.core import TyperGroup

from tests.conftest import ROOT

README = (ROOT / "README.md").read_text()
DOCS = {p.relative_to(ROOT).as_posix(): p.read_text() for p in sorted((ROOT / "docs").glob("*.md"))}
BENCH_README = (ROOT / "bench" / "README.md").read_text()
PAGES = {"README.md": README, **DOCS, "bench/README.md": BENCH_README}


def _cli() -> TyperGroup:
    from server.cli import app

    cli = typer.main.get_command(app)
    assert isinstance(cli, TyperGroup)  # an app of several commands
    return cli


def _commands() -> set[str]:
    return set(_cli().commands)


def _options(command) -> set[str]:
    """Every option a command (or, for a group, any of its subcommands) accepts."""
    found = {"--help"}
    for param in command.params:
        found |= {o for o in [*param.opts, *param.secondary_opts] if o.startswith("--")}
    for sub in getattr(command, "commands", {}).values():
        found |= _options(sub)
    return found


def _shown_commands(text: str) -> list[tuple[str, str]]:
    """(command, the whole shown command line with its continuation lines) for every `learnloop X`
    at the start of a line of a bash/sh/plain code block."""
    blocks = re.findall(r"```(?:bash|sh)?\n(.*?)```", text, flags=re.S)
    shown = []
    for block in blocks:
        lines = block.replace("\\\n", " ").splitlines()
        for line in lines:
            m = re.match(r"^\s*(?:\S+=\S+\s+)*learnloop ([a-z][a-z-]*)(.*)$", line)
            if m:
                shown.append((m.group(1), m.group(2).split("#", 1)[0]))
    return shown


def test_setup_install_demo_and_test_commands_come_first():
    first_block = README.split("```bash", 1)[1].split("```", 1)[0]
    assert 'pip install -e ".[dev]"' in first_block
    assert "learnloop demo" in first_block and "python -m pytest" in first_block


def test_readme_is_a_map():
    lines = README.count("\n")
    assert lines <= 260, f"the README has {lines} lines: move the detail to docs/<stage>.md"
    for page in DOCS:
        assert f"]({page})" in README, f"the README does not link {page}"
    assert "](bench/README.md)" in README


def test_every_mcp_tool_is_documented(tmp_path):
    from server.mcp import build_server

    tools = [t.name for t in anyio.run(build_server(str(tmp_path)).list_tools)]
    missing = [t for t in tools if f"| `{t}` |" not in README]
    assert not missing, f"add these tools to the README's map: {missing}"


def test_every_cli_command_is_documented_and_every_shown_command_exists():
    commands = _commands()
    missing = [c for c in commands if f"`learnloop {c}`" not in README]
    assert not missing, f"add these commands to the README's map: {missing}"
    assert _shown_commands(README), "the README shows no learnloop command"
    for page, text in PAGES.items():
        shown = {c for c, _ in _shown_commands(text)}
        assert shown <= commands, f"{page} shows commands that do not exist: {shown - commands}"


def test_every_option_shown_exists():
    cli = _cli()
    wrong = []
    for page, text in PAGES.items():
        for command, rest in _shown_commands(text):
            options = _options(cli.commands[command]) if command in cli.commands else set()
            wrong += [
                f"{page}: learnloop {command} {o}"
                for o in re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", rest)
                if o not in options
            ]
    assert not wrong, f"options shown that the command does not have: {wrong}"


def test_every_cited_file_and_linked_page_exists():
    missing = []
    for page, text in PAGES.items():
        base = (ROOT / page).parent
        cited = re.findall(r"`((?:learning|server|tests|bench|examples|docs)/[\w./-]+)`", text)
        missing += [f"{page}: {p}" for p in cited if not (ROOT / p.rstrip("/")).exists()]
        for path, anchor in re.findall(r"\]\(([^)#:]+)(?:#([^)]*))?\)", text):
            target = base / path
            if not target.exists():
                missing.append(f"{page}: {path}")
            elif anchor and anchor not in _anchors(target.read_text()):
                missing.append(f"{page}: {path}#{anchor}")
    assert not missing, f"cited or linked paths that do not exist: {missing}"


def _anchors(markdown: str) -> set[str]:
    """The anchors GitHub gives a page's headings: lower case, punctuation dropped, spaces as dashes."""
    headings = re.findall(r"^#+ (.+)$", markdown, flags=re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}
