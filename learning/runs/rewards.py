"""Rewards given later: the log_reward verb scores a run logged before (a pending one, recorded
without a reward, or one re-scored). The update itself is learning.runs.record.set_reward."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, Field, Strict

from learning.runs.record import run_row, set_reward
from learning.runs.schema import Signals
from learning.store import Store


class RewardResult(BaseModel):
    run_id: int = Field(description="The run scored.")
    role: str
    task_key: str
    reward: float = Field(description="The reward stored now.")
    previous_reward: float | None = Field(
        description="The reward it replaced (kept in the run's meta.reward_history); None: the run was pending."
    )


def log_reward(
    store: Store,
    run_id: Annotated[
        int, Field(ge=1, description="The run to score: the id log_run (or the gateway's x-learnloop-run-id) returned.")
    ],
    reward: Annotated[float, Strict(), Field(description="How good the run's output was, in [0, 1].")],
    signals: Annotated[
        Signals | None,
        Field(description="What scoring observed (compiled, tests_passed, tests_total, ...); merged into the run's."),
    ] = None,
    tests: Annotated[
        list[str] | None,
        Field(
            description="Python statements that check an answer to the task; they replace the run's tests "
            "(CLI: --tests once per statement)."
        ),
    ] = None,
) -> RewardResult:
    """Give a reward to a run logged before: a pending run (logged without a reward, e.g. by the
    gateway) becomes scored and counts in curation, drift and run_stats; a run scored already has
    its reward replaced, the earlier one kept in meta.reward_history. Unknown run id: NotFound."""
    before = run_row(store, run_id)
    run = set_reward(
        store, run_id, reward, signals=signals.model_dump(exclude_none=True) if signals else None, tests=tests
    )
    assert run.reward is not None  # set_reward stores one
    return RewardResult(
        run_id=run.id,
        role=run.role,
        task_key=run.task_key,
        reward=run.reward,
        previous_reward=before["reward"] if before is not None else None,
    )
