"""The two faces agree: every MCP tool and its CLI command take the same arguments, with the
same names, defaults and required-ness, and no verb exists in one face only unless listed
here with its reason. Checked on what the faces actually built, not on the declarations."""

from __future__ import annotations

import inspect
from typing import Any

import anyio
import click
import pytest
import typer

from server.catalog import VERBS
from server.cli import app
from server.mcp import build_server
from server.verbs import arguments

# Verbs in one face only, on purpose.
MCP_ONLY = {
    "job_status": "the CLI's `jobs ID` shows a job",
    "wait_job": "the CLI's `jobs ID --wait` follows a job with a progress bar",
    "cancel_job": "the CLI's `jobs ID --cancel` cancels a job",
    "list_jobs": "the CLI's `jobs` lists jobs",
}
CLI_ONLY = {
    "serve": "starts the MCP server itself",
    "gateway": "starts the OpenAI-compatible gateway, a long-running server",
    "dashboard": "a read-only web page for a person to look at, a long-running server",
    "demo": "a person's walk through the whole loop, minutes long, in the foreground",
    "init-base": "builds the embedded base in the foreground; train_adapter builds it on first use",
    "jobs": "one command for job_status, wait_job, cancel_job and list_jobs",
    "report": "writes a PNG for a person to look at",
    "deploy-target": "sets the URL learnloop posts adapters to: a person's choice, never an agent's",
}
# Arguments only the CLI takes (declared with learning.params.CLI_ONLY): a person names a place
# outside the home; over MCP, files stay under the home and deployments go where a person said;
# only the home's owner corrects a reward.
CLI_ONLY_ARGUMENTS = {
    "import": {"path": "reads a file anywhere on this machine; over MCP the runs come as jsonl text"},
    "reward": {
        "override": "the home owner's correction of a reward, without its token; over MCP a reward is set once",
        "reason": "why the correction, kept in the run's reward history",
    },
    "export": {"out": "writes anywhere; over MCP exports go to <home>/exports/<id>/<format>"},
    "deploy": {"url": "posts the adapter's path to a URL; over MCP: the route's deploy target or loopback"},
}
# Arguments shown differently on purpose, by command.
CLI_EXTRAS = {  # CLI-only options, folded into the verb's arguments
    "make-sft": {"template_file"},
    "make-preferences": {"template_file"},
    "train": {"epochs", "lr", "rank", "config", "wait"},  # shortcuts for `overrides`; follow the job
    "eval": {"wait"},
    "export": {"wait"},
    "base import": {"wait"},
    "cycle": {"wait"},
}
STDIN = {"log": {"output"}, "run-tests": {"code"}}  # required over MCP; on the CLI absent or '-' reads stdin


def _commands() -> dict[str, click.Command]:
    out: dict[str, click.Command] = {}

    def walk(prefix: str, group: Any) -> None:
        for name, cmd in group.commands.items():
            if hasattr(cmd, "commands"):  # a group of sub-commands
                walk(f"{prefix}{name} ", cmd)
            else:
                out[prefix + name] = cmd

    walk("", typer.main.get_command(app))  # type: ignore[arg-type]
    return out


@pytest.fixture(scope="module")
def faces(tmp_path_factory):
    server = build_server(str(tmp_path_factory.mktemp("home")))
    tools = {t.name: t.input_schema for t in anyio.run(server.list_tools)}
    return tools, _commands()


def test_no_verb_in_one_face_only(faces):
    tools, commands = faces
    paired_tools = {v.tool for v in VERBS if v.tool and v.command}
    paired_commands = {v.command for v in VERBS if v.tool and v.command}
    assert set(tools) - paired_tools == set(MCP_ONLY)
    assert set(commands) - paired_commands == set(CLI_ONLY)


@pytest.mark.parametrize("verb", [v for v in VERBS if v.tool and v.command], ids=lambda v: v.tool)
def test_tool_and_command_take_the_same_arguments(faces, verb):
    tools, commands = faces
    schema, command = tools[verb.tool], commands[verb.command]
    props, required = schema["properties"], set(schema.get("required", []))
    params = {p.name: p for p in command.params if p.name not in ("home", "as_json")}
    extras = CLI_EXTRAS.get(verb.command, set()) | set(CLI_ONLY_ARGUMENTS.get(verb.command, {}))
    assert set(params) - extras == set(props), "names differ"
    assert not extras - set(params), "a listed extra is gone: update CLI_EXTRAS"
    for name, prop in props.items():
        p = params[name]
        cli_required = p.required or name in STDIN.get(verb.command, set())
        assert (name in required) == cli_required, f"{name}: required-ness differs"
        if name not in required:
            assert prop.get("default") == p.default, f"{name}: default {prop.get('default')!r} vs {p.default!r}"
        if name == "confirm":  # a person's consent is --yes on a terminal
            assert "--yes" in p.opts


def test_the_mismatches_once_found_are_gone(faces):
    tools, commands = faces
    eval_options = {p.name for p in commands["eval"].params}
    assert {"min_loss_improvement", "pass_rate_tolerance"} <= eval_options
    drift = {o for p in commands["drift"].params for o in getattr(p, "opts", [])}
    assert {"--new-id", "--old-id"} <= drift and {"new_id", "old_id"} <= set(tools["detect_drift"]["properties"])
    assert "--time" in {o for p in commands["log"].params for o in getattr(p, "opts", [])}
    assert "set_deploy_target" not in tools and "deploy-target" in commands
    assert "confirm" in {p.name for p in commands["cycle"].params}  # --to-production asks, or takes --yes


@pytest.mark.parametrize("verb", [v for v in VERBS if v.tool and v.command], ids=lambda v: v.tool)
def test_cli_only_arguments_are_declared_and_listed(faces, verb):
    tools, commands = faces
    declared = {a.name for a in arguments(verb) if a.cli_only}
    assert declared == set(CLI_ONLY_ARGUMENTS.get(verb.command, {})), "update CLI_ONLY_ARGUMENTS with the reason"
    assert not declared & set(tools[verb.tool]["properties"]), "a CLI-only argument reached the tool"
    assert declared <= {p.name for p in commands[verb.command].params}


@pytest.mark.parametrize("verb", VERBS, ids=lambda v: v.tool or v.command)
def test_each_row_declares_the_context_its_function_takes(verb):
    """A row's actor=True and stdin_stream=True are what the faces pass: the function takes them."""
    taken = set(inspect.signature(verb.fn).parameters)
    assert verb.actor == ("actor" in taken), "set actor= in the catalog's row"
    assert verb.cli.stdin_stream == ("stdin" in taken), "set CliShape(stdin_stream=) in the catalog's row"


def test_every_screen_named_in_the_catalog_exists():
    from server import render

    assert [v.cli.render for v in VERBS if v.cli.render and not callable(getattr(render, v.cli.render, None))] == []
