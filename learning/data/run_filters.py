"""The SQL of curation: a curation's filters as WHERE fragments over the runs table, the runs
that pass them (streamed), and the funnel (how many runs are left after each filter).

Runs not scored yet (reward NULL: pending, see log_reward) never reach curation: the funnel
shows them dropped at a step named 'scored' when a role has any."""

from __future__ import annotations

from collections.abc import Generator
from typing import Any, NamedTuple

from learning.store import Store


class CurationRun(NamedTuple):
    """The columns of a run that curation reads."""

    id: int
    task_key: str
    reward: float
    instruction: str
    input: str
    output: str
    task_type: str | None
    complexity: str | None
    tests: str | None  # the run's tests as stored: a JSON list of statements, or None
    messages: str | None = None  # the whole exchange as stored (JSON), when recorded and asked for
    tools: str | None = None  # the tools offered as stored (JSON), likewise


class FunnelCount(NamedTuple):
    step: str
    runs_left: int


# Filters become WHERE fragments here, in a fixed order that is also the order of the funnel.
# Values are always bound.
_LENGTH = "(length(instruction) + length(input) + length(output))"
_FUNNEL = (
    ("min_reward", "reward >= ?"),
    ("max_reward", "reward <= ?"),
    ("task_type", "task_type = ?"),
    ("complexity", "complexity = ?"),
    ("agent", "agent = ?"),
    ("since", "ts >= ?"),
    ("until", "ts < ?"),
    ("min_length", _LENGTH + " >= ?"),
    ("max_length", _LENGTH + " <= ?"),
)
_SCORED = "reward IS NOT NULL"
_ORDER_BY = {"reward": "reward DESC, id", "task_key": "task_key, reward DESC, id"}


def _filters(filters: dict[str, Any]) -> list[tuple[str, str, Any]]:
    """(name, SQL fragment, value) of each filter given."""
    return [(name, sql, filters[name]) for name, sql in _FUNNEL if filters.get(name) is not None]


def stream_curation_runs(
    store: Store,
    role: str,
    filters: dict[str, Any],
    order: str = "reward",
    batch: int = 2_000,
    exchange: bool = False,
) -> Generator[CurationRun, None, None]:
    """Runs of a role passing the filters, read in batches from one cursor. order 'reward': best
    first (the index on (role, reward) gives this order without sorting, so a limit stops the read
    early); order 'task_key': attempts at one task together, best first. exchange: read the runs'
    messages and tools too (None otherwise: they can be large, and only chat rows use them)."""
    parts = _filters(filters)
    where = " AND ".join(["role = ?", _SCORED] + [sql for _, sql, _ in parts])
    columns = [c if exchange or c not in ("messages", "tools") else f"NULL AS {c}" for c in CurationRun._fields]
    sql = f"SELECT {', '.join(columns)} FROM runs WHERE {where} ORDER BY {_ORDER_BY[order]}"
    make = CurationRun._make
    with store.read() as conn:
        cursor = conn.cursor()
        cursor.row_factory = None  # plain tuples, named below: several times cheaper than sqlite3.Row
        cursor.execute(sql, [role] + [value for _, _, value in parts])
        try:
            while rows := cursor.fetchmany(batch):
                yield from map(make, rows)
        finally:
            cursor.close()


def curation_funnel(store: Store, role: str, filters: dict[str, Any]) -> list[FunnelCount]:
    """How many runs of the role are left after each filter in turn: role first, then 'scored'
    (only when some runs are pending), then each filter."""
    parts = _filters(filters)
    # The i-th sum repeats the scored condition and the first i filters, so it binds their values again.
    sums = [
        f"sum({' AND '.join([_SCORED] + [sql for _, sql, _ in parts[: i + 1]])}) AS left_{i}" for i in range(len(parts))
    ]
    bound = [value for i in range(len(parts)) for _, _, value in parts[: i + 1]]
    sql = f"SELECT count(*) AS runs, sum({_SCORED}) AS scored{''.join(', ' + s for s in sums)} FROM runs WHERE role = ?"
    with store.read() as conn:
        row = conn.execute(sql, bound + [role]).fetchone()
    scored = [FunnelCount("scored", row["scored"] or 0)] if (row["scored"] or 0) < row["runs"] else []
    return (
        [FunnelCount("role", row["runs"])]
        + scored
        + [FunnelCount(name, row[f"left_{i}"] or 0) for i, (name, _, _) in enumerate(parts)]
    )
