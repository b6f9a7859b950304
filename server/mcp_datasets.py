"""MCP tools for curation: make_sft, make_preferences, list_datasets."""

from __future__ import annotations

from typing import Literal

from mcp.server.mcpserver import MCPServer
from pydantic import BaseModel, Field
from typing_extensions import Annotated

from learning.data import curate as sft
from learning.data.datasets import DatasetInfo, list_datasets as list_ds
from learning.store import Store
from server.mcp import APPEND, READ_ONLY, register_tool

Role = Annotated[str, Field(description="Whose runs: coder (spec -> code), fixer (diagnostics -> patch), "
                                        "judge (code -> verdict), or a role of your own with a template.")]
Limit = Annotated[int | None, Field(ge=1, description="At most this many rows (SFT keeps the highest rewards).")]
TaskType = Annotated[str | None, Field(description="Only runs of this task_type.")]
Complexity = Annotated[str | None, Field(description="Only runs of this complexity.")]
Agent = Annotated[str | None, Field(description="Only runs of this agent.")]
Since = Annotated[str | None, Field(description="Only runs at or after this time (ISO 8601).")]
Until = Annotated[str | None, Field(description="Only runs before this time (ISO 8601).")]
Days = Annotated[float | None, Field(gt=0, description="Only runs of the last N days (instead of since).")]
MinLength = Annotated[int | None, Field(ge=0, description="Only runs whose instruction + input + output have at least this many characters.")]
MaxLength = Annotated[int | None, Field(ge=0, description="Only runs whose instruction + input + output have at most this many characters.")]
MaxPerTask = Annotated[int, Field(ge=1, description="At most this many rows per task_key (attempts at one task).")]
Template = Annotated[str | None, Field(description="Prompt template for this call. Placeholders: {instruction}, {input}, "
                                                   "{task_type}, {complexity}, {role}. Default: the role's template.")]
TestFraction = Annotated[float, Field(ge=0, le=0.5, description="Share of tasks held out for test (split by task_key).")]
Seed = Annotated[int, Field(description="Seed of the train/test split.")]
Redact = Annotated[bool, Field(description="Replace secrets and personal data with typed placeholders. Keep true "
                                           "unless you know the runs hold none; false is recorded in the metadata.")]
Dedupe = Annotated[bool, Field(description="Drop exact and near-exact duplicates (same text ignoring case and white space).")]
MinRows = Annotated[int, Field(ge=1, description="Fail (writing nothing) if fewer rows than this are left.")]
DryRun = Annotated[bool, Field(description="Report what would be written, with the runs left after each filter; write nothing.")]


class DatasetList(BaseModel):
    datasets: list[DatasetInfo] = Field(description="Newest first, with absolute file paths.")


def register(server: MCPServer, store: Store) -> None:
    def make_sft(
        role: Role,
        min_reward: Annotated[float, Field(ge=0, le=1, description="Only runs with at least this reward.")] = sft.DEFAULT_MIN_REWARD,
        limit: Limit = None, task_type: TaskType = None, complexity: Complexity = None, agent: Agent = None,
        since: Since = None, until: Until = None, days: Days = None, min_length: MinLength = None,
        max_length: MaxLength = None, max_per_task: MaxPerTask = 3,
        format: Annotated[Literal["prompt_completion", "messages", "alpaca", "sharegpt"],
                          Field(description="prompt_completion (TRL, loss on the completion only), messages (chat), "
                                            "alpaca (instruction/input/output) or sharegpt.")] = "prompt_completion",
        template: Template = None, test_fraction: TestFraction = 0.1, seed: Seed = 0, redact: Redact = True,
        dedupe: Dedupe = True, min_rows: MinRows = 10, dry_run: DryRun = False,
    ) -> sft.CurationResult:
        """Make a supervised fine-tuning dataset from a role's best runs: filter, drop duplicates, cap
        attempts per task, redact secrets, split train/test by task_key, write
        datasets/<id>/{train,test}.jsonl + metadata.json. Returns dataset_id and the paths; pass the
        id to train_adapter. Use dry_run first to see how many runs each filter leaves."""
        return sft.make_sft(store, role, min_reward=min_reward, limit=limit, task_type=task_type,
                            complexity=complexity, agent=agent, since=since, until=until, days=days,
                            min_length=min_length, max_length=max_length, max_per_task=max_per_task, format=format,
                            template=template, test_fraction=test_fraction, seed=seed, redact=redact, dedupe=dedupe,
                            min_rows=min_rows, dry_run=dry_run)

    def make_preferences(
        role: Role,
        kind: Annotated[Literal["dpo", "kto"], Field(description="dpo: (prompt, chosen, rejected) pairs; "
                                                                 "kto: (prompt, completion, label) rows.")] = "dpo",
        margin: Annotated[float, Field(gt=0, le=1, description="DPO: chosen must earn at least this much more than rejected.")] = 0.3,
        min_chosen: Annotated[float, Field(ge=0, le=1, description="DPO: the chosen answer's minimum reward.")] = 0.5,
        high: Annotated[float, Field(ge=0, le=1, description="KTO: reward at or above this is desirable.")] = sft.DEFAULT_MIN_REWARD,
        low: Annotated[float, Field(ge=0, le=1, description="KTO: reward at or below this is undesirable.")] = 0.3,
        limit: Limit = None, task_type: TaskType = None, complexity: Complexity = None, agent: Agent = None,
        since: Since = None, until: Until = None, days: Days = None, min_length: MinLength = None,
        max_length: MaxLength = None, max_per_task: MaxPerTask = 3,
        format: Annotated[Literal["prompt_completion", "messages"],
                          Field(description="prompt_completion (strings) or messages (chat turns).")] = "prompt_completion",
        template: Template = None, test_fraction: TestFraction = 0.1, seed: Seed = 0, redact: Redact = True,
        dedupe: Dedupe = True, min_rows: MinRows = 10, dry_run: DryRun = False,
    ) -> sft.CurationResult:
        """Make a preference dataset (DPO or KTO) from attempts at the same task_key that earned
        different rewards: the contrast between good and bad answers. Same filters, split,
        redaction and files as make_sft."""
        return sft.make_preferences(store, role, kind, margin=margin, min_chosen=min_chosen, high=high, low=low,
                                    limit=limit, task_type=task_type, complexity=complexity, agent=agent, since=since,
                                    until=until, days=days, min_length=min_length, max_length=max_length,
                                    max_per_task=max_per_task, format=format, template=template,
                                    test_fraction=test_fraction, seed=seed, redact=redact, dedupe=dedupe,
                                    min_rows=min_rows, dry_run=dry_run)

    def list_datasets(
        role: Annotated[str | None, Field(description="Only this role.")] = None,
        kind: Annotated[Literal["sft", "dpo", "kto"] | None, Field(description="Only this kind.")] = None,
        limit: Annotated[int, Field(ge=1, le=1000, description="At most this many, newest first.")] = 100,
    ) -> DatasetList:
        """The datasets made so far: id, role, kind, format, row counts, content hash, file paths and
        metadata (filters, counts, mean reward, redaction counts). Read-only."""
        return DatasetList(datasets=list_ds(store, role=role, kind=kind, limit=limit))

    register_tool(server, make_sft, annotations=APPEND, title="Make an SFT dataset")
    register_tool(server, make_preferences, annotations=APPEND, title="Make a preference dataset (DPO/KTO)")
    register_tool(server, list_datasets, annotations=READ_ONLY, title="List datasets")
