"""Every verb of learnloop, in the order of the loop, with its MCP tool and its CLI command.

Each row names one library function; the function's signature declares the verb's arguments
(see server/verbs.py), and the row says what else the faces pass it: `actor=True` (who asked),
`CliShape(stdin_stream=True)` (the terminal's stdin). Renderers are the CLI's screenfuls;
`--json` prints the tool's result.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from learning.data import curate, datasets, preferences
from learning.errors import InvalidInput
from learning.evaluate import evaluation, scoring
from learning.jobs import manage as jobs
from learning.loop import cycle
from learning.models import gguf_base
from learning.registry import adapters as registry
from learning.registry import folders
from learning.routing import drift, experiments, lifecycle, reward_plot, router
from learning.runs import record as runs
from learning.runs import rewards
from learning.runs import stats as runstats
from learning.runs.schema import RunIn
from learning.serve import deploy, export
from learning.train import launch
from server.verbs import CliShape, Verb


def _template(values: dict[str, Any]) -> dict[str, Any]:
    """--template-file: the prompt template read from a file on this machine."""
    path: Path | None = values.pop("template_file")
    if path is not None:
        if values.get("template") is not None:
            raise InvalidInput("Give --template or --template-file, not both.")
        if not path.is_file():
            raise InvalidInput(f"No such template file: {path}.")
        values["template"] = path.read_text(encoding="utf-8")
    return values


TEMPLATE_FILE = {
    "template_file": (Path | None, None, "Read the prompt template from this file."),
}


def _train_options(values: dict[str, Any]) -> dict[str, Any]:
    """--epochs, --lr, --rank and --config are short ways to give `overrides`."""
    from learning.train.config import load_yaml

    overrides = values.get("overrides") or {}
    if isinstance(overrides, str):  # --overrides '{"batch_size": 2}': folded in before the JSON is read
        try:
            overrides = json.loads(overrides)
        except json.JSONDecodeError as exc:
            raise InvalidInput(f"--overrides is not JSON: {exc}. Give an object, e.g. '{{\"rank\": 8}}'.") from exc
        if not isinstance(overrides, dict):
            raise InvalidInput("--overrides must be a JSON object, e.g. '{\"rank\": 8}'.")
    overrides = dict(overrides)
    config = values.pop("config")
    if config:
        file_preset, from_file = load_yaml(config)
        overrides = {**from_file, **overrides}
        if values["preset"] == "default":
            values["preset"] = file_preset
    shortcuts = {"epochs": values.pop("epochs"), "learning_rate": values.pop("lr"), "rank": values.pop("rank")}
    overrides.update({k: v for k, v in shortcuts.items() if v is not None})
    values["overrides"] = overrides or None
    return values


TRAIN_OPTIONS = {
    "epochs": (float | None, None, "Passes over the data (an override)."),
    "lr": (float | None, None, "Peak learning rate (an override)."),
    "rank": (int | None, None, "LoRA rank r (an override)."),
    "config": (str | None, None, "A YAML file: preset and any hyper-parameter."),
}

VERBS: list[Verb] = [
    # runs
    Verb(
        fn=runs.log_run,
        tool="log_run",
        command="log",
        title="Log a run",
        effect="append",
        request=RunIn,
        cli=CliShape(stdin=("output",), render="logged"),
    ),
    Verb(
        fn=rewards.log_reward,
        tool="log_reward",
        command="reward",
        title="Score a run logged before",
        effect="append",
        actor=True,
        cli=CliShape(arguments=("run_id", "reward"), render="rewarded"),
    ),
    Verb(
        fn=scoring.run_code_tests,
        tool="run_tests",
        command="run-tests",
        title="Score code by running its tests",
        effect="append",
        cli=CliShape(stdin=("code",), render="code_score"),
    ),
    Verb(
        fn=runs.import_runs_from,
        tool="import_runs",
        command="import",
        title="Import runs (JSONL)",
        effect="append",
        cli=CliShape(arguments=("path",), stdin_stream=True, render="imported"),
    ),
    Verb(
        fn=runstats.run_stats,
        tool="run_stats",
        command="stats",
        title="Run statistics",
        effect="read",
        cli=CliShape(aliases={"group_by": ("--by",)}, render="run_stats"),
    ),
    # jobs (the CLI's `jobs` command shows, follows and cancels them)
    Verb(fn=jobs.job_status, tool="job_status", command=None, title="Job status", effect="read"),
    Verb(fn=jobs.cancel_job, tool="cancel_job", command=None, title="Cancel a job", effect="append"),
    Verb(fn=jobs.list_jobs, tool="list_jobs", command=None, title="List jobs", effect="read"),
    # curation
    Verb(
        fn=curate.make_sft,
        tool="make_sft",
        command="make-sft",
        title="Make an SFT dataset",
        effect="append",
        cli=CliShape(extras=TEMPLATE_FILE, prepare=_template, render="curation"),
    ),
    Verb(
        fn=preferences.make_preferences,
        tool="make_preferences",
        command="make-preferences",
        title="Make a preference dataset (DPO/KTO)",
        effect="append",
        cli=CliShape(extras=TEMPLATE_FILE, prepare=_template, render="curation"),
    ),
    Verb(
        fn=datasets.dataset_list,
        tool="list_datasets",
        command="datasets",
        title="List datasets",
        effect="read",
        cli=CliShape(render="datasets"),
    ),
    # training and evaluation
    Verb(
        fn=gguf_base.import_base,
        tool="import_base",
        command="base import",
        title="Import a GGUF base",
        effect="job",
        cli=CliShape(arguments=("path",), follow=True, render="base_imported"),
    ),
    Verb(
        fn=launch.train_adapter,
        tool="train_adapter",
        command="train",
        title="Train an adapter",
        effect="job",
        cli=CliShape(
            aliases={"dataset_id": ("--dataset",)},
            follow=False,
            extras=TRAIN_OPTIONS,
            prepare=_train_options,
            render="train_started",
        ),
    ),
    Verb(
        fn=evaluation.evaluate_adapter,
        tool="evaluate_adapter",
        command="eval",
        title="Evaluate an adapter",
        effect="job",
        cli=CliShape(
            arguments=("adapter_id",), aliases={"dataset_id": ("--dataset",)}, follow=False, render="eval_started"
        ),
    ),
    # the registry and the lifecycle
    Verb(
        fn=lifecycle.promote_adapter,
        tool="promote",
        command="promote",
        title="Promote an adapter",
        effect="destructive",
        actor=True,
        consent=lifecycle.promote_consent,
        refused=lifecycle.refused_outcome,
        cli=CliShape(arguments=("adapter_id",), render="lifecycle_outcome"),
    ),
    Verb(
        fn=lifecycle.rollback_adapter,
        tool="rollback",
        command="rollback",
        title="Roll back a route",
        effect="destructive",
        actor=True,
        consent=lifecycle.rollback_consent,
        refused=lifecycle.refused_outcome,
        cli=CliShape(render="lifecycle_outcome"),
    ),
    Verb(
        fn=folders.register_adapter,
        tool="register_adapter",
        command="register",
        title="Register an external adapter",
        effect="job",
        actor=True,
        cli=CliShape(arguments=("path",), aliases={"dataset_id": ("--dataset",)}, render="registered"),
    ),
    Verb(
        fn=registry.list_adapters,
        tool="list_adapters",
        command="list",
        title="List adapters",
        effect="read",
        cli=CliShape(render="adapters"),
    ),
    Verb(
        fn=registry.adapter_history,
        tool="adapter_history",
        command="history",
        title="Adapter history",
        effect="read",
        cli=CliShape(arguments=("adapter_id",), render="history"),
    ),
    # routing, experiments and drift
    Verb(
        fn=router.select_adapter,
        tool="select_adapter",
        command="select",
        title="Select an adapter",
        effect="read",
        cli=CliShape(render="selection"),
    ),
    Verb(
        fn=drift.detect_drift,
        tool="detect_drift",
        command="drift",
        title="Detect drift (optionally roll back)",
        effect="destructive",
        actor=True,
        consent=drift.drift_consent,
        cli=CliShape(
            aliases={"new_id": ("--new",), "old_id": ("--old",), "experiment_id": ("--experiment",)},
            render="drift",
        ),
    ),
    Verb(
        fn=reward_plot.write_report,
        tool=None,
        command="report",
        title="Reward report (PNG)",
        effect="append",
        cli=CliShape(render="report"),
    ),
    Verb(
        fn=experiments.start_experiment,
        tool="start_experiment",
        command="experiment start",
        title="Start an experiment",
        effect="append",
        cli=CliShape(aliases={"candidate_id": ("--candidate",)}, render="experiment"),
    ),
    Verb(
        fn=experiments.stop_experiment,
        tool="stop_experiment",
        command="experiment stop",
        title="Stop an experiment",
        effect="append",
        cli=CliShape(aliases={"experiment_id": ("--id",)}, render="experiment"),
    ),
    Verb(
        fn=experiments.list_experiments,
        tool="list_experiments",
        command="experiment list",
        title="List experiments",
        effect="read",
        cli=CliShape(render="experiments"),
    ),
    # serving
    Verb(
        fn=export.export_as_job,
        tool="export_adapter",
        command="export",
        title="Export an adapter",
        effect="job",
        cli=CliShape(
            arguments=("adapter_id",),
            aliases={"format": ("-f",), "from_model": ("--from",)},
            follow=True,
            render="export_job",
        ),
    ),
    Verb(
        fn=deploy.deploy_adapter,
        tool="deploy_adapter",
        command="deploy",
        title="Deploy an adapter",
        effect="runtime",
        cli=CliShape(arguments=("adapter_id",), aliases={"from_model": ("--from",)}, render="deployment"),
    ),
    Verb(
        fn=deploy.set_deploy_target,
        tool=None,  # a person's choice of where adapters go: no agent sets a URL that learnloop posts to
        command="deploy-target",
        title="Keep a route deployed",
        effect="append",
        cli=CliShape(render="deploy_target"),
    ),
    # the whole loop
    Verb(
        fn=cycle.run_cycle,
        tool="run_cycle",
        command="cycle",
        title="Run a training cycle",
        effect="destructive",
        consent=cycle.cycle_consent,
        cli=CliShape(follow=True, render="cycle_started"),
    ),
]
