"""Every verb of learnloop, in the order of the loop, with its MCP tool and its CLI command.

Each row names one library function; the function's signature declares the verb's arguments
(see server/verbs.py). Renderers are the CLI's screenfuls; `--json` prints the tool's result.
"""

from __future__ import annotations

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

    overrides = dict(values.get("overrides") or {})
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
        runs.log_run,
        "log_run",
        "log",
        "Log a run",
        "append",
        request=RunIn,
        cli=CliShape(stdin=("output",), render="logged"),
    ),
    Verb(
        rewards.log_reward,
        "log_reward",
        "reward",
        "Score a run logged before",
        "append",
        cli=CliShape(arguments=("run_id", "reward"), render="rewarded"),
    ),
    Verb(
        scoring.run_code_tests,
        "run_tests",
        "run-tests",
        "Score code by running its tests",
        "append",
        cli=CliShape(stdin=("code",), render="code_score"),
    ),
    Verb(
        runs.import_runs_from,
        "import_runs",
        "import",
        "Import runs (JSONL)",
        "append",
        cli=CliShape(arguments=("path",), stdin=("path",), render="imported"),
    ),
    Verb(
        runstats.run_stats,
        "run_stats",
        "stats",
        "Run statistics",
        "read",
        cli=CliShape(aliases={"group_by": ("--by",)}, render="run_stats"),
    ),
    # jobs (the CLI's `jobs` command shows, follows and cancels them)
    Verb(jobs.job_status, "job_status", None, "Job status", "read"),
    Verb(jobs.cancel_job, "cancel_job", None, "Cancel a job", "append"),
    Verb(jobs.list_jobs, "list_jobs", None, "List jobs", "read"),
    # curation
    Verb(
        curate.make_sft,
        "make_sft",
        "make-sft",
        "Make an SFT dataset",
        "append",
        cli=CliShape(extras=TEMPLATE_FILE, prepare=_template, render="curation"),
    ),
    Verb(
        preferences.make_preferences,
        "make_preferences",
        "make-preferences",
        "Make a preference dataset (DPO/KTO)",
        "append",
        cli=CliShape(extras=TEMPLATE_FILE, prepare=_template, render="curation"),
    ),
    Verb(
        datasets.dataset_list,
        "list_datasets",
        "datasets",
        "List datasets",
        "read",
        cli=CliShape(render="datasets"),
    ),
    # training and evaluation
    Verb(
        gguf_base.import_base,
        "import_base",
        "base import",
        "Import a GGUF base",
        "job",
        cli=CliShape(arguments=("path",), follow=True, render="base_imported"),
    ),
    Verb(
        launch.train_adapter,
        "train_adapter",
        "train",
        "Train an adapter",
        "job",
        cli=CliShape(
            aliases={"dataset_id": ("--dataset",)},
            follow=False,
            extras=TRAIN_OPTIONS,
            prepare=_train_options,
            render="train_started",
        ),
    ),
    Verb(
        evaluation.evaluate_adapter,
        "evaluate_adapter",
        "eval",
        "Evaluate an adapter",
        "job",
        cli=CliShape(
            arguments=("adapter_id",), aliases={"dataset_id": ("--dataset",)}, follow=False, render="eval_started"
        ),
    ),
    # the registry and the lifecycle
    Verb(
        lifecycle.promote_adapter,
        "promote",
        "promote",
        "Promote an adapter",
        "destructive",
        consent=lifecycle.promote_consent,
        refused=lifecycle.refused_outcome,
        cli=CliShape(arguments=("adapter_id",), render="lifecycle_outcome"),
    ),
    Verb(
        lifecycle.rollback_adapter,
        "rollback",
        "rollback",
        "Roll back a route",
        "destructive",
        consent=lifecycle.rollback_consent,
        refused=lifecycle.refused_outcome,
        cli=CliShape(render="lifecycle_outcome"),
    ),
    Verb(
        folders.register_adapter,
        "register_adapter",
        "register",
        "Register an external adapter",
        "job",
        cli=CliShape(arguments=("path",), aliases={"dataset_id": ("--dataset",)}, render="registered"),
    ),
    Verb(registry.list_adapters, "list_adapters", "list", "List adapters", "read", cli=CliShape(render="adapters")),
    Verb(
        registry.adapter_history,
        "adapter_history",
        "history",
        "Adapter history",
        "read",
        cli=CliShape(arguments=("adapter_id",), render="history"),
    ),
    # routing, experiments and drift
    Verb(
        router.select_adapter,
        "select_adapter",
        "select",
        "Select an adapter",
        "read",
        cli=CliShape(render="selection"),
    ),
    Verb(
        drift.detect_drift,
        "detect_drift",
        "drift",
        "Detect drift (optionally roll back)",
        "destructive",
        consent=drift.drift_consent,
        cli=CliShape(
            aliases={"new_id": ("--new",), "old_id": ("--old",), "experiment_id": ("--experiment",)},
            render="drift",
        ),
    ),
    Verb(reward_plot.write_report, None, "report", "Reward report (PNG)", "append", cli=CliShape(render="report")),
    Verb(
        experiments.start_experiment,
        "start_experiment",
        "experiment start",
        "Start an experiment",
        "append",
        cli=CliShape(aliases={"candidate_id": ("--candidate",)}, render="experiment"),
    ),
    Verb(
        experiments.stop_experiment,
        "stop_experiment",
        "experiment stop",
        "Stop an experiment",
        "append",
        cli=CliShape(aliases={"experiment_id": ("--id",)}, render="experiment"),
    ),
    Verb(
        experiments.list_experiments,
        "list_experiments",
        "experiment list",
        "List experiments",
        "read",
        cli=CliShape(render="experiments"),
    ),
    # serving
    Verb(
        export.export_as_job,
        "export_adapter",
        "export",
        "Export an adapter",
        "job",
        cli=CliShape(
            arguments=("adapter_id",),
            aliases={"format": ("-f",), "from_model": ("--from",)},
            follow=True,
            render="export_job",
        ),
    ),
    Verb(
        deploy.deploy_adapter,
        "deploy_adapter",
        "deploy",
        "Deploy an adapter",
        "runtime",
        cli=CliShape(arguments=("adapter_id",), aliases={"from_model": ("--from",)}, render="deployment"),
    ),
    Verb(
        deploy.set_deploy_target,
        None,  # a person's choice of where adapters go: no agent sets a URL that learnloop posts to
        "deploy-target",
        "Keep a route deployed",
        "append",
        cli=CliShape(render="deploy_target"),
    ),
    # the whole loop
    Verb(
        cycle.run_cycle,
        "run_cycle",
        "cycle",
        "Run a training cycle",
        "destructive",
        consent=cycle.cycle_consent,
        cli=CliShape(follow=True, render="cycle_started"),
    ),
]
