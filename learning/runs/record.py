"""Runs: log one, import many, read one back (what a run is and its limits:
learning/runs/schema.py; statistics: learning/runs/stats.py).

A run is one agent episode with the reward it earned.
"""

from __future__ import annotations

import hashlib
import io
import json
import sqlite3
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Annotated, NamedTuple

from pydantic import Field, ValidationError

from learning.clock import iso
from learning.errors import InvalidInput, NotFound
from learning.params import CLI_ONLY
from learning.runs.ids import written_run
from learning.runs.messages import exchange_json
from learning.runs.schema import (
    LIMITS,
    MAX_JSON_DEPTH,
    ImportError_,
    ImportResult,
    LogResult,
    RewardEvent,
    Run,
    RunIn,
    derive_task_key,
    parse_run,
)
from learning.runs.tokens import new_token, token_hash
from learning.store import Store, dumps, loads

IMPORT_BATCH = 2_000


class RunRow(NamedTuple):
    """One row of the runs table as written, its fields in column order (so a batch of them
    binds to the INSERT as it is)."""

    ts: float
    agent: str
    role: str
    task_type: str | None
    complexity: str | None
    task_key: str
    instruction: str
    input: str
    output: str
    reward: float | None  # None: pending, scored later (learning/runs/rewards.py)
    signals: str
    model: str | None
    adapter_id: str | None
    decision_id: str | None
    meta: str
    tests: str | None = None  # a JSON list of statements, or NULL
    import_key: str | None = None  # "<file sha256>:<line>" for an imported run, else NULL
    reward_token_sha256: str | None = None  # a pending run's reward token, hashed (learning/runs/tokens.py)
    messages: str | None = None  # the whole exchange, JSON (learning/runs/messages.py), or NULL
    tools: str | None = None  # the tools offered, JSON, or NULL


RUN_COLUMNS = RunRow._fields
_INSERT_RUN = f"INSERT INTO runs ({', '.join(RUN_COLUMNS)}) VALUES ({', '.join('?' * len(RUN_COLUMNS))})"
# An imported line whose key is stored already was imported before: it is left as it is.
_INSERT_NEW_RUN = _INSERT_RUN + " ON CONFLICT(import_key) DO NOTHING"
_INSERT_RUN_WITH_ID = f"INSERT INTO runs (id, {', '.join(RUN_COLUMNS)}) VALUES (?{', ?' * len(RUN_COLUMNS)})"


def _check_json_size(run: RunIn) -> tuple[str, str]:
    signals = run.signals.model_dump_json(exclude_none=True)
    meta = dumps(run.meta) if run.meta else "{}"
    for name, text in (("signals", signals), ("meta", meta)):
        if len(text) > LIMITS[name]:
            raise InvalidInput(
                f"Field '{name}' is {len(text):,} characters of JSON; the limit is {LIMITS[name]:,}. Keep it small."
            )
    return signals, meta


def row_of(run: RunIn, import_key: str | None = None, reward_token: str | None = None) -> RunRow:
    """The row a checked run is written as (with the hash of its reward token, when given one)."""
    signals, meta = _check_json_size(run)
    return RunRow(
        ts=run.time.timestamp() if run.time else time.time(),
        agent=run.agent,
        role=run.role,
        task_type=run.task_type,
        complexity=run.complexity,
        task_key=run.task_key or derive_task_key(run.instruction, run.input),
        instruction=run.instruction,
        input=run.input,
        output=run.output,
        reward=None if run.reward is None else float(run.reward),
        signals=signals,
        model=run.model,
        adapter_id=run.adapter_id,
        decision_id=run.decision_id,
        meta=meta,
        tests=dumps(run.tests) if run.tests else None,
        import_key=import_key,
        reward_token_sha256=token_hash(reward_token) if reward_token else None,
        messages=exchange_json(run.messages),
        tools=exchange_json(run.tools),
    )


def check_adapters(store: Store, ids: Iterable[str | None]) -> None:
    unknown = sorted({a for a in ids if a and not adapter_exists(store, a)})
    if unknown:
        raise InvalidInput(
            f"Unknown adapter_id {', '.join(map(repr, unknown[:5]))}: log the adapter id that "
            "select_adapter returned, register an adapter trained elsewhere with register_adapter, "
            "or leave adapter_id empty for the base model."
        )


def _attribute(store: Store, run: RunIn) -> RunIn:
    """A run carrying a decision_id is served by the decision's adapter: check the decision
    exists and fill adapter_id from it (None for the base model) when the run has none."""
    assert run.decision_id is not None  # called for runs that carry one
    decision = decision_row(store, run.decision_id)
    if decision is None:
        raise InvalidInput(
            f"Unknown decision_id {run.decision_id!r}: pass the decision_id that select_adapter "
            "returned, or leave it empty."
        )
    if decision["role"] != run.role:
        raise InvalidInput(f"decision {run.decision_id} was made for role {decision['role']!r}, not {run.role!r}.")
    if run.adapter_id is None:
        return run.model_copy(update={"adapter_id": decision["adapter_id"]})
    if run.adapter_id != decision["adapter_id"]:
        raise InvalidInput(
            f"adapter_id {run.adapter_id!r} differs from the adapter decision {run.decision_id} chose "
            f"({decision['adapter_id'] or 'the base model'}); leave adapter_id empty to take the decision's."
        )
    return run


def log_run(store: Store, run: RunIn | dict) -> LogResult:
    """Record one agent run and the reward it earned. Call it after every task, good or bad:
    learnloop learns from the best runs and from the contrast with the worst. Returns the run id;
    a run logged without a reward (pending) also gets its reward_token, which log_reward needs to
    score it, once. Raises InvalidInput naming each bad field."""
    run = parse_run(run)
    token = new_token() if run.reward is None else None
    (run_id,) = _log(store, [run], [token])
    task_key = run.task_key or derive_task_key(run.instruction, run.input)
    return LogResult(run_id=run_id, task_key=task_key, reward_token=token)


def log_runs(store: Store, runs: Iterable[RunIn | dict]) -> list[int]:
    """Record many runs as log_run records one, all in one transaction; returns their ids. For
    callers holding runs in memory (the demo, GRPO's sampled answers): no JSONL round trip. No
    reward tokens: a pending run logged here is scored by the home's owner (`reward --override`)."""
    return _log(store, [parse_run(r) for r in runs])


def _log(store: Store, checked: list[RunIn], reward_tokens: list[str | None] | None = None) -> list[int]:
    checked = [_attribute(store, r) if r.decision_id else r for r in checked]
    check_adapters(store, (r.adapter_id for r in checked))
    tokens = reward_tokens or [None] * len(checked)
    return insert_runs(store, [row_of(r, reward_token=t) for r, t in zip(checked, tokens)])


def import_runs_from(
    store: Store,
    path: Annotated[
        str | None,
        Field(
            description="A JSONL file on this machine, one run per line; '-' reads stdin (CLI only).",
            json_schema_extra=CLI_ONLY,
        ),
    ] = None,
    jsonl: Annotated[str | None, Field(description="Or the JSONL text itself.")] = None,
    skip_invalid: Annotated[
        bool, Field(description="Skip bad lines (reported) instead of stopping at the first bad batch.")
    ] = False,
    start_line: Annotated[int, Field(ge=1, description="First line to read (to resume after fixing a bad line).")] = 1,
    batch_size: Annotated[int, Field(ge=1, le=100_000, description="Runs written per transaction.")] = IMPORT_BATCH,
    stdin: IO[bytes] | None = None,
) -> ImportResult:
    """Import many runs at once from JSONL (each line is an object like log_run's arguments).
    Written in batches of 2,000, one transaction each; a batch with a bad line is never half
    written. Returns counts and the bad lines with their numbers. Over MCP the runs come as the
    text itself (jsonl): reading a file by its path is the CLI's (`learnloop import FILE`)."""
    if (path is None) == (jsonl is None):
        raise InvalidInput("Give exactly one of 'jsonl' (the text) or, on the CLI, a file path.")
    digest = hashlib.sha256(jsonl.encode()).hexdigest() if jsonl is not None else None
    if path == "-" and stdin is not None:
        source: str | IO[bytes] | IO[str] = stdin
    else:
        source = path if path is not None else io.StringIO(jsonl)
    return import_runs(
        store, source, batch_size=batch_size, skip_invalid=skip_invalid, start_line=start_line, digest=digest
    )


def _file_digest(source: str | Path | IO[bytes] | IO[str]) -> str | None:
    """The sha256 of a JSONL file (the import key of its lines); None for a stream."""
    if not isinstance(source, (str, Path)) or not Path(source).is_file():
        return None
    h = hashlib.sha256()
    with open(source, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _lines(source: str | Path | IO[bytes] | IO[str]) -> Iterator[bytes]:
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.is_file():
            raise NotFound(f"No such file: {path}. Give the path of a JSONL file (one run per line) or '-' for stdin.")
        with open(path, "rb") as handle:
            yield from handle
        return
    for line in source:
        yield line.encode() if isinstance(line, str) else line


def _parse_line(raw: bytes) -> RunIn:
    try:
        return RunIn.model_validate_json(raw)  # fast path: pydantic parses and validates in one go
    except ValidationError:
        pass
    # Slow path, only for bad lines: find the precise reason.
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"invalid UTF-8 at byte {exc.start}; re-encode the file as UTF-8") from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidInput(f"not valid JSON ({exc.msg} at column {exc.colno})") from exc
    except RecursionError as exc:
        raise InvalidInput(f"JSON nested too deeply (signals and meta: at most {MAX_JSON_DEPTH} levels)") from exc
    return parse_run(data)


def import_runs(
    store: Store,
    source: str | Path | IO[bytes] | IO[str],
    batch_size: int = IMPORT_BATCH,
    skip_invalid: bool = False,
    start_line: int = 1,
    digest: str | None = None,
) -> ImportResult:
    """Import runs from JSONL (one JSON object per line; blank lines ignored).

    Lines are validated and written in batches, one transaction per batch. By default the
    first batch holding a bad line is not written at all and the import stops, reporting
    every bad line of that batch; the batches before it stay written, and the error says
    which line to restart from (start_line). With skip_invalid, bad lines are skipped and
    reported and every good line is written.

    Each line of a file (or of `digest`, the sha256 of the text) is stored with its import key,
    "<sha256>:<line>": importing the same file again, after a crash or twice, adds only the
    lines not imported yet and counts the others in already_imported. Streams (stdin) have no key.
    """
    if batch_size < 1:
        raise InvalidInput("batch_size must be at least 1.")
    started = time.perf_counter()
    digest = (digest or _file_digest(source) or "")[:16]  # 64 bits of the sha256 name the content
    imported = skipped = batches = already = 0
    errors: list[ImportError_] = []
    batch: list[tuple[int, RunIn]] = []
    batch_errors: list[ImportError_] = []
    line_no = 0

    def flush() -> None:
        nonlocal imported, batches, batch, batch_errors, skipped, already
        if batch_errors and not skip_invalid:
            first_line = batch[0][0] if batch else batch_errors[0].line
            first_line = min(first_line, batch_errors[0].line)
            shown = "; ".join(f"line {e.line}: {e.error.rstrip('.')}" for e in batch_errors[:10])
            raise InvalidInput(
                f"Import stopped at a bad batch: {shown}. {imported} runs from earlier batches were "
                f"imported; nothing from line {first_line} on was written. Fix the line(s) and re-run "
                f"with start_line={first_line} (CLI: --start-line {first_line}), or pass skip_invalid "
                "(--skip-invalid) to import the good lines and skip the bad ones."
            )
        skipped += len(batch_errors)
        errors.extend(batch_errors[: max(0, 50 - len(errors))])
        if batch:
            check_adapters(store, (r.adapter_id for _, r in batch))
            keyed = [row_of(r, f"{digest}:{n}" if digest else None) for n, r in batch]
            written = insert_new_runs(store, keyed)
            imported += written
            already += len(batch) - written
            batches += 1
        batch, batch_errors = [], []

    try:
        for line_no, raw in enumerate(_lines(source), start=1):
            if line_no < start_line or not raw.strip():
                continue
            try:
                batch.append((line_no, _parse_line(raw)))
            except InvalidInput as exc:
                batch_errors.append(ImportError_(line=line_no, error=str(exc)))
            if len(batch) + len(batch_errors) >= batch_size:
                flush()
        flush()
    except (sqlite3.Error, OSError) as exc:
        first = batch[0][0] if batch else line_no
        raise InvalidInput(
            f"Import stopped at line {first} ({exc}): {imported} runs before it were imported. "
            f"Fix the cause and import the same file again (lines already imported are skipped), "
            f"or resume with start_line={first} (CLI: --start-line {first})."
        ) from exc
    return ImportResult(
        imported=imported,
        skipped=skipped,
        already_imported=already,
        lines=line_no,
        batches=batches,
        errors=errors,
        seconds=round(time.perf_counter() - started, 3),
    )


def row_to_run(row) -> Run:
    """A runs row as a Run: the time in ISO 8601; signals, meta, tests, messages and tools parsed
    from their JSON (the other columns, such as the reward token's hash, are not a Run's)."""
    return Run.model_validate(
        dict(row)
        | {
            "time": iso(row["ts"]),
            "signals": loads(row["signals"]) or {},
            "meta": loads(row["meta"]) or {},
            "tests": loads(row["tests"]) or [],
            "messages": loads(row["messages"]),
            "tools": loads(row["tools"]),
        }
    )


def get_run(store: Store, run_id: int) -> Run:
    """The stored run, with the rewards given to it after it was logged."""
    row = run_row(store, run_id)
    if row is None:
        raise NotFound(_no_run(run_id))
    return row_to_run(row).model_copy(update={"reward_history": reward_events(store, run_id)})


def _no_run(run_id: int) -> str:
    return f"No run {run_id}. List runs with run_stats or check the id log_run returned."


# ---- SQL: the runs table, and what logging a run checks in the registry's tables -------------


def insert_runs(
    store: Store, rows: Iterable[RunRow], conn: sqlite3.Connection | None = None, ids: list[int] | None = None
) -> list[int]:
    """Insert rows in one transaction (the caller's, when conn is given); returns their ids.
    ids: the ids reserved for them (learning/runs/ids.py), else SQLite gives the next ones."""
    if conn is None:
        with store.write() as conn:
            return insert_runs(store, rows, conn, ids)
    rows = list(rows)
    if ids is not None:
        conn.executemany(_INSERT_RUN_WITH_ID, [(i, *r) for i, r in zip(ids, rows)])
        return list(ids)
    conn.executemany(_INSERT_RUN, rows)
    # Inside one write transaction ids are consecutive: nobody else can insert meanwhile.
    last = conn.execute("SELECT last_insert_rowid() AS last").fetchone()["last"]
    return list(range(last - len(rows) + 1, last + 1))


def insert_new_runs(store: Store, rows: list[RunRow]) -> int:
    """Insert imported rows in one transaction, leaving out those whose import key is stored
    already; returns how many were written."""
    with store.write() as conn:
        before = conn.total_changes
        conn.executemany(_INSERT_NEW_RUN, rows)
        return conn.total_changes - before


def run_row(store: Store, run_id: int) -> sqlite3.Row | None:
    """The stored run (a run the gateway answered but has not written yet is waited for)."""
    return written_run(store, run_id)


def reward_events(store: Store, run_id: int, conn: sqlite3.Connection | None = None) -> list[RewardEvent]:
    """Every reward given to the run after it was logged (learning/runs/rewards.py), oldest first."""
    if conn is None:
        with store.read() as conn:
            return reward_events(store, run_id, conn)
    rows = conn.execute("SELECT * FROM reward_events WHERE run_id = ? ORDER BY id", (run_id,)).fetchall()
    fields = ("actor", "kind", "reward", "previous", "reason")
    return [RewardEvent(time=iso(r["ts"]), **{k: r[k] for k in fields}) for r in rows]


def decision_row(store: Store, decision_id: str) -> sqlite3.Row | None:
    """The routing decision a run refers to (written by learning/routing/router.py)."""
    with store.read() as conn:
        return conn.execute("SELECT * FROM decisions WHERE id = ?", (decision_id,)).fetchone()


def adapter_exists(store: Store, adapter_id: str) -> bool:
    with store.read() as conn:
        return conn.execute("SELECT 1 FROM adapters WHERE id = ?", (adapter_id,)).fetchone() is not None
