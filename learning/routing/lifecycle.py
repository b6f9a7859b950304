"""The adapter lifecycle: promote and rollback, with the checks that keep it safe.

Built on learning.registry.adapters (statuses, events, the one-production-per-route transaction).
`plan_promote` / `plan_rollback` run every check and describe what would change (what is
replaced, the metrics of both) without changing anything: the MCP tool and the CLI show
that summary to a person before they confirm. `promote` / `rollback` repeat the checks and
deploy to the route's runtime when one is configured, then make the change in one transaction.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, Field

from learning.errors import ConfirmationNeeded, Conflict, InvalidInput
from learning.home import safe_id
from learning.params import Confirm, Reason
from learning.registry import adapters as registry
from learning.registry.queries import adapter_row, production_for_route
from learning.serve.deploy import deploy_target_row
from learning.store import Store

Target = Literal["candidate", "production", "archived"]


class AdapterBrief(BaseModel):
    """An adapter as a person deciding on a promotion needs to see it."""

    adapter_id: str
    status: str
    role: str
    task_type: str | None
    complexity: str | None
    base_model: str
    dataset_id: str | None
    eval_loss: float | None = Field(default=None, description="The adapter's eval loss on its test split.")
    base_eval_loss: float | None = Field(default=None, description="The base model's eval loss on the same examples.")
    pass_rate: float | None = Field(default=None, description="Share of generation checks passed by the adapter.")
    base_pass_rate: float | None = None
    pass_rate_basis: str | None = Field(
        default=None, description="What the pass rates count: 'tests' (the rows' tests ran), 'compile-only', ..."
    )
    tested_rows: int = Field(default=0, description="Test rows whose tests ran for both models.")
    tests_interval: list[float] | None = Field(
        default=None, description="The gate's paired interval on the tested pass-rate difference (adapter - base)."
    )
    tests_confidence: float | None = None
    gate_passed: bool | None = None


class PromotePlan(BaseModel):
    adapter: AdapterBrief
    to_status: str
    replaces: AdapterBrief | None = Field(
        description="The production adapter this one replaces (archived by the move)."
    )
    forced: bool
    summary: str = Field(description="What will change, with the metrics of both adapters, for a person to confirm.")


class PromoteResult(BaseModel):
    adapter: AdapterBrief = Field(description="The promoted adapter, after the move.")
    from_status: str
    to_status: str
    replaced: AdapterBrief | None = Field(description="The adapter it replaced, now archived (or None).")
    forced: bool
    reason: str
    summary: str


class RollbackPlan(BaseModel):
    route: dict[str, str | None]
    restore: AdapterBrief = Field(description="The archived adapter that goes back to production.")
    archive: AdapterBrief | None = Field(description="The current production adapter, which gets archived.")
    summary: str


class RollbackResult(BaseModel):
    route: dict[str, str | None]
    restored: AdapterBrief
    archived: AdapterBrief | None
    reason: str
    summary: str


class LifecycleOutcome(BaseModel):
    outcome: Literal["done", "declined", "cancelled"] = Field(
        description="done: the change was made; declined / cancelled: the person said no and nothing changed."
    )
    summary: str = Field(description="What the change does, with the metrics of the adapters involved.")
    promoted: PromoteResult | None = None
    rolled_back: RollbackResult | None = None


def brief(adapter: registry.Adapter) -> AdapterBrief:
    m = adapter.metrics or {}
    return AdapterBrief(
        adapter_id=adapter.id,
        status=adapter.status,
        role=adapter.role,
        task_type=adapter.task_type,
        complexity=adapter.complexity,
        base_model=adapter.base_model,
        dataset_id=adapter.dataset_id,
        eval_loss=m.get("eval_loss"),
        base_eval_loss=m.get("base_eval_loss"),
        pass_rate=m.get("pass_rate"),
        base_pass_rate=m.get("base_pass_rate"),
        pass_rate_basis=m.get("pass_rate_basis"),
        tested_rows=m.get("tested_rows") or 0,
        tests_interval=m.get("tests_difference_interval"),
        tests_confidence=m.get("tests_confidence"),
        gate_passed=m.get("gate_passed"),
    )


def _num(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4g}"


def describe(b: AdapterBrief) -> str:
    if b.eval_loss is None and b.pass_rate is None:
        return f"{b.adapter_id} ({b.status}): not evaluated"
    rates = f"pass rate {_num(b.pass_rate)} (base {_num(b.base_pass_rate)})"
    if b.pass_rate_basis == "tests":
        rates = f"pass rate from tests {_num(b.pass_rate)} on {b.tested_rows} tasks (base {_num(b.base_pass_rate)})"
        if b.tests_interval and b.tests_confidence:
            low, high = b.tests_interval
            rates += f", difference {b.tests_confidence:.0%} interval [{low:+.3f}, {high:+.3f}]"
    elif b.pass_rate_basis:
        rates += f" ({b.pass_rate_basis})"
    return f"{b.adapter_id} ({b.status}): eval loss {_num(b.eval_loss)} (base {_num(b.base_eval_loss)}), {rates}"


def _route(role: str, task_type: str | None = None, complexity: str | None = None) -> str:
    return "/".join(x for x in (role, task_type, complexity) if x)


def same_base(a, b) -> bool:
    """Two adapters share a base when their base hashes match, or (without hashes) their base names."""
    if a["base_hash"] and b["base_hash"]:
        return a["base_hash"] == b["base_hash"]
    return a["base_model"] == b["base_model"]


def _promotion_problem(row, old, to: str, force: bool) -> str | None:
    """Why this move is refused (None if allowed); the same rules before and inside the transaction."""
    aid, current = row["id"], row["status"]
    if current == to:
        return f"Adapter {aid} is already {to}."
    if current in ("failed", "training"):
        return f"Adapter {aid} is {current}; only a trained, candidate or archived adapter can be promoted."
    if to == "production":
        if current != "candidate" and not force:
            return (
                f"Adapter {aid} is {current}: only a candidate goes to production. Evaluate it (evaluate_adapter; "
                "the gate makes it a candidate) or pass force to override."
            )
        if old is not None and not same_base(row, old) and not force:
            return (
                f"Adapter {aid} was trained on base {row['base_model']!r} but the route's production adapter "
                f"{old['id']} uses {old['base_model']!r}; agents served by that base cannot load it. "
                "Pass force to switch the route's base anyway."
            )
    elif to not in registry.MOVES[current] and not force:
        return (
            f"Adapter {aid} is {current}; it cannot move to {to} "
            f"(allowed: {', '.join(sorted(registry.MOVES[current])) or 'none'}; force overrides)."
        )
    return None


def plan_promote(store: Store, adapter_id: str, to: Target = "production", force: bool = False) -> PromotePlan:
    """Check a promotion and describe it, changing nothing."""
    if to not in ("candidate", "production", "archived"):
        raise InvalidInput(f"Unknown target {to!r}; promote to candidate, production or archived.")
    adapter = registry.get_adapter(store, adapter_id)
    with store.read() as conn:
        row = adapter_row(store, adapter_id, conn)
        old = production_for_route(conn, *registry.route_of(row)) if to == "production" else None
    problem = _promotion_problem(row, old, to, force)
    if problem:
        raise Conflict(problem)
    me = brief(adapter)
    replaces = brief(registry.get_adapter(store, old["id"])) if old is not None else None
    lines = [
        f"Promote {adapter_id} from {adapter.status} to {to} (route {_route(adapter.role, adapter.task_type, adapter.complexity)})"
        + (" (forced)" if force else "")
        + "."
    ]
    if to == "production":
        lines.append(
            f"It replaces {replaces.adapter_id}, which will be archived."
            if replaces
            else "The route has no production adapter now; nothing is replaced."
        )
    elif adapter.status == "production":
        lines.append(
            "The route will have no production adapter (agents get the base model) until another is promoted "
            "or you roll back."
        )
    lines.append("  new: " + describe(me))
    if replaces:
        lines.append("  old: " + describe(replaces))
    return PromotePlan(adapter=me, to_status=to, replaces=replaces, forced=force, summary="\n".join(lines))


def changes_production(plan: PromotePlan) -> bool:
    return plan.to_status == "production" or plan.adapter.status == "production"


def promote(
    store: Store,
    adapter_id: str,
    to: Target = "production",
    force: bool = False,
    reason: str = "",
    actor: str = "learnloop",
    *,
    confirm: bool = False,
) -> PromoteResult:
    """Move an adapter to candidate, production or archived. To production, the route's current
    production adapter is archived in the same transaction. A move into or out of production
    needs confirm=True (a person agreed to plan_promote's summary); else ConfirmationNeeded."""
    plan = plan_promote(store, adapter_id, to, force)
    if changes_production(plan) and not confirm:
        raise ConfirmationNeeded(plan.summary)
    reason = reason or f"promoted to {to}"
    from_status = plan.adapter.status
    if to == "production":
        _deploy_first(store, adapter_id, plan.adapter.role, plan.adapter.task_type, plan.adapter.complexity)

        def in_transaction(row, old):
            problem = _promotion_problem(row, old, to, force)
            if problem:
                raise Conflict(problem)

        adapter, replaced_id = registry.set_production(
            store, adapter_id, actor, reason, force=force, check=in_transaction
        )
    else:
        adapter = registry.move(
            store, adapter_id, to, actor, reason, force=force, data={"forced": force} if force else None
        )
        replaced_id = None
    replaced = brief(registry.get_adapter(store, replaced_id)) if replaced_id else None
    return PromoteResult(
        adapter=brief(adapter),
        from_status=from_status,
        to_status=to,
        replaced=replaced,
        forced=force,
        reason=reason,
        summary=plan.summary,
    )


def plan_rollback(store: Store, role: str, task_type: str | None = None, complexity: str | None = None) -> RollbackPlan:
    safe_id(role, "role")
    route = {"role": role, "task_type": task_type, "complexity": complexity}
    prev = registry.previous_production(store, role, task_type, complexity)
    if prev is None:
        raise Conflict(
            f"Nothing to roll back to for route {_route(role, task_type, complexity)}: "
            "no adapter of this route was ever replaced in production (see adapter_history)."
        )
    with store.read() as conn:
        current = production_for_route(conn, role, task_type, complexity)
    restore = brief(registry.get_adapter(store, prev["id"]))
    archive = brief(registry.get_adapter(store, current["id"])) if current is not None else None
    lines = [
        f"Roll back route {_route(role, task_type, complexity)}: {restore.adapter_id} goes back to production"
        + (f", {archive.adapter_id} is archived." if archive else " (the route has no production adapter now).")
    ]
    lines.append("  restore: " + describe(restore))
    if archive:
        lines.append("  archive: " + describe(archive))
    return RollbackPlan(route=route, restore=restore, archive=archive, summary="\n".join(lines))


def rollback(
    store: Store,
    role: str,
    task_type: str | None = None,
    complexity: str | None = None,
    reason: str = "",
    actor: str = "learnloop",
    *,
    confirm: bool = False,
) -> RollbackResult:
    """The route's most recently replaced production adapter back to production, the current one
    archived. Needs confirm=True (a person agreed to plan_rollback's summary); else ConfirmationNeeded."""
    plan = plan_rollback(store, role, task_type, complexity)
    if not confirm:
        raise ConfirmationNeeded(plan.summary)
    reason = reason or "rollback requested"
    _deploy_first(store, plan.restore.adapter_id, role, task_type, complexity)
    restored, archived_id = registry.rollback_route(store, role, task_type, complexity, actor=actor, reason=reason)
    archived = brief(registry.get_adapter(store, archived_id)) if archived_id else None
    return RollbackResult(
        route=plan.route, restored=brief(restored), archived=archived, reason=reason, summary=plan.summary
    )


# ---- the verbs, as both faces call them --------------------------------------------------

Target_ = Annotated[
    Target, Field(description="candidate, production (replaces and archives the route's current one) or archived.")
]
Force = Annotated[
    bool,
    Field(
        description="Override the checks (production only from candidate; same base as the route's production adapter)."
    ),
]


def promote_adapter(
    store: Store,
    adapter_id: Annotated[str, Field(description="The adapter to move.")],
    to: Target_ = "production",
    force: Force = False,
    reason: Reason = "",
    confirm: Confirm = False,
    actor: str = "learnloop",
) -> LifecycleOutcome:
    """Promote an adapter (usually a candidate to production). Asks the person to confirm, showing
    what it replaces and the metrics of both; the replaced adapter is archived in the same step
    and rollback undoes it."""
    done = promote(store, adapter_id, to, force, reason or f"promoted to {to}", actor, confirm=confirm)
    return LifecycleOutcome(outcome="done", summary=done.summary, promoted=done)


def promote_consent(store: Store, adapter_id: str, to: Target = "production", force: bool = False) -> str | None:
    """What a person must agree to before promote_adapter (None: nothing, production is untouched)."""
    plan = plan_promote(store, adapter_id, to, force)
    return plan.summary if changes_production(plan) else None


def rollback_adapter(
    store: Store,
    role: Annotated[str, Field(description="The route's role, e.g. coder.")],
    task_type: Annotated[str | None, Field(description="The route's task type, if the route has one.")] = None,
    complexity: Annotated[str | None, Field(description="The route's complexity, if the route has one.")] = None,
    reason: Reason = "",
    confirm: Confirm = False,
    actor: str = "learnloop",
) -> LifecycleOutcome:
    """Put the route's previous production adapter back into production and archive the current
    one, in one step. Asks the person to confirm first."""
    done = rollback(store, role, task_type, complexity, reason or "rollback", actor, confirm=confirm)
    return LifecycleOutcome(outcome="done", summary=done.summary, rolled_back=done)


def rollback_consent(store: Store, role: str, task_type: str | None = None, complexity: str | None = None) -> str:
    return plan_rollback(store, role, task_type, complexity).summary


def refused_outcome(outcome: str, summary: str) -> LifecycleOutcome:
    """What promote and rollback return when the person declines: nothing changed."""
    return LifecycleOutcome(outcome=outcome, summary=summary)  # type: ignore[arg-type]


def _deploy_first(store: Store, adapter_id: str, role: str, task_type: str | None, complexity: str | None) -> None:
    """When the route has a runtime configured (deploy --set-target), put the adapter that is
    about to serve it on that runtime before the registry changes, and retire the old one there:
    a deployment that fails raises with its cause and leaves the registry as it was."""
    target = deploy_target_row(store, role, task_type, complexity)
    if target is None:
        return
    from learning.serve.deploy import deploy_adapter

    deploy_adapter(store, adapter_id, target["target"], target["url"])
