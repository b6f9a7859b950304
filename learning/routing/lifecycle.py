"""The adapter lifecycle: promote, rollback and register, with the checks that keep it safe.

Built on learning.registry.adapters (statuses, events, the one-production-per-route transaction).
`plan_promote` / `plan_rollback` run every check and describe what would change (what is
replaced, the metrics of both) without changing anything: the MCP tool and the CLI show
that summary to a person before they confirm. `promote` / `rollback` repeat the checks and
deploy to the route's runtime when one is configured, then make the change in one transaction.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field

from learning.registry import adapters as registry
from learning.errors import Conflict, ConfirmationNeeded, InvalidInput, LearnloopError, NotFound, check
from learning.home import safe_id, subdir
from learning.serve.deploy import deploy_target_row
from learning.store import Store
from learning.params import Confirm, Reason

Target = Literal["candidate", "production", "archived"]
LOAD_CHECK_TIMEOUT_S = 600


class AdapterBrief(BaseModel):
    """An adapter as a person deciding on a promotion needs to see it."""
    adapter_id: str
    status: str
    role: str
    task_type: str | None
    complexity: str | None
    base_model: str
    dataset_id: str | None
    eval_loss: float | None = Field(None, description="The adapter's eval loss on its test split.")
    base_eval_loss: float | None = Field(None, description="The base model's eval loss on the same examples.")
    pass_rate: float | None = Field(None, description="Share of generation checks passed by the adapter.")
    base_pass_rate: float | None = None
    gate_passed: bool | None = None


class PromotePlan(BaseModel):
    adapter: AdapterBrief
    to_status: str
    replaces: AdapterBrief | None = Field(description="The production adapter this one replaces (archived by the move).")
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
        description="done: the change was made; declined / cancelled: the person said no and nothing changed.")
    summary: str = Field(description="What the change does, with the metrics of the adapters involved.")
    promoted: PromoteResult | None = None
    rolled_back: RollbackResult | None = None


def brief(adapter: registry.Adapter) -> AdapterBrief:
    m = adapter.metrics or {}
    return AdapterBrief(adapter_id=adapter.id, status=adapter.status, role=adapter.role, task_type=adapter.task_type,
                        complexity=adapter.complexity, base_model=adapter.base_model, dataset_id=adapter.dataset_id,
                        eval_loss=m.get("eval_loss"), base_eval_loss=m.get("base_eval_loss"),
                        pass_rate=m.get("pass_rate"), base_pass_rate=m.get("base_pass_rate"),
                        gate_passed=m.get("gate_passed"))


def _num(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4g}"


def describe(b: AdapterBrief) -> str:
    if b.eval_loss is None and b.pass_rate is None:
        return f"{b.adapter_id} ({b.status}): not evaluated"
    return (f"{b.adapter_id} ({b.status}): eval loss {_num(b.eval_loss)} (base {_num(b.base_eval_loss)}), "
            f"pass rate {_num(b.pass_rate)} (base {_num(b.base_pass_rate)})")


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
            return (f"Adapter {aid} is {current}: only a candidate goes to production. Evaluate it (evaluate_adapter; "
                    "the gate makes it a candidate) or pass force to override.")
        if old is not None and not same_base(row, old) and not force:
            return (f"Adapter {aid} was trained on base {row['base_model']!r} but the route's production adapter "
                    f"{old['id']} uses {old['base_model']!r}; agents served by that base cannot load it. "
                    "Pass force to switch the route's base anyway.")
    elif to not in registry.MOVES[current] and not force:
        return (f"Adapter {aid} is {current}; it cannot move to {to} "
                f"(allowed: {', '.join(sorted(registry.MOVES[current])) or 'none'}; force overrides).")
    return None


def plan_promote(store: Store, adapter_id: str, to: Target = "production", force: bool = False) -> PromotePlan:
    """Check a promotion and describe it, changing nothing."""
    if to not in ("candidate", "production", "archived"):
        raise InvalidInput(f"Unknown target {to!r}; promote to candidate, production or archived.")
    adapter = registry.get_adapter(store, adapter_id)
    with store.read() as conn:
        row = registry.adapter_row(store, adapter_id, conn)
        old = registry.production_for_route(conn, *registry.route_of(row)) if to == "production" else None
    problem = _promotion_problem(row, old, to, force)
    if problem:
        raise Conflict(problem)
    me = brief(adapter)
    replaces = brief(registry.get_adapter(store, old["id"])) if old is not None else None
    lines = [f"Promote {adapter_id} from {adapter.status} to {to} (route {_route(adapter.role, adapter.task_type, adapter.complexity)})" + (" (forced)" if force else "") + "."]
    if to == "production":
        lines.append(f"It replaces {replaces.adapter_id}, which will be archived." if replaces
                     else "The route has no production adapter now; nothing is replaced.")
    elif adapter.status == "production":
        lines.append("The route will have no production adapter (agents get the base model) until another is promoted "
                     "or you roll back.")
    lines.append("  new: " + describe(me))
    if replaces:
        lines.append("  old: " + describe(replaces))
    return PromotePlan(adapter=me, to_status=to, replaces=replaces, forced=force, summary="\n".join(lines))


def changes_production(plan: PromotePlan) -> bool:
    return plan.to_status == "production" or plan.adapter.status == "production"


def promote(store: Store, adapter_id: str, to: Target = "production", force: bool = False,
            reason: str = "", actor: str = "learnloop", *, confirm: bool = False) -> PromoteResult:
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

        adapter, replaced_id = registry.set_production(store, adapter_id, actor, reason, force=force, check=in_transaction)
    else:
        adapter = registry.move(store, adapter_id, to, actor, reason, force=force, data={"forced": force} if force else None)
        replaced_id = None
    replaced = brief(registry.get_adapter(store, replaced_id)) if replaced_id else None
    return PromoteResult(adapter=brief(adapter), from_status=from_status, to_status=to, replaced=replaced,
                         forced=force, reason=reason, summary=plan.summary)


def plan_rollback(store: Store, role: str, task_type: str | None = None, complexity: str | None = None) -> RollbackPlan:
    route = {"role": role, "task_type": task_type, "complexity": complexity}
    prev = registry.previous_production(store, role, task_type, complexity)
    if prev is None:
        raise Conflict(f"Nothing to roll back to for route {_route(role, task_type, complexity)}: "
                       "no adapter of this route was ever replaced in production (see adapter_history).")
    with store.read() as conn:
        current = registry.production_for_route(conn, role, task_type, complexity)
    restore = brief(registry.get_adapter(store, prev["id"]))
    archive = brief(registry.get_adapter(store, current["id"])) if current is not None else None
    lines = [f"Roll back route {_route(role, task_type, complexity)}: {restore.adapter_id} goes back to production"
             + (f", {archive.adapter_id} is archived." if archive else " (the route has no production adapter now).")]
    lines.append("  restore: " + describe(restore))
    if archive:
        lines.append("  archive: " + describe(archive))
    return RollbackPlan(route=route, restore=restore, archive=archive, summary="\n".join(lines))


def rollback(store: Store, role: str, task_type: str | None = None, complexity: str | None = None,
             reason: str = "", actor: str = "learnloop", *, confirm: bool = False) -> RollbackResult:
    """The route's most recently replaced production adapter back to production, the current one
    archived. Needs confirm=True (a person agreed to plan_rollback's summary); else ConfirmationNeeded."""
    plan = plan_rollback(store, role, task_type, complexity)
    if not confirm:
        raise ConfirmationNeeded(plan.summary)
    reason = reason or "rollback requested"
    _deploy_first(store, plan.restore.adapter_id, role, task_type, complexity)
    restored, archived_id = registry.rollback_route(store, role, task_type, complexity, actor=actor, reason=reason)
    archived = brief(registry.get_adapter(store, archived_id)) if archived_id else None
    return RollbackResult(route=plan.route, restored=brief(restored), archived=archived, reason=reason,
                          summary=plan.summary)


# ---- the verbs, as both faces call them --------------------------------------------------

Target_ = Annotated[Target, Field(description="candidate, production (replaces and archives the route's current one) or archived.")]
Force = Annotated[bool, Field(description="Override the checks (production only from candidate; same base as the route's production adapter).")]


def promote_adapter(store: Store, adapter_id: Annotated[str, Field(description="The adapter to move.")],
                    to: Target_ = "production", force: Force = False, reason: Reason = "", confirm: Confirm = False,
                    actor: str = "learnloop") -> LifecycleOutcome:
    """Promote an adapter (usually a candidate to production). Asks the person to confirm, showing
    what it replaces and the metrics of both; the replaced adapter is archived in the same step
    and rollback undoes it."""
    done = promote(store, adapter_id, to, force, reason or f"promoted to {to}", actor, confirm=confirm)
    return LifecycleOutcome(outcome="done", summary=done.summary, promoted=done)


def promote_consent(store: Store, adapter_id: str, to: Target = "production", force: bool = False) -> str | None:
    """What a person must agree to before promote_adapter (None: nothing, production is untouched)."""
    plan = plan_promote(store, adapter_id, to, force)
    return plan.summary if changes_production(plan) else None


def rollback_adapter(store: Store, role: Annotated[str, Field(description="The route's role, e.g. coder.")],
                     task_type: Annotated[str | None, Field(description="The route's task type, if the route has one.")] = None,
                     complexity: Annotated[str | None, Field(description="The route's complexity, if the route has one.")] = None,
                     reason: Reason = "", confirm: Confirm = False, actor: str = "learnloop") -> LifecycleOutcome:
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


# ---- bringing in adapters trained elsewhere ----------------------------------------------

WEIGHT_FILES = ("adapter_model.safetensors", "adapter_model.bin")


def inspect_adapter_folder(path: Path) -> dict[str, Any]:
    """Read a PEFT adapter folder's config; report every problem together. No torch needed."""
    problems: list[str] = []
    config: dict[str, Any] = {}
    if not path.is_dir():
        raise NotFound(f"No adapter folder at {path}. Give the folder holding adapter_config.json "
                       "(the output_dir of Unsloth, Axolotl or LLaMA-Factory).")
    cfg = path / "adapter_config.json"
    if not cfg.is_file():
        problems.append(f"{cfg.name} is missing: this is not a PEFT adapter folder")
    else:
        try:
            config = json.loads(cfg.read_text())
            if not isinstance(config, dict) or "peft_type" not in config:
                problems.append(f"{cfg.name} has no peft_type: not a PEFT adapter config")
                config = config if isinstance(config, dict) else {}
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            problems.append(f"{cfg.name} is not valid JSON ({exc})")
    weights = [f for f in WEIGHT_FILES if (path / f).is_file()]
    if not weights:
        problems.append(f"no weights file ({' or '.join(WEIGHT_FILES)})")
    elif weights[0].endswith(".safetensors"):
        problem = safetensors_problem(path / weights[0])
        if problem:
            problems.append(problem)
    check(problems, f"The adapter folder {path} cannot be used:")
    return config


def safetensors_problem(path: Path) -> str | None:
    """Check a safetensors file's header without loading torch: 8-byte length, then JSON."""
    try:
        with open(path, "rb") as handle:
            size = int.from_bytes(handle.read(8), "little")
            if size <= 0 or size > 100_000_000 or size + 8 > path.stat().st_size:
                return f"{path.name} is corrupt (bad header length)"
            header = json.loads(handle.read(size))
    except (OSError, ValueError) as exc:
        return f"{path.name} is corrupt or unreadable ({exc})"
    if not isinstance(header, dict) or not any(k != "__metadata__" for k in header):
        return f"{path.name} holds no tensors"
    return None


def check_loads(base: str, path: Path) -> dict[str, Any]:
    """Load the base and the adapter on it in a fresh process (torch stays out of the caller);
    raise InvalidInput with the loader's message if it does not load."""
    root = str(Path(__file__).resolve().parent.parent)
    env = {**os.environ, "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", "")}
    code = "import sys; from learning.evaluate.evaluation import load_check_main; sys.exit(load_check_main(sys.argv[1:]))"
    try:
        proc = subprocess.run([sys.executable, "-c", code, base, str(path)], capture_output=True, text=True,
                              timeout=LOAD_CHECK_TIMEOUT_S, env=env)
    except subprocess.TimeoutExpired as exc:
        raise InvalidInput(f"Loading the adapter on {base!r} took over {LOAD_CHECK_TIMEOUT_S}s; check the base.") from exc
    lines = proc.stdout.strip().splitlines()
    result = json.loads(lines[-1]) if lines and lines[-1].startswith("{") else {"ok": False, "error": proc.stderr[-600:]}
    if not result.get("ok"):
        raise InvalidInput(f"The adapter at {path} does not load on base {base!r}: {result.get('error')}. "
                           "Pass the base it was trained on (--base, a local model folder or a cached hub id).")
    return result


def register_adapter(
    store: Store,
    path: Annotated[str | Path, Field(description="Folder of a PEFT adapter on this machine (adapter_config.json + weights), "
                                                  "e.g. Unsloth, Axolotl or LLaMA-Factory output.")],
    role: Annotated[str, Field(description="The role it serves: coder, fixer, judge, ...")],
    base: Annotated[str | None, Field(description="Its base model (local folder or cached hub id); default: "
                                                  "base_model_name_or_path from adapter_config.json.")] = None, *,
    adapter_id: str | None = None,
    task_type: Annotated[str | None, Field(description="Route it to this task type only.")] = None,
    complexity: Annotated[str | None, Field(description="Route it to this complexity only.")] = None,
    dataset_id: Annotated[str | None, Field(description="A learnloop dataset to evaluate it on by default.")] = None,
    actor: str = "learnloop", load_check: bool = True,
) -> registry.Adapter:
    """Bring an adapter trained elsewhere into the registry as 'trained', after checking that it
    loads on its base (takes seconds to minutes: the base is loaded in a separate process).
    Then evaluate_adapter and promote treat it like any other. The files are copied to adapters/<id>/.

    The load check starts a process that imports torch and loads the base (seconds for a small
    model, longer for a large one); it never runs in the server's own process."""
    src = Path(path).expanduser().resolve()
    safe_id(role, "role")
    config = inspect_adapter_folder(src)
    base = base or config.get("base_model_name_or_path")
    if not base:
        raise InvalidInput(f"{src}/adapter_config.json names no base model; pass the base (--base).")
    if base.startswith((".", "/", "~")) and not Path(base).expanduser().exists():
        raise InvalidInput(f"No base model folder {base}; pass the base the adapter was trained on (--base).")
    adapter_id = safe_id(adapter_id or f"{registry.new_adapter_id(role)}-{secrets.token_hex(2)}", "adapter id")
    if registry.adapter_row(store, adapter_id) is not None:
        raise Conflict(f"Adapter {adapter_id} already exists; choose another id.")
    loaded = check_loads(base, src) if load_check else {}
    dest = subdir(store.home, "adapters") / adapter_id
    shutil.copytree(src, dest, ignore=shutil.ignore_patterns("checkpoint-*", "optimizer.pt", "*.pth"))
    lora = {k: config.get(k) for k in ("peft_type", "r", "lora_alpha", "target_modules", "task_type")}
    try:
        return registry.create_adapter(
            store, adapter_id, role, base, str(dest), status="trained", task_type=task_type, complexity=complexity,
            dataset_id=dataset_id, method="external", source="registered", actor=actor, reason=f"registered from {src}",
            params={"lora": lora, "registered_from": str(src), "load_check": loaded})
    except LearnloopError:
        shutil.rmtree(dest, ignore_errors=True)
        raise
