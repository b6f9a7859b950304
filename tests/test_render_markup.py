"""The CLI's screens show text from outside learnloop (task keys, roles, ids, errors, paths, reasons)
as it is: never read as rich markup, where `[/x]` would crash the command (after the run was stored)
and `[bold red]` or `[link=...]` would style the screen. Each renderer of server/render.py gets a
hostile string in every such field; our own styling still works."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from typing import Any

import pytest
from rich.console import Console

from learning.data.curation_result import CurationResult, FunnelStep
from learning.data.datasets import DatasetInfo, DatasetList
from learning.evaluate.evaluation import EvalStarted
from learning.evaluate.scoring import CodeScore
from learning.jobs.manage import JobStatus
from learning.loop.cycle import CycleStarted
from learning.models.gguf_base import BaseImport
from learning.registry.adapters import Adapter, AdapterEvent
from learning.routing.drift import DriftResult
from learning.routing.drift_arms import ArmSummary
from learning.routing.experiments import ArmStats, Experiment
from learning.routing.lifecycle import AdapterBrief, LifecycleOutcome, PromoteResult, RollbackResult
from learning.routing.reward_plot import Report
from learning.routing.router import Selection
from learning.runs.rewards import RewardResult
from learning.runs.schema import ImportError_, ImportResult, LogResult, RewardEvent
from learning.runs.stats import RunStats, StatsGroup
from learning.serve.deploy import Deployment, DeployTarget
from learning.serve.export import ExportJob
from learning.train.launch import TrainPlan, TrainStarted
from server import render
from tests.conftest import run_cli

HOSTILE = [
    "[/x]",  # a closing tag with nothing open: rich.errors.MarkupError
    "[/]",
    "[bold red]boom[/]",  # would style the screen
    "[link=http://evil]x[/link]",  # would make a link
    "C:\\dir\\",  # a trailing backslash would escape a tag of ours that follows
    "a\\[b]c\\\\",  # a backslash before a tag, and two trailing ones
]


@pytest.fixture
def screen(monkeypatch: pytest.MonkeyPatch) -> Callable[[], str]:
    """render's console writes to a buffer, wide enough that nothing wraps; returns what it printed."""
    buffer = io.StringIO()
    monkeypatch.setattr(render, "console", Console(file=buffer, width=2000))
    return buffer.getvalue


def show(h: str) -> Callable[[str], str]:
    """A value for each field: its name, then the hostile text (so that each field is checked)."""
    return lambda name: f"<{name}>{h}"


def job(v: Callable[[str], str], **fields: Any) -> JobStatus:
    return JobStatus.model_construct(
        **{
            "job_id": v("job_id"),
            "kind": v("kind"),
            "status": v("status"),
            "subject": v("subject"),
            "progress": {"step": v("step")},
            "result": {"k": v("result")},
            "error": v("error"),
            "created": v("created"),
            "started": None,
            "finished": None,
            "elapsed_s": 1.5,
            "log_path": v("log_path"),
            **fields,
        }
    )


def brief(name: str) -> AdapterBrief:
    return AdapterBrief.model_construct(adapter_id=name, status="candidate", role="coder", base_model="b")


# Each case: (what to call, the field names whose values must show as they are).
Case = Callable[[Callable[[str], str]], tuple[Callable[[], None], list[str]]]


def logged(v: Callable[[str], str]):
    r = LogResult.model_construct(run_id=v("run_id"), task_key=v("task_key"), reward_token=v("reward_token"))
    return lambda: render.logged(r), ["run_id", "task_key", "reward_token"]


def rewarded(v: Callable[[str], str]):
    event = RewardEvent.model_construct(
        time=v("time"), actor=v("actor"), kind="correction", reward=0.5, previous=0.25, reason=v("reason")
    )
    r = RewardResult.model_construct(
        run_id=v("run_id"), role=v("role"), task_key="k", reward=0.5, previous_reward=0.25, history=[event]
    )
    return lambda: render.rewarded(r), ["run_id", "role", "time", "actor", "reason"]


def code_score(v: Callable[[str], str]):
    r = CodeScore.model_construct(
        compiled=False,
        passed=0,
        total=2,
        score=0.0,
        timed_out=False,
        error=v("error"),
        errors=[v("test1"), v("test2")],
        duration_s=0.1,
        sandbox=v("sandbox"),
        isolation=v("isolation"),
        modes=["isolated", "in-process"],
        run_id=v("run_id"),
        task_key=v("task_key"),
    )
    return lambda: render.code_score(r), ["test1", "test2", "sandbox", "isolation", "run_id", "task_key"]


def imported(v: Callable[[str], str]):
    r = ImportResult.model_construct(
        imported=1,
        skipped=1,
        lines=2,
        batches=1,
        seconds=0.1,
        errors=[ImportError_.model_construct(line=2, error=v("e"))],
    )
    return lambda: render.imported(r), ["e"]


def run_stats(v: Callable[[str], str]):
    group = StatsGroup.model_construct(
        role=v("role"),
        adapter_id=v("adapter"),
        runs=1,
        pending=0,
        mean_reward=0.5,
        compile_rate=None,
        test_pass_rate=None,
        mean_iterations=None,
        first_time=None,
        last_time=v("last"),
    )
    r = RunStats.model_construct(total_runs=1, since=None, until=None, group_by=["role", "adapter_id"], groups=[group])
    return lambda: render.run_stats(r), ["role", "adapter", "last"]


def job_status(v: Callable[[str], str]):
    s = job(v)
    return lambda: render.job_status(s), ["job_id", "kind", "status", "subject", "step", "result", "error", "log_path"]


def job_list(v: Callable[[str], str]):
    rows = [job(v)]
    return lambda: render.job_list(rows), ["job_id", "kind", "status", "subject", "created", "step", "error"]


def curation_dry_run(v: Callable[[str], str]):
    r = CurationResult.model_construct(
        dataset_id=None,
        dry_run=True,
        role=v("role"),
        kind=v("kind"),
        format=v("format"),
        path=None,
        train_rows=1,
        test_rows=1,
        counts={v("count"): 1},
        mean_reward=0.5,
        redacted=True,
        redaction_counts={v("redaction"): 2},
        funnel=[FunnelStep.model_construct(step=v("step"), value=v("value"), runs_left=3)],
    )
    return lambda: render.curation(r), ["role", "kind", "format", "count", "redaction", "step", "value"]


def curation_written(v: Callable[[str], str]):
    r = CurationResult.model_construct(
        dataset_id=v("dataset_id"),
        dry_run=False,
        role="coder",
        kind="sft",
        format="chat",
        path=v("path"),
        train_rows=1,
        test_rows=1,
        counts={},
        mean_reward=None,
        redacted=False,
        redaction_counts={},
        funnel=[],
    )
    return lambda: render.curation(r), ["dataset_id", "path"]


def datasets(v: Callable[[str], str]):
    d = DatasetInfo.model_construct(
        id=v("id"),
        kind=v("kind"),
        format=v("format"),
        created=v("created"),
        train_rows=1,
        test_rows=1,
        metadata={"mean_reward": v("mean"), "redaction": {"enabled": True, "counts": {"email": 1}}},
    )
    r = DatasetList.model_construct(datasets=[d])
    return lambda: render.datasets(r), ["id", "kind", "format", "created", "mean"]


def train_started(v: Callable[[str], str]):
    config = {"rank": 8, "alpha": 16, "learning_rate": 1e-4, "batch_size": 4, "grad_accum": 2, "quantize": v("q")}
    plan = TrainPlan.model_construct(
        adapter_id=v("adapter_id"),
        role="coder",
        dataset_id=v("dataset_id"),
        base_model=v("base_model"),
        method=v("method"),
        config=config,
        train_rows=10,
        steps=5,
        tokens_estimate=1000,
        est_time_s=3.0,
        est_memory_mb=100.0,
        num_processes=1,
        resume=False,
        target_modules=[v("module")],
        export_formats=[v("export")],
        notes=[v("note")],
    )
    s = TrainStarted.model_construct(job_id=v("job_id"), adapter_id=v("adapter_id"), dry_run=False, plan=plan)
    fields = ["job_id", "adapter_id", "dataset_id", "base_model", "method", "q", "module", "export", "note"]
    return lambda: render.train_started(s), fields


def eval_started(v: Callable[[str], str]):
    r = EvalStarted.model_construct(
        job_id=v("job_id"), adapter_id=v("adapter_id"), dataset_id=v("dataset"), test_rows=3
    )
    return lambda: render.eval_started(r), ["job_id", "adapter_id", "dataset"]


def lifecycle_refused(v: Callable[[str], str]):
    r = LifecycleOutcome.model_construct(outcome=v("outcome"), summary="s")
    return lambda: render.lifecycle_outcome(r), ["outcome"]


def lifecycle_done(v: Callable[[str], str]):
    promoted = PromoteResult.model_construct(
        adapter=brief(v("promoted")), from_status=v("from"), to_status=v("to"), replaced=brief(v("replaced"))
    )
    rolled_back = RollbackResult.model_construct(restored=brief(v("restored")), archived=brief(v("archived")))
    r = LifecycleOutcome.model_construct(outcome="done", summary="s", promoted=promoted, rolled_back=rolled_back)
    return lambda: render.lifecycle_outcome(r), ["promoted", "from", "to", "replaced", "restored", "archived"]


def base_imported(v: Callable[[str], str]):
    done = BaseImport.model_construct(base_id=v("base_id"), folder=v("folder"), gguf_path=v("gguf"), status="succeeded")
    failed = BaseImport.model_construct(job_id=v("job_id"), status=v("status"), error=v("error"))
    running = BaseImport.model_construct(job_id=v("job2"), status="running", error=None)

    def call() -> None:
        for b in (done, failed, running):
            render.base_imported(b)

    return call, ["base_id", "folder", "gguf", "job_id", "status", "error", "job2"]


def registered(v: Callable[[str], str]):
    a = Adapter.model_construct(id=v("id"), role=v("role"), base_model=v("base"))
    return lambda: render.registered(a), ["id", "role", "base"]


def adapters(v: Callable[[str], str]):
    a = Adapter.model_construct(
        id=v("id"),
        role=v("role"),
        task_type=v("task_type"),
        complexity=v("complexity"),
        status=v("status"),
        created=v("c"),  # the first 16 characters show
        base_model=v("b"),  # the last 30 show
        dataset_id=v("dataset"),
        metrics={"eval_loss": v("loss"), "pass_rate": v("pass")},
    )
    return lambda: render.adapters([a]), ["id", "role", "task_type", "complexity", "status", "dataset", "loss", "pass"]


def history(v: Callable[[str], str]):
    e = AdapterEvent.model_construct(
        adapter_id=v("adapter"),
        time=v("time"),
        actor=v("actor"),
        from_status=v("from"),
        to_status=v("to"),
        reason=v("why"),
    )
    return lambda: render.history([e]), ["adapter", "time", "actor", "from", "to", "why"]


def selection(v: Callable[[str], str]):
    s = Selection.model_construct(
        adapter_id=v("adapter"),
        adapter_path=v("path"),
        base_model=v("base"),
        served_name=v("served"),
        deployment_url=v("url"),
        route=v("route"),
        experiment_id=v("experiment"),
        arm=v("arm"),
        decision_id=v("decision"),
    )
    base = Selection.model_construct(
        adapter_id=None,
        adapter_path=None,
        base_model=v("base_only"),
        served_name=None,
        route="base",
        experiment_id=None,
        decision_id="d",
    )

    def call() -> None:
        render.selection(s)
        render.selection(base)

    return call, ["adapter", "path", "base", "served", "url", "route", "experiment", "arm", "decision", "base_only"]


def drift(v: Callable[[str], str]):
    def arm(name: str) -> ArmSummary:
        return ArmSummary.model_construct(adapter_id=v(name), runs=3, mean_reward=0.5, sd=0.1)

    r = DriftResult.model_construct(
        role=v("role"),
        window=v("window"),
        method=v("method"),
        new=arm("new"),
        old=arm("old"),
        decision=v("decision"),
        message=v("message"),
        rollback=v("rollback"),
    )
    return lambda: render.drift(r), ["role", "window", "method", "new", "old", "decision", "message", "rollback"]


def report(v: Callable[[str], str]):
    r = Report.model_construct(path=v("path"), runs=3, series={"a": 1})
    return lambda: render.report(r), ["path"]


def experiments(v: Callable[[str], str]):
    e = Experiment.model_construct(
        id=v("id"),
        role=v("role"),
        task_type=v("task_type"),
        complexity=None,
        candidate_id=v("candidate"),
        control_id=v("control"),
        mode=v("mode"),
        fraction=0.25,
        status=v("status"),
        arms=[ArmStats.model_construct(arm=v("arm"), adapter_id=v("arm_adapter"), runs=2, mean_reward=None)],
    )
    fields = ["id", "role", "task_type", "candidate", "control", "mode", "status", "arm", "arm_adapter"]
    return lambda: render.experiments([e]), fields


def export_job(v: Callable[[str], str]):
    result = {
        "adapter_id": v("adapter"),
        "format": v("format"),
        "dtype": v("dtype"),
        "out_dir": v("out"),
        "seconds": v("seconds"),
        "checks": [v("check")],
        "warnings": [v("warning")],
        "files": [{"path": v("file"), "bytes": v("bytes")}],
    }
    done = ExportJob.model_construct(job_id="j", status="succeeded", result=result, error=None)
    failed = ExportJob.model_construct(job_id=v("job_id"), status=v("status"), result=None, error=v("error"))
    running = ExportJob.model_construct(job_id=v("job2"), status="running", result=None, error=None)

    def call() -> None:
        for r in (done, failed, running):
            render.export_job(r)

    fields = ["adapter", "format", "dtype", "out", "seconds", "check", "warning", "file", "bytes"]
    return call, [*fields, "job_id", "status", "error", "job2"]


def deployment(v: Callable[[str], str]):
    d = Deployment.model_construct(
        id=v("id"),
        adapter_id=v("adapter"),
        target=v("target"),
        url=v("url"),
        served_name=v("served"),
        status=v("status"),
        command=[v("command")],
        messages=[v("message")],
    )
    return lambda: render.deployment(d), ["id", "adapter", "target", "url", "served", "status", "command", "message"]


def deploy_target(v: Callable[[str], str]):
    r = DeployTarget.model_construct(role=v("role"), target=v("target"), url=v("url"))
    return lambda: render.deploy_target(r), ["role", "target", "url"]


def cycle_started(v: Callable[[str], str]):
    s = CycleStarted.model_construct(job_id=v("job_id"), role=v("role"))
    return lambda: render.cycle_started(s), ["job_id", "role"]


def cycle_report(v: Callable[[str], str]):
    stages = [
        {"name": v("stage"), "status": v("stage_status"), "seconds": 1.0, "detail": {"error": v("detail")}},
        {"name": "train", "status": "done", "seconds": 2.0, "detail": {"adapter_id": v("detail_adapter")}},
    ]
    s = job(v, result={"stages": stages})
    return lambda: render.cycle_report(s), ["job_id", "stage", "stage_status", "detail", "detail_adapter"]


CASES: list[Case] = [
    logged,
    rewarded,
    code_score,
    imported,
    run_stats,
    job_status,
    job_list,
    curation_dry_run,
    curation_written,
    datasets,
    train_started,
    eval_started,
    lifecycle_refused,
    lifecycle_done,
    base_imported,
    registered,
    adapters,
    history,
    selection,
    drift,
    report,
    experiments,
    export_job,
    deployment,
    deploy_target,
    cycle_started,
    cycle_report,
]


@pytest.mark.parametrize("h", HOSTILE)
@pytest.mark.parametrize("case", CASES, ids=[c.__name__ for c in CASES])
def test_hostile_text_shows_as_it_is(case: Case, h: str, screen: Callable[[], str]) -> None:
    call, fields = case(show(h))
    call()  # no MarkupError
    out = screen()
    words = " ".join(out.split())  # a table's title wraps at the table's width
    missing = [name for name in fields if " ".join(show(h)(name).split()) not in words]
    assert missing == [], f"{missing} not shown as they are in:\n{out}"


@pytest.mark.parametrize("h", HOSTILE)
def test_cut_cells_are_escaped_after_the_cut(h: str, screen: Callable[[], str]) -> None:
    """adapters shows the first 16 characters of `created` and the last 30 of `base_model`."""
    a = Adapter.model_construct(
        id="a",
        role="coder",
        task_type=None,
        complexity=None,
        status="trained",
        created=h,
        base_model=h,
        dataset_id=None,
        metrics={},
    )
    render.adapters([a])
    assert h[:16] in screen() and h[-30:] in screen()


def test_trailing_backslashes_show_once(screen: Callable[[], str]) -> None:
    """rich.markup.escape doubles a trailing backslash (for a tag that may follow): none shows twice."""
    render.logged(LogResult.model_construct(run_id="r\\", task_key="C:\\dir\\", reward_token=None))
    render.job_status(job(lambda name: f"{name}\\\\", progress={}, result=None, elapsed_s=None))
    assert screen().splitlines() == [
        "logged run r\\ (task_key C:\\dir\\)",
        "job job_id\\\\ (kind\\\\) status\\\\ subject subject\\\\",
        "  error: error\\\\",
        "  log: log_path\\\\",
    ]


def test_our_styles_still_apply_and_theirs_do_not(monkeypatch: pytest.MonkeyPatch) -> None:
    buffer = io.StringIO()
    colors = Console(file=buffer, width=200, force_terminal=True, color_system="standard", highlight=False)
    monkeypatch.setattr(render, "console", colors)
    render.logged(LogResult.model_construct(run_id=7, task_key="[bold red]boom[/]", reward_token=None))
    render.job_status(job(show("[/x]"), status="failed", progress={}, result=None, elapsed_s=None))
    render.deployment(
        Deployment.model_construct(
            id=None, adapter_id="a", target="ollama", url="u", served_name="[/x]\\", status="active", messages=[]
        )
    )
    assert buffer.getvalue().splitlines() == [
        "logged run \x1b[1m7\x1b[0m (task_key [bold red]boom[/])",  # the run id in our bold, the key as text
        "job \x1b[1m<job_id>[/x]\x1b[0m (<kind>[/x]) \x1b[31mfailed\x1b[0m subject <subject>[/x]",
        "  \x1b[31merror:\x1b[0m <error>[/x]",
        "  log: <log_path>[/x]",
        "a -> ollama u as \x1b[1m[/x]\\\x1b[0m \x1b[32mactive\x1b[0m (not recorded)",
    ]


def test_plain_values_print_as_before(screen: Callable[[], str]) -> None:
    render.logged(LogResult.model_construct(run_id=3, task_key="fizzbuzz", reward_token="tok-1"))
    render.job_status(job(lambda name: name, status="succeeded", result={"loss": 0.25}, elapsed_s=2.0))
    assert screen().splitlines() == [
        "logged run 3 (task_key fizzbuzz)",
        "pending; its reward token (shown once): tok-1",
        "job job_id (kind) succeeded subject subject in 2.0s",
        "  progress: step=step",
        "  error: error",
        "  result: loss=0.250",
        "  log: log_path",
    ]


def test_cli_log_and_reward_show_a_hostile_task_key_and_role_as_they_are(home) -> None:
    """End to end: the run is stored and the command says so, instead of failing after storing it."""
    key = "[/x] [bold red]boom[/] [link=http://evil]x[/link]"
    out = run_cli("log", "--role", "coder", "--output", "x", "--task-key", key, "--reward", "0.5", home=home)
    assert out.returncode == 0, out.stderr
    assert out.stdout == f"logged run 1 (task_key {key})\n"
    out = run_cli("log", "--role", "coder", "--output", "y", "--task-key", "C:\\keys\\", home=home)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[0] == "logged run 2 (task_key C:\\keys\\)"
    reason = "[/x] by [bold]me[/]"
    out = run_cli("reward", "1", "0.75", "--override", "--reason", reason, home=home)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[0] == "run 1 scored 0.750 (corrected from 0.500; role coder)"
    assert out.stdout.splitlines()[-1].endswith(f" via cli: {reason}")
    listed = json.loads(run_cli("stats", "--by", "none", "--json", home=home).stdout)
    assert listed["total_runs"] == 2
    out = run_cli("stats", home=home)
    assert out.returncode == 0 and "coder" in out.stdout, out.stderr
