"""MCP tools for routing and drift: select_adapter, detect_drift, start/stop/list experiments."""

from __future__ import annotations

from mcp.server.mcpserver import MCPServer
from mcp.types import ToolAnnotations
from pydantic import Field
from typing_extensions import Annotated

from learning.routing import drift
from learning.routing import experiments
from learning.routing import router
from learning.errors import InvalidInput
from learning.store import Store
from server.mcp import APPEND, register_tool

# select_adapter never changes the registry; it appends the decision to a log.
SELECT = ToolAnnotations(read_only_hint=True, destructive_hint=False, idempotent_hint=False, open_world_hint=False)
# detect_drift records the check and, only with auto_rollback (and confirm), changes production.
DRIFT = ToolAnnotations(read_only_hint=False, destructive_hint=True, idempotent_hint=False, open_world_hint=False)
STOP = ToolAnnotations(read_only_hint=False, destructive_hint=False, idempotent_hint=True, open_world_hint=False)
READ = ToolAnnotations(read_only_hint=True, destructive_hint=False, idempotent_hint=True, open_world_hint=False)

Role = Annotated[str, Field(description="The agent role, e.g. coder, fixer, judge.")]
TaskType = Annotated[str | None, Field(description="Kind of task, e.g. 'refactor' (more specific routes win).")]
Complexity = Annotated[str | None, Field(description="easy, medium, hard, or free text (more specific routes win).")]


def register(server: MCPServer, store: Store) -> None:
    def select_adapter(
        role: Role,
        task_type: TaskType = None,
        complexity: Complexity = None,
        task_key: Annotated[str | None, Field(description="Stable key of the task (same key, same choice under an experiment).")] = None,
    ) -> router.Selection:
        """Which adapter to use for the next task: adapter id and path (None = the base model),
        the base model, the served name where it is deployed, and a decision_id. Call it before
        each task and pass decision_id to log_run afterwards so the reward counts for the
        adapter that earned it. Never changes the registry; it only logs the decision."""
        return router.select_adapter(store, role, task_type, complexity, task_key)

    def detect_drift(
        role: Annotated[str | None, Field(description="Compare this role's production adapter with the one it replaced (or the base).")] = None,
        task_type: TaskType = None,
        complexity: Complexity = None,
        new_id: Annotated[str | None, Field(description="Or compare this adapter ...")] = None,
        old_id: Annotated[str | None, Field(description="... with this one (default: the one new_id replaced, or the base).")] = None,
        experiment_id: Annotated[str | None, Field(description="Compare the two arms of this experiment, on its traffic only.")] = None,
        days: Annotated[float | None, Field(description="Only runs of the last N days.")] = None,
        since: Annotated[str | None, Field(description="Only runs from this time (ISO 8601).")] = None,
        last_n: Annotated[int | None, Field(description="Only the last N runs of each arm.")] = None,
        threshold: Annotated[float, Field(description="Smallest relative drop that counts (0.05 = 5%).")] = 0.05,
        alpha: Annotated[float, Field(description="False-alarm rate allowed.")] = 0.05,
        min_runs: Annotated[int, Field(description="Runs needed in each arm before deciding.")] = 30,
        sequential: Annotated[bool, Field(description="Use the always-valid sequential test: safe when you check again after every batch of runs.")] = False,
        auto_rollback: Annotated[bool, Field(description="On a regression, roll the route back. Needs confirm=true.")] = False,
        confirm: Annotated[bool, Field(description="Set true to allow auto_rollback to change production.")] = False,
    ) -> drift.DriftResult:
        """Is a new adapter earning less than the one it replaced? Compares rewards of the runs
        each served: counts, means, relative change with a 95% interval, p-value, and a decision
        (regression, improvement, no_change, insufficient_data with how many more runs are
        needed). Records the check. Changes production only with auto_rollback=true and
        confirm=true, and only on a regression."""
        if auto_rollback and not confirm:
            raise InvalidInput("auto_rollback changes which adapter serves production: call again with confirm=true "
                               "to allow it, or without auto_rollback to only check.")
        return drift.detect_drift(store, role, task_type, complexity, new_id, old_id, experiment_id, days=days,
                                  since=since, last_n=last_n, threshold=threshold, alpha=alpha, min_runs=min_runs,
                                  sequential=sequential, auto_rollback=auto_rollback)

    def start_experiment(
        role: Role,
        candidate_id: Annotated[str, Field(description="Adapter to try beside production on its route.")],
        mode: Annotated[experiments.Mode, Field(description="canary (fixed share of traffic) or thompson (share follows rewards).")] = "canary",
        fraction: Annotated[float | None, Field(description="Canary share for the candidate, e.g. 0.1.")] = None,
        seed: Annotated[int, Field(description="Seed of the hash that assigns tasks to arms.")] = 0,
        reason: Annotated[str, Field(description="Why, for the record.")] = "",
    ) -> experiments.Experiment:
        """Serve a candidate adapter beside the route's production adapter (or the base) on part
        of the traffic. select_adapter then reports the experiment and arm with each decision."""
        return experiments.start_experiment(store, role, candidate_id, mode, fraction, seed, reason)

    def stop_experiment(
        experiment_id: Annotated[str | None, Field(description="The experiment to stop ...")] = None,
        role: Annotated[str | None, Field(description="... or the role whose route runs one.")] = None,
        task_type: TaskType = None,
        complexity: Complexity = None,
        reason: Annotated[str, Field(description="Why, for the record.")] = "",
    ) -> experiments.Experiment:
        """Stop an experiment: all traffic goes back to production. Returns each arm's runs and mean reward."""
        return experiments.stop_experiment(store, experiment_id, role, task_type, complexity, reason)

    def list_experiments(
        role: Annotated[str | None, Field(description="Only this role.")] = None,
    ) -> list[experiments.Experiment]:
        """Experiments, newest first, with each arm's runs and mean reward."""
        return experiments.list_experiments(store, role)

    register_tool(server, select_adapter, annotations=SELECT, title="Select an adapter")
    register_tool(server, detect_drift, annotations=DRIFT, title="Detect drift (optionally roll back)")
    register_tool(server, start_experiment, annotations=APPEND, title="Start an experiment")
    register_tool(server, stop_experiment, annotations=STOP, title="Stop an experiment")
    register_tool(server, list_experiments, annotations=READ, title="List experiments")
