"""The `learnloop` command's entry point.

`learnloop serve` is what MCP clients spawn, and they wait for it: it starts the server
without loading the rest of the CLI (typer, rich and every other command's modules). Every
other command, and `serve --help`, goes through the full CLI in server/cli.py, which declares
the same options.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys


def _serve(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="learnloop serve", add_help=False)
    parser.add_argument("--home", default=os.environ.get("LEARNLOOP_HOME"))
    parser.add_argument("--transport", default="stdio")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--token", default=None)
    parser.add_argument("--allow-host", action="append", default=[])
    args = parser.parse_args(argv)

    # Start-up builds thousands of pydantic objects (the SDK's types and our tool schemas);
    # collecting garbage while they are built only slows it. serve() freezes them and turns
    # the collector back on once the server is built.
    gc.disable()
    from learning.errors import LearnloopError
    from server.mcp import serve

    try:
        if args.transport not in ("stdio", "http"):
            raise LearnloopError(f"--transport must be stdio or http, got {args.transport!r}.")
        serve(args.home, args.transport, args.host, args.port, args.token, args.allow_host)
    except LearnloopError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)


def main() -> None:
    argv = sys.argv[1:]
    if argv[:1] == ["serve"] and not {"--help", "-h"} & set(argv):
        _serve(argv[1:])
        return
    from server.cli import main as cli_main

    cli_main()
