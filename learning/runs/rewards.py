"""Rewards given after a run was logged: set once, by whom the run was handed to.

A pending run (logged without a reward, or an exchange the gateway answered) is filled once:
- by whoever holds its reward token (log_run's `reward_token`, the gateway's
  `x-learnloop-reward-token`; learning/runs/tokens.py), through log_reward or the gateway's
  reward endpoint;
- or by the scorer that holds the run itself, which measured it (the gateway running a request's
  `metadata.tests`: `give_reward(..., measured=True)`).
A run that has a reward (given when logged, filled, or measured) keeps it: another reward is
refused (Conflict) and nothing changes, and so are tests for it (they are what it was scored on).
Only the home's owner corrects a reward, on the CLI (`learnloop reward ID R --override --reason
...`): a correction is a new event, attributed, that keeps the old value (`reward_history`).
Every reward given after logging is a row of `reward_events` (migration 9).
"""

from __future__ import annotations

import getpass
import sqlite3
import time
from collections.abc import Callable
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, Strict

from learning.clock import iso
from learning.errors import Conflict, Forbidden, InvalidInput, NotFound
from learning.params import CLI_ONLY
from learning.runs.record import reward_events, run_row
from learning.runs.schema import RewardEvent, RewardIn, Signals, parse_reward, rescored
from learning.runs.tokens import token_matches
from learning.store import Store, dumps, loads

Kind = Literal["scored", "correction"]


class RewardResult(BaseModel):
    run_id: int = Field(description="The run scored.")
    role: str
    task_key: str
    reward: float = Field(description="The reward stored now.")
    previous_reward: float | None = Field(description="The reward before (a correction); None: the run was pending.")
    history: list[RewardEvent] = Field(description="Every reward given to the run after it was logged, oldest first.")


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
            "(CLI: --tests once per statement). Refused once the run is scored."
        ),
    ] = None,
    reward_token: Annotated[
        str | None,
        Field(
            max_length=200,
            description="The run's reward token: log_run's reward_token, or the gateway's x-learnloop-reward-token "
            "header. Required (but with --override on the CLI).",
        ),
    ] = None,
    override: Annotated[
        bool,
        Field(
            description="Correct the reward as the home's owner, without the token, even of a run scored already "
            "(CLI only): a new event in the run's reward history, with the old value and --reason.",
            json_schema_extra=CLI_ONLY,
        ),
    ] = False,
    reason: Annotated[
        str | None,
        Field(
            max_length=2000, description="Why the correction (with --override; CLI only).", json_schema_extra=CLI_ONLY
        ),
    ] = None,
    actor: str = "python",
) -> RewardResult:
    """Score a pending run (logged without a reward, e.g. by the gateway), once, with the
    reward_token handed out with its run id; from then on it counts in curation, drift and
    run_stats. A reward is set once: a run scored already (given, measured by the gateway's
    tests, or filled before) is refused (Conflict), as is a wrong or missing token (Forbidden);
    nothing changes. Unknown run id: NotFound."""
    given = signals.model_dump(exclude_none=True) if isinstance(signals, Signals) else signals
    checked = parse_reward({"reward": reward, "signals": given, "tests": tests})
    if override:
        return correct_reward(store, run_id, checked, reason or "", f"{local_user()} via {actor}")
    if reason:
        raise InvalidInput("--reason goes with --override (a correction); a reward given with its token needs none.")
    return give_reward(store, run_id, checked, reward_token=reward_token, actor=actor)


def give_reward(
    store: Store,
    run_id: int,
    new: RewardIn | dict[str, Any],
    reward_token: str | None = None,
    measured: bool = False,
    actor: str = "python",
) -> RewardResult:
    """Fill a pending run's reward, once: with its reward token, or measured=True for the scorer
    that holds the run (the gateway scoring a request's tests). Signals given are merged over the
    run's; tests given become the run's. One transaction; refused with nothing changed."""
    new = new if isinstance(new, RewardIn) else parse_reward(new)

    def allowed(row: sqlite3.Row) -> None:
        if row["reward"] is not None:
            raise Conflict(_scored_already(run_id, row, bool(new.tests)))
        if not measured:
            _check_token(run_id, reward_token, row["reward_token_sha256"])

    return _score(store, run_id, new, allowed, actor, "scored", "")


def correct_reward(store: Store, run_id: int, new: RewardIn, reason: str, actor: str) -> RewardResult:
    """The home owner's correction: a new reward, attributed, the old one kept in the history.
    A scored run's signals and tests stay as they are (its evidence): a correction gives a reward."""
    if not reason.strip():
        raise InvalidInput("A correction needs its reason: --override --reason 'why the reward was wrong'.")

    def allowed(row: sqlite3.Row) -> None:
        if row["reward"] is not None and (new.tests or new.signals):
            raise Conflict(
                f"Run {run_id} is scored: its tests and signals are what it was scored on and stay as they are. "
                "A correction changes the reward only: leave out --tests and --signals. Nothing changed."
            )

    return _score(store, run_id, new, allowed, actor, "correction", reason.strip())


def local_user() -> str:
    """The user running this process (whoever holds the home on this machine)."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "the local user"


def _score(
    store: Store,
    run_id: int,
    new: RewardIn,
    allowed: Callable[[sqlite3.Row], None],
    actor: str,
    kind: Kind,
    reason: str,
) -> RewardResult:
    if run_row(store, run_id) is None:  # waits for a run the gateway answered but has not written yet
        raise NotFound(_no_run(run_id))
    now = time.time()
    with store.write() as conn:  # the check and the change in one transaction: a token fills once
        row = conn.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone()
        if row is None:
            raise NotFound(_no_run(run_id))
        allowed(row)
        signals_text, meta_text = rescored(loads(row["signals"]) or {}, loads(row["meta"]) or {}, new, iso(now))
        conn.execute(
            "UPDATE runs SET reward = ?, signals = ?, meta = ?, tests = ifnull(?, tests), reward_token_sha256 = NULL "
            "WHERE id = ?",
            (float(new.reward), signals_text, meta_text, dumps(new.tests) if new.tests else None, run_id),
        )
        conn.execute(
            "INSERT INTO reward_events (run_id, ts, actor, kind, reward, previous, reason) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (run_id, now, actor, kind, float(new.reward), row["reward"], reason),
        )
        history = reward_events(store, run_id, conn)
    return RewardResult(
        run_id=run_id,
        role=row["role"],
        task_key=row["task_key"],
        reward=float(new.reward),
        previous_reward=row["reward"],
        history=history,
    )


def _check_token(run_id: int, token: str | None, stored: str | None) -> None:
    if stored is None:
        raise Forbidden(
            f"Run {run_id} was recorded without a reward token (imported, logged in a batch, or before reward "
            "tokens), so nobody was handed its reward: the home's owner scores it on this machine with "
            f"`learnloop reward {run_id} REWARD --override --reason '...'`. Nothing changed."
        )
    if not token:
        raise Forbidden(
            f"A reward for run {run_id} needs its reward_token: the one log_run returned with the run id, or the "
            "x-learnloop-reward-token header of the gateway's answer. Nothing changed."
        )
    if not token_matches(token, stored):
        raise Forbidden(
            f"That reward token is not run {run_id}'s: a token scores only the run it was handed out with. Check "
            "the run id, and pass the token that came with it. Nothing changed."
        )


def _scored_already(run_id: int, row: sqlite3.Row, with_tests: bool) -> str:
    signals = loads(row["signals"]) or {}
    if signals.get("scored_by"):
        how = f"measured by {signals['scored_by']}"
    elif signals.get("executed") or signals.get("tests_total"):
        how = "measured by running its tests"
    else:
        how = "given"
    tests = " Its tests are fixed too: they are what it was scored on." if with_tests else ""
    return (
        f"Run {run_id} is scored already (reward {row['reward']:g}, {how}): a reward is set once, and nothing "
        f"changed.{tests} If it is wrong, the home's owner corrects it on this machine: "
        f"`learnloop reward {run_id} REWARD --override --reason '...'` (kept in the run's reward history "
        "with the old value)."
    )


def _no_run(run_id: int) -> str:
    return f"No run {run_id}. Use the run id log_run (or the gateway's x-learnloop-run-id) returned; run_stats counts runs."
