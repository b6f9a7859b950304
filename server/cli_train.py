"""CLI commands for the embedded base model and training: learnloop init-base, learnloop train."""

from __future__ import annotations

from typing import Optional

import typer
from typing_extensions import Annotated

from learning.store import Store
from server.cli import HomeOpt, JsonOpt, console, emit, fmt


def register(app: typer.Typer) -> None:
    @app.command("init-base")
    def init_base(
        size: Annotated[str, typer.Option("--size", help="tiny (seconds, for tests) or small (about a minute, for the demo).")] = "small",
        seed: Annotated[int, typer.Option("--seed", help="Seed of the corpus, tokenizer and weights.")] = 0,
        force: Annotated[bool, typer.Option("--force", help="Rebuild even if it exists.")] = False,
        home: HomeOpt = None,
        as_json: JsonOpt = False,
    ) -> None:
        """Build the embedded base model under <home>/base/<size>/ (reused if it exists)."""
        from learning.tinybase import ensure_base

        store = Store(home)
        info = ensure_base(store, size, seed=seed, force=force,
                           log=None if as_json else (lambda m: console.print(m, highlight=False)))

        def render(i) -> None:
            verb = "built" if i.built else "already there"
            console.print(f"base [bold]{i.size}[/] {verb}: {i.path} ({i.parameters:,} parameters, "
                          f"pretraining loss {fmt(i.final_loss)}, build {fmt(i.build_s, 1)} s)", highlight=False)

        emit(info, as_json, render)
