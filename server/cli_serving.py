"""CLI commands for serving: learnloop export, learnloop deploy."""

from __future__ import annotations

from typing import Optional

import typer
from rich.table import Table
from typing_extensions import Annotated

from learning.serve import deploy
from learning.serve import export
from learning.errors import InvalidInput
from learning.store import Store
from server.cli import HomeOpt, JsonOpt, console, emit, fmt


def _render_export(r: export.ExportResult) -> None:
    console.print(f"exported [bold]{r.adapter_id}[/] as {r.format} ({r.dtype}) to {r.out_dir} in {r.seconds}s", highlight=False)
    for line in r.checks:
        console.print(f"  [green]ok[/] {line}", highlight=False)
    for line in r.warnings:
        console.print(f"  [yellow]warning[/] {line}", highlight=False)
    table = Table(show_header=True)
    table.add_column("file")
    table.add_column("bytes", justify="right")
    for f in r.files:
        table.add_row(f.path, str(f.bytes))
    console.print(table)


def _render_deployment(d: deploy.Deployment) -> None:
    state = "[green]active[/]" if d.status == "active" else f"[yellow]{d.status}[/]"
    console.print(f"{d.adapter_id} -> {d.target} {d.url} as [bold]{d.served_name}[/] {state}"
                  + (f" (deployment {d.id})" if d.id else " (not recorded)"), highlight=False)
    if d.command:
        console.print("  command: " + " ".join(d.command), highlight=False)
    for line in d.messages:
        console.print(f"  {line}", highlight=False)


def register(app: typer.Typer) -> None:
    @app.command("export")
    def export_cmd(
        adapter_id: Annotated[str, typer.Argument(help="The adapter to export.")],
        format: Annotated[str, typer.Option("--format", "-f", help="peft, merged, gguf or ollama.")],
        out: Annotated[Optional[str], typer.Option(help="Output folder (default <home>/exports/<id>/<format>).")] = None,
        dtype: Annotated[str, typer.Option(help="f32 or f16.")] = "f32",
        base: Annotated[Optional[str], typer.Option(help="Base model folder, checked against the one trained on.")] = None,
        from_model: Annotated[Optional[str], typer.Option("--from", help="ollama: the base as Ollama names it.")] = None,
        home: HomeOpt = None,
        as_json: JsonOpt = False,
    ) -> None:
        """Export an adapter (verified after writing); refuses incompatible adapters with every reason."""
        emit(export.export_adapter(Store(home), adapter_id, format, out, dtype, base, from_model), as_json, _render_export)

    @app.command("deploy")
    def deploy_cmd(
        adapter_id: Annotated[Optional[str], typer.Argument(help="The adapter to deploy.")] = None,
        target: Annotated[Optional[str], typer.Option(help="ollama, vllm or llamacpp.")] = None,
        url: Annotated[Optional[str], typer.Option(help="Runtime URL (defaults: ollama :11434, vllm :8000).")] = None,
        from_model: Annotated[Optional[str], typer.Option("--from", help="ollama: the base as Ollama names it.")] = None,
        base_gguf: Annotated[Optional[str], typer.Option(help="llamacpp: base model GGUF for the command line.")] = None,
        set_target: Annotated[Optional[str], typer.Option("--set-target", help="Keep ROLE's route deployed on --target/--url "
                                                          "(promote and rollback redeploy); --target none stops.")] = None,
        task_type: Annotated[Optional[str], typer.Option(help="With --set-target: the route's task type.")] = None,
        complexity: Annotated[Optional[str], typer.Option(help="With --set-target: the route's complexity.")] = None,
        home: HomeOpt = None,
        as_json: JsonOpt = False,
    ) -> None:
        """Deploy an adapter to a runtime, or (--set-target ROLE) keep a route deployed."""
        store = Store(home)
        if set_target:
            chosen = None if target in (None, "none") else target
            result = deploy.set_deploy_target(store, set_target, chosen, url, task_type, complexity)
            emit(result, as_json, lambda r: console.print(
                f"route {set_target} -> {r.target} {r.url}" if r else f"route {set_target}: no deployment target", highlight=False))
            return
        if not adapter_id or not target:
            raise InvalidInput("Give an adapter id and --target (ollama, vllm or llamacpp), or --set-target ROLE.")
        emit(deploy.deploy_adapter(store, adapter_id, target, url, base_gguf=base_gguf, from_model=from_model),
             as_json, _render_deployment)
