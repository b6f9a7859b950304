"""Every command's --help prints (help text is plain, never read as rich markup), and errors that
quote a caller's input show it as text."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from server.catalog import VERBS
from server.cli import app
from tests.conftest import run_cli

runner = CliRunner()
COMMANDS = sorted(
    {v.command for v in VERBS if v.command} | {"serve", "gateway", "dashboard", "demo", "jobs", "init-base"}
)


def test_the_top_level_help_and_the_gateways_print():
    for args in (["--help"], ["gateway", "--help"]):
        result = runner.invoke(app, args)
        assert result.exit_code == 0, (args, result.output, result.exception)
    assert "learnloop/<role>[/<task_type>]" in runner.invoke(app, ["gateway", "--help"]).output


@pytest.mark.parametrize("command", COMMANDS)
def test_every_commands_help_prints(command):
    result = runner.invoke(app, [*command.split(), "--help"])
    assert result.exit_code == 0, (command, result.output, result.exception)
    assert "Usage:" in result.output


def test_an_error_quoting_markup_shows_it_as_text(home):
    shown = run_cli("reward", "99", "0.5", "--reward-token", "[/x]", home=home)
    assert shown.returncode == 1 and "No run 99" in shown.stderr and "Traceback" not in shown.stderr
    shown = run_cli("make-sft", "--role", "[bold red]x[/]", home=home)
    assert shown.returncode == 1 and "role '[bold red]x[/]' is not a role name" in shown.stderr, shown.stderr


def test_a_task_key_with_emoji_codes_and_tags_is_shown_as_typed(home):
    key = ":warning: [/x] :smile:"
    shown = run_cli("log", "--role", "coder", "--output", "x = 1", "--reward", "0.5", "--task-key", key, home=home)
    assert shown.returncode == 0 and key in shown.stdout, (shown.stdout, shown.stderr)
