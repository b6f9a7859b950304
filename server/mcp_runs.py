"""MCP tools for runs: log_run, import_runs, run_stats."""

from __future__ import annotations

import io
from typing import Any

from mcp.server.mcpserver import MCPServer
from pydantic import Field
from typing_extensions import Annotated

from learning.runs import record as runs
from learning.runs import stats as runstats
from learning.errors import InvalidInput
from learning.store import Store
from server.mcp import APPEND, READ_ONLY, register_tool


def register(server: MCPServer, store: Store) -> None:
    def log_run(
        role: Annotated[str, Field(description="Who acted: coder, fixer, judge, or any lower-case name.")],
        output: Annotated[str, Field(description="What the agent produced: code, a patch, a verdict.")],
        reward: Annotated[float, Field(description="How good the output was, a number in [0, 1].")],
        instruction: Annotated[str, Field(description="The task as given to the agent.")] = "",
        input: Annotated[str, Field(description="Extra input: code to fix, diagnostics, context.")] = "",
        agent: Annotated[str, Field(description="Which agent ran the task.")] = "agent",
        task_type: Annotated[str | None, Field(description="Kind of task, e.g. 'refactor'.")] = None,
        complexity: Annotated[str | None, Field(description="easy, medium, hard, or free text.")] = None,
        task_key: Annotated[str | None, Field(description="Groups attempts at one task; derived from the instruction if absent.")] = None,
        signals: Annotated[dict[str, Any] | None, Field(description="compiled (bool), tests_passed, tests_total, iterations (ints), verdict (str), any other key.")] = None,
        model: Annotated[str | None, Field(description="What served the run (model name).")] = None,
        adapter_id: Annotated[str | None, Field(description="The adapter select_adapter chose; empty for the base model.")] = None,
        decision_id: Annotated[str | None, Field(description="The decision_id select_adapter returned, so the reward is attributed.")] = None,
        meta: Annotated[dict[str, Any] | None, Field(description="Free metadata (JSON object).")] = None,
        time: Annotated[str | None, Field(description="When the run happened (ISO 8601); now if absent.")] = None,
    ) -> runs.LogResult:
        """Record one agent run and the reward it earned. Call it after every task, good or bad:
        learnloop learns from the best runs and from the contrast with the worst. Returns the run id."""
        data = {k: v for k, v in locals().items() if k in runs.RunIn.model_fields and v is not None}
        return runs.log_run(store, data)

    def import_runs(
        path: Annotated[str | None, Field(description="A JSONL file on the server's machine, one run per line.")] = None,
        jsonl: Annotated[str | None, Field(description="Or the JSONL text itself.")] = None,
        skip_invalid: Annotated[bool, Field(description="Skip bad lines (reported) instead of stopping at the first bad batch.")] = False,
        start_line: Annotated[int, Field(ge=1, description="First line to read (to resume after fixing a bad line).")] = 1,
    ) -> runs.ImportResult:
        """Import many runs at once from JSONL (each line is an object like log_run's arguments).
        Written in batches of 2,000, one transaction each; a batch with a bad line is never half
        written. Returns counts and the bad lines with their numbers."""
        if (path is None) == (jsonl is None):
            raise InvalidInput("Give exactly one of 'path' (a JSONL file) or 'jsonl' (the text).")
        source = path if path is not None else io.StringIO(jsonl)
        return runs.import_runs(store, source, skip_invalid=skip_invalid, start_line=start_line)

    def run_stats(
        role: Annotated[str | None, Field(description="Only this role.")] = None,
        adapter_id: Annotated[str | None, Field(description="Only runs served by this adapter.")] = None,
        agent: Annotated[str | None, Field(description="Only this agent.")] = None,
        since: Annotated[str | None, Field(description="Start of the window (ISO 8601).")] = None,
        until: Annotated[str | None, Field(description="End of the window (ISO 8601).")] = None,
        days: Annotated[float | None, Field(description="The last N days (instead of since).")] = None,
        group_by: Annotated[runstats.GroupBy, Field(description="role, adapter, role_adapter or none.")] = "role",
    ) -> runstats.RunStats:
        """How runs are going: counts, mean reward, compile rate, test pass rate and mean
        iterations, by role and/or adapter, over a time window. Read-only."""
        return runstats.run_stats(store, role=role, adapter_id=adapter_id, agent=agent, since=since,
                              until=until, days=days, group_by=group_by)

    register_tool(server, log_run, annotations=APPEND, title="Log a run")
    register_tool(server, import_runs, annotations=APPEND, title="Import runs (JSONL)")
    register_tool(server, run_stats, annotations=READ_ONLY, title="Run statistics")
