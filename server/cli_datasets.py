"""CLI commands for curation: make-sft, make-preferences, datasets."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table
from typing_extensions import Annotated

from learning.data import curate as sft
from learning.data.datasets import list_datasets
from learning.errors import InvalidInput
from learning.store import Store
from server.cli import HomeOpt, JsonOpt, console, emit, fmt
from server.mcp_datasets import DatasetList

RoleOpt = Annotated[str, typer.Option(help="coder, fixer, judge, or a role with a template.")]
LimitOpt = Annotated[Optional[int], typer.Option(help="At most N rows.")]
TaskTypeOpt = Annotated[Optional[str], typer.Option(help="Only this task_type.")]
ComplexityOpt = Annotated[Optional[str], typer.Option(help="Only this complexity.")]
AgentOpt = Annotated[Optional[str], typer.Option(help="Only this agent.")]
SinceOpt = Annotated[Optional[str], typer.Option(help="Only runs at or after this time (ISO 8601).")]
UntilOpt = Annotated[Optional[str], typer.Option(help="Only runs before this time (ISO 8601).")]
DaysOpt = Annotated[Optional[float], typer.Option(help="Only runs of the last N days.")]
MinLenOpt = Annotated[Optional[int], typer.Option(help="Min characters of instruction + input + output.")]
MaxLenOpt = Annotated[Optional[int], typer.Option(help="Max characters of instruction + input + output.")]
PerTaskOpt = Annotated[int, typer.Option(help="At most N rows per task_key.")]
TemplateOpt = Annotated[Optional[str], typer.Option(help="Prompt template ({instruction}, {input}, {task_type}, {complexity}, {role}).")]
TemplateFileOpt = Annotated[Optional[Path], typer.Option(help="Read the prompt template from this file.")]
TestFracOpt = Annotated[float, typer.Option(help="Share of tasks held out for test.")]
SeedOpt = Annotated[int, typer.Option(help="Seed of the train/test split.")]
RedactOpt = Annotated[bool, typer.Option("--redact/--no-redact", help="Redact secrets and personal data (default on; --no-redact is recorded).")]
DedupeOpt = Annotated[bool, typer.Option("--dedupe/--no-dedupe", help="Drop exact and near-exact duplicates.")]
MinRowsOpt = Annotated[int, typer.Option(help="Fail, writing nothing, below this many rows.")]
DryRunOpt = Annotated[bool, typer.Option("--dry-run", help="Report what would be written; write nothing.")]


def _template(template: str | None, template_file: Path | None) -> str | None:
    if template is not None and template_file is not None:
        raise InvalidInput("Give --template or --template-file, not both.")
    if template_file is not None:
        if not template_file.is_file():
            raise InvalidInput(f"No such template file: {template_file}.")
        return template_file.read_text(encoding="utf-8")
    return template


def render_result(r: sft.CurationResult) -> None:
    if r.dry_run:
        table = Table(title=f"dry run: {r.kind} dataset for role {r.role} (nothing written)")
        table.add_column("filter")
        table.add_column("value")
        table.add_column("runs left", justify="right")
        for step in r.funnel:
            table.add_row(step.step, fmt(step.value), str(step.runs_left))
        console.print(table)
    else:
        console.print(f"dataset [bold]{r.dataset_id}[/] written to {r.path}")
    counts = ", ".join(f"{k} {v}" for k, v in r.counts.items())
    redaction = ", ".join(f"{k} {v}" for k, v in sorted(r.redaction_counts.items())) or "nothing found"
    console.print(f"{r.train_rows} train / {r.test_rows} test rows ({r.format}); mean reward {fmt(r.mean_reward)}; "
                  f"{counts}", highlight=False)
    console.print(f"redaction: {redaction}" if r.redacted else "redaction: OFF (--no-redact)", highlight=False)


def register(app: typer.Typer) -> None:
    @app.command("make-sft")
    def make_sft_cmd(
        role: RoleOpt, min_reward: Annotated[float, typer.Option(help="Only runs with at least this reward.")] = sft.DEFAULT_MIN_REWARD,
        limit: LimitOpt = None, task_type: TaskTypeOpt = None, complexity: ComplexityOpt = None, agent: AgentOpt = None,
        since: SinceOpt = None, until: UntilOpt = None, days: DaysOpt = None, min_length: MinLenOpt = None,
        max_length: MaxLenOpt = None, max_per_task: PerTaskOpt = 3,
        format: Annotated[str, typer.Option(help="prompt_completion, messages, alpaca or sharegpt.")] = "prompt_completion",
        template: TemplateOpt = None, template_file: TemplateFileOpt = None, test_fraction: TestFracOpt = 0.1,
        seed: SeedOpt = 0, redact: RedactOpt = True, dedupe: DedupeOpt = True, min_rows: MinRowsOpt = 10,
        dry_run: DryRunOpt = False, home: HomeOpt = None, as_json: JsonOpt = False,
    ) -> None:
        """Make a supervised fine-tuning dataset from a role's best runs."""
        result = sft.make_sft(Store(home), role, min_reward=min_reward, limit=limit, task_type=task_type,
                              complexity=complexity, agent=agent, since=since, until=until, days=days,
                              min_length=min_length, max_length=max_length, max_per_task=max_per_task, format=format,
                              template=_template(template, template_file), test_fraction=test_fraction, seed=seed,
                              redact=redact, dedupe=dedupe, min_rows=min_rows, dry_run=dry_run)
        emit(result, as_json, render_result)

    @app.command("make-preferences")
    def make_preferences_cmd(
        role: RoleOpt, kind: Annotated[str, typer.Option(help="dpo (chosen/rejected pairs) or kto (labelled rows).")] = "dpo",
        margin: Annotated[float, typer.Option(help="DPO: min reward gap between chosen and rejected.")] = 0.3,
        min_chosen: Annotated[float, typer.Option(help="DPO: min reward of the chosen answer.")] = 0.5,
        high: Annotated[float, typer.Option(help="KTO: desirable at or above this reward.")] = sft.DEFAULT_MIN_REWARD,
        low: Annotated[float, typer.Option(help="KTO: undesirable at or below this reward.")] = 0.3,
        limit: LimitOpt = None, task_type: TaskTypeOpt = None, complexity: ComplexityOpt = None, agent: AgentOpt = None,
        since: SinceOpt = None, until: UntilOpt = None, days: DaysOpt = None, min_length: MinLenOpt = None,
        max_length: MaxLenOpt = None, max_per_task: PerTaskOpt = 3,
        format: Annotated[str, typer.Option(help="prompt_completion or messages.")] = "prompt_completion",
        template: TemplateOpt = None, template_file: TemplateFileOpt = None, test_fraction: TestFracOpt = 0.1,
        seed: SeedOpt = 0, redact: RedactOpt = True, dedupe: DedupeOpt = True, min_rows: MinRowsOpt = 10,
        dry_run: DryRunOpt = False, home: HomeOpt = None, as_json: JsonOpt = False,
    ) -> None:
        """Make a DPO or KTO dataset from attempts at the same task with different rewards."""
        result = sft.make_preferences(Store(home), role, kind, margin=margin, min_chosen=min_chosen, high=high, low=low,
                                      limit=limit, task_type=task_type, complexity=complexity, agent=agent,
                                      since=since, until=until, days=days, min_length=min_length,
                                      max_length=max_length, max_per_task=max_per_task, format=format,
                                      template=_template(template, template_file), test_fraction=test_fraction,
                                      seed=seed, redact=redact, dedupe=dedupe, min_rows=min_rows, dry_run=dry_run)
        emit(result, as_json, render_result)

    @app.command("datasets")
    def datasets_cmd(
        role: Annotated[Optional[str], typer.Option(help="Only this role.")] = None,
        kind: Annotated[Optional[str], typer.Option(help="sft, dpo or kto.")] = None,
        limit: Annotated[int, typer.Option(help="At most N, newest first.")] = 100,
        home: HomeOpt = None, as_json: JsonOpt = False,
    ) -> None:
        """List the datasets made so far."""
        result = DatasetList(datasets=list_datasets(Store(home), role=role, kind=kind, limit=limit))

        def render(r: DatasetList) -> None:
            table = Table(title=f"{len(r.datasets)} datasets")
            for col in ("id", "kind", "format", "train", "test", "mean reward", "redacted", "created"):
                table.add_column(col)
            for d in r.datasets:
                red = d.metadata.get("redaction", {})
                table.add_row(d.id, d.kind, d.format, str(d.train_rows), str(d.test_rows),
                              fmt(d.metadata.get("mean_reward")),
                              str(sum(red.get("counts", {}).values())) if red.get("enabled") else "off", d.created)
            console.print(table)

        emit(result, as_json, render)
