"""run_cycle: one job that turns a role's recent runs into a better adapter, or says why not.

make_sft -> train_adapter (SFT, then GRPO on the same rows' tests when grpo_steps is given) ->
evaluate_adapter (whose gate moves the adapter to candidate) ->
promote to production when asked and the gate passed -> detect_drift for the adapter that was
in production before the cycle. Training and evaluation are jobs of their own; the cycle job
waits on them. Each stage is reported in the job's progress and result.
"""

from __future__ import annotations

from typing import Annotated, Any, cast

from pydantic import BaseModel, Field

from learning.data.curate import make_sft
from learning.errors import ConfirmationNeeded, InvalidInput, check
from learning.evaluate.evaluation import evaluate_adapter
from learning.jobs.manage import JobCancelled, follow_job, start_job
from learning.loop.stages import Stage, run_stages
from learning.params import Confirm
from learning.registry.adapters import get_adapter
from learning.registry.queries import production_for_route, role_known
from learning.routing.drift import detect_drift
from learning.routing.lifecycle import promote
from learning.runs.schema import ROLE_PATTERN
from learning.store import Store
from learning.train.cluster import check_request, cluster_address
from learning.train.config import Preset
from learning.train.launch import train_adapter

STAGES = 6  # make_sft, train, grpo, evaluate, promote, drift


class CycleParams(BaseModel):
    role: str = Field(pattern=ROLE_PATTERN, description="The role whose runs train the adapter.")
    to_production: bool = Field(
        default=False, description="Promote to production when the gate passes (else candidate only)."
    )
    min_reward: float = Field(default=0.7, ge=0, le=1, description="make_sft: keep runs with at least this reward.")
    days: float | None = Field(default=None, gt=0, description="make_sft: only runs of the last N days.")
    base: str | None = Field(default=None, description="Base model folder or hub id; default the embedded base.")
    preset: str = Field(default="default", description="Training preset: light, default or heavy.")
    max_steps: int | None = Field(default=None, ge=1, description="Training steps (default: the preset's epochs).")
    auto_rollback: bool = Field(
        default=False, description="detect_drift rolls back the previous adapter on a regression."
    )
    grpo_steps: int | None = Field(default=None, ge=1, description="GRPO steps after SFT (none: SFT only).")
    cluster: str | None = Field(default=None, description="Train on this Ray cluster (None: here).")
    num_processes: int = Field(default=1, ge=1, le=64, description="Training processes, or Ray Train workers.")


class CycleStarted(BaseModel):
    job_id: str = Field(description="Follow it with wait_job / job_status (CLI: learnloop jobs ID --wait).")
    role: str
    params: CycleParams


def run_cycle(
    store: Store,
    role: Annotated[str, Field(description="The role to improve, e.g. coder, fixer, judge.")],
    to_production: Annotated[
        bool, Field(description="Promote to production when the gate passes (else candidate only). Needs confirm=true.")
    ] = False,
    min_reward: Annotated[float, Field(ge=0, le=1, description="Curate runs with at least this reward.")] = 0.7,
    days: Annotated[float | None, Field(gt=0, description="Only runs of the last N days.")] = None,
    base: Annotated[str | None, Field(description="Base model folder or hub id (default: the embedded base).")] = None,
    preset: Annotated[str, Field(description="Training preset: light, default or heavy.")] = "default",
    max_steps: Annotated[int | None, Field(ge=1, description="Training steps (default: the preset's epochs).")] = None,
    auto_rollback: Annotated[
        bool,
        Field(description="Roll back the previous production adapter if drift shows a regression. Needs confirm=true."),
    ] = False,
    grpo_steps: Annotated[
        int | None,
        Field(
            ge=1,
            description="After SFT, this many GRPO steps continuing the SFT adapter, rewarded by running the "
            "dataset rows' tests (they must carry tests); the gate then judges the GRPO adapter.",
        ),
    ] = None,
    cluster: Annotated[
        str | None,
        Field(
            description="Train on this Ray cluster (ray://HOST:PORT or HOST:PORT; default $LEARNLOOP_CLUSTER, "
            "'local' for this machine)."
        ),
    ] = None,
    num_processes: Annotated[
        int, Field(ge=1, le=64, description="Training processes here, or Ray Train workers on the cluster.")
    ] = 1,
    confirm: Confirm = False,
) -> CycleStarted:
    """One background job: make_sft -> train_adapter (then GRPO when grpo_steps) -> evaluate_adapter (the gate moves a
    better adapter to candidate) -> promote to production when asked -> detect_drift for the
    adapter that was in production before. Returns the job id at once; follow it with wait_job.
    The job's result lists each stage with its status, seconds and figures."""
    try:
        params = CycleParams(
            role=role,
            to_production=to_production,
            min_reward=min_reward,
            days=days,
            base=base,
            preset=preset,
            max_steps=max_steps,
            auto_rollback=auto_rollback,
            grpo_steps=grpo_steps,
            cluster=cluster_address(cluster),  # fixed when the cycle starts, not when its stage does
            num_processes=num_processes,
        )
    except Exception as exc:  # pydantic's message names each bad field
        raise InvalidInput(f"Invalid cycle options: {exc}") from exc
    summary = cycle_consent(store, role, to_production, auto_rollback)
    if summary and not confirm:
        raise ConfirmationNeeded(summary)
    problems = check_request(params.cluster, None)
    if not role_known(store, role):
        problems.append(f"no runs or adapters for role {role!r}: log runs with log_run first")
    check(problems, "Cannot start a cycle:")
    job_id = start_job(store, "cycle", "learning.loop.cycle:cycle_job", params.model_dump(), subject=role)
    return CycleStarted(job_id=job_id, role=role, params=params)


def cycle_consent(store: Store, role: str, to_production: bool = False, auto_rollback: bool = False) -> str | None:
    """What a person must agree to before a cycle starts (None: it changes no production)."""
    changes = []
    if to_production:
        changes.append(
            f"if the new {role} adapter passes the gate it goes to production, replacing "
            f"{_production_id(store, role) or 'no adapter (the route has none)'}"
        )
    if auto_rollback:
        changes.append("if drift shows a regression, the previous production adapter goes back to production")
    return ("This cycle changes production: " + "; ".join(changes) + ".") if changes else None


def _production_id(store: Store, role: str) -> str | None:
    with store.read() as conn:
        row = production_for_route(conn, role, None, None)
    return row["id"] if row is not None else None


def cycle_job(ctx) -> dict:
    """The job: each stage in order; a failed stage ends the cycle and says which."""
    cycle = _Cycle(ctx)
    failed = run_stages(
        (
            ("make_sft", cycle.curate),
            ("train", cycle.train),
            ("grpo", cycle.grpo),
            ("evaluate", cycle.evaluate),
            ("promote", cycle.promote_stage),
            ("drift", cycle.drift),
        ),
        cycle.stages,
    )
    return cycle.finish(failed)


class _Cycle:
    """One cycle job's state: its params, the stages run so far, and what each stage found out
    (`out`, the job's result)."""

    def __init__(self, ctx) -> None:
        self.ctx, self.p, self.store = ctx, CycleParams(**ctx.params), ctx.store
        self.stages: list[Stage] = []
        self.out: dict[str, Any] = {"role": self.p.role, "stages": self.stages}
        self.previous = _production_id(self.store, self.p.role)

    def progress(self, stage: str, message: str) -> None:
        if self.ctx.cancelled():
            raise JobCancelled(f"cycle cancelled during {stage}")
        self.ctx.progress(force=True, stage=stage, message=message, step=len(self.stages), total_steps=STAGES)

    def follow(self, stage: str, job_id: str) -> dict:
        """Wait for a stage's own job, passing on its progress; its result, or why it did not succeed."""
        ctx = self.ctx
        status = follow_job(
            self.store,
            job_id,
            lambda s: ctx.progress(stage=stage, message=s.progress.get("message") or s.status),
            ctx.cancelled,
        )
        if status.status == "cancelled" and ctx.cancelled():
            raise JobCancelled(f"cycle cancelled during {stage} (job {job_id} cancelled too)")
        if status.status != "succeeded":
            raise RuntimeError(f"{stage} job {job_id} {status.status}: {status.error}")
        return status.result or {}

    def curate(self) -> dict:
        p, out = self.p, self.out
        self.progress("make_sft", f"curating {p.role} runs with reward >= {p.min_reward}")
        res = make_sft(self.store, role=p.role, min_reward=p.min_reward, days=p.days)
        out["dataset_id"] = res.dataset_id
        return res.model_dump(mode="json")

    def train(self) -> dict:
        p = self.p
        self.progress("train", f"training a {p.preset} adapter on {self.out['dataset_id']}")
        # train_adapter reports an unknown preset
        return self._train(
            "train",
            preset=cast(Preset, p.preset),
            max_steps=p.max_steps,
            cluster=p.cluster or "local",
            num_processes=p.num_processes,
        )

    def grpo(self) -> dict:
        p, out = self.p, self.out
        if p.grpo_steps is None:
            return {"skipped": True, "reason": "SFT only (grpo_steps not given)"}
        self.progress("grpo", f"GRPO for {p.grpo_steps} steps from {out['adapter_id']}")
        out["sft_adapter_id"] = out["adapter_id"]
        return self._train(
            "grpo",
            method="grpo",
            max_steps=p.grpo_steps,
            start_from=out["adapter_id"],
            cluster=p.cluster or "local",
            num_processes=p.num_processes,
        )

    def _train(self, stage: str, **options: Any) -> dict:
        """A training job on the cycle's dataset; its adapter becomes the cycle's adapter."""
        started = train_adapter(
            self.store, role=self.p.role, dataset_id=self.out["dataset_id"], base=self.p.base, **options
        )
        self.out["adapter_id"] = started.adapter_id
        assert started.job_id is not None  # not a dry run
        return {"job_id": started.job_id, "adapter_id": started.adapter_id, **self.follow(stage, started.job_id)}

    def evaluate(self) -> dict:
        out = self.out
        self.progress("evaluate", f"evaluating {out['adapter_id']} against its base")
        started = evaluate_adapter(self.store, out["adapter_id"])
        result = self.follow("evaluate", started.job_id)
        out["gate_passed"] = bool(result.get("gate_passed"))
        return {"job_id": started.job_id, **result}

    def promote_stage(self) -> dict:
        out = self.out
        status = get_adapter(self.store, out["adapter_id"]).status
        if not out["gate_passed"] or status != "candidate":
            return {"skipped": True, "status": status, "reason": "the gate did not pass; the adapter stays trained"}
        if not self.p.to_production:
            return {"status": "candidate", "reason": "gate passed; production only when asked (to_production)"}
        self.progress("promote", f"promoting {out['adapter_id']} to production")
        res = promote(
            self.store,
            out["adapter_id"],
            to="production",
            reason="run_cycle: gate passed",
            actor="run_cycle",
            confirm=True,
        )  # a person agreed when the cycle started
        return {"status": res.to_status, "replaced": res.replaced.adapter_id if res.replaced else None}

    def drift(self) -> dict:
        previous = self.previous
        if previous is None:
            return {"skipped": True, "reason": f"no adapter of role {self.p.role} was in production before this cycle"}
        self.progress("drift", f"checking {previous} for drift")
        res = detect_drift(
            self.store, new_id=previous, auto_rollback=self.p.auto_rollback, confirm=True, actor="run_cycle"
        )
        return res.model_dump(mode="json")

    def finish(self, failed: Stage | None) -> dict:
        """The job's result and last progress report; a failed stage fails the job."""
        out = self.out
        if failed is not None:
            out["failed_stage"] = failed.name
            out["error"] = failed.detail["error"]
        out["stages"] = [s.model_dump(mode="json") for s in self.stages]
        out["adapter_status"] = get_adapter(self.store, out["adapter_id"]).status if out.get("adapter_id") else None
        self.ctx.progress(
            force=True,
            stage="done",
            step=STAGES,
            total_steps=STAGES,
            stages=out["stages"],
            message=out.get("error") or f"adapter {out.get('adapter_id')} is {out.get('adapter_status')}",
        )
        if "failed_stage" in out:
            # The job fails; its progress keeps the report of every stage, its error names the stage.
            raise RuntimeError(f"cycle stopped at {out['failed_stage']}: {out['error']}")
        return out
