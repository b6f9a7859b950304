"""The store: one SQLite file under the home, and all of learnloop's SQL.

WAL journal, a busy timeout, writes in `BEGIN IMMEDIATE` transactions (so concurrent
writers from several processes queue on the lock instead of failing with "database is
locked"), ordered migrations tracked in PRAGMA user_version. Connections are per thread,
so the MCP server's worker threads and the CLI share one code path.

Sections below group the SQL by domain object; each function is one statement or one
transaction.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from learning.errors import InvalidInput
from learning.home import DB_NAME, resolve_home

BUSY_TIMEOUT_MS = 60_000

# Ordered migrations: index i brings the schema from version i to i + 1. Never edit a
# released migration; append a new one.
MIGRATIONS: list[str] = [
    # 1: runs
    """
    CREATE TABLE runs (
        id INTEGER PRIMARY KEY,
        ts REAL NOT NULL,
        agent TEXT NOT NULL,
        role TEXT NOT NULL,
        task_type TEXT,
        complexity TEXT,
        task_key TEXT NOT NULL,
        instruction TEXT NOT NULL DEFAULT '',
        input TEXT NOT NULL DEFAULT '',
        output TEXT NOT NULL,
        reward REAL NOT NULL CHECK (reward >= 0 AND reward <= 1),
        signals TEXT NOT NULL DEFAULT '{}',
        model TEXT,
        adapter_id TEXT,
        decision_id TEXT,
        meta TEXT NOT NULL DEFAULT '{}'
    );
    CREATE INDEX runs_role_ts ON runs(role, ts);
    CREATE INDEX runs_adapter_ts ON runs(adapter_id, ts);
    CREATE INDEX runs_task_key ON runs(task_key);
    CREATE INDEX runs_role_reward ON runs(role, reward DESC);
    """,
    # 2: datasets, adapters and their events, jobs
    """
    CREATE TABLE datasets (
        id TEXT PRIMARY KEY,
        role TEXT NOT NULL,
        kind TEXT NOT NULL,
        format TEXT NOT NULL,
        created REAL NOT NULL,
        path TEXT NOT NULL,
        train_rows INTEGER NOT NULL,
        test_rows INTEGER NOT NULL,
        content_hash TEXT NOT NULL,
        metadata TEXT NOT NULL DEFAULT '{}'
    );
    CREATE INDEX datasets_role ON datasets(role, created);

    CREATE TABLE adapters (
        id TEXT PRIMARY KEY,
        role TEXT NOT NULL,
        task_type TEXT,
        complexity TEXT,
        base_model TEXT NOT NULL,
        base_hash TEXT,
        dataset_id TEXT,
        method TEXT NOT NULL DEFAULT 'sft',
        status TEXT NOT NULL,
        created REAL NOT NULL,
        updated REAL NOT NULL,
        path TEXT NOT NULL,
        params TEXT NOT NULL DEFAULT '{}',
        metrics TEXT NOT NULL DEFAULT '{}',
        source TEXT NOT NULL DEFAULT 'trained'
    );
    CREATE INDEX adapters_role ON adapters(role, status);
    -- At most one production adapter per route, enforced by the database itself.
    CREATE UNIQUE INDEX adapters_one_production
        ON adapters(role, ifnull(task_type, ''), ifnull(complexity, ''))
        WHERE status = 'production';

    CREATE TABLE adapter_events (
        id INTEGER PRIMARY KEY,
        adapter_id TEXT NOT NULL,
        ts REAL NOT NULL,
        actor TEXT NOT NULL,
        from_status TEXT,
        to_status TEXT NOT NULL,
        reason TEXT NOT NULL DEFAULT '',
        data TEXT NOT NULL DEFAULT '{}'
    );
    CREATE INDEX adapter_events_adapter ON adapter_events(adapter_id, id);

    CREATE TABLE jobs (
        id TEXT PRIMARY KEY,
        kind TEXT NOT NULL,
        target TEXT NOT NULL,
        status TEXT NOT NULL,
        params TEXT NOT NULL DEFAULT '{}',
        subject TEXT,
        created REAL NOT NULL,
        started REAL,
        finished REAL,
        pid INTEGER,
        pid_started REAL,
        heartbeat REAL,
        progress TEXT NOT NULL DEFAULT '{}',
        result TEXT,
        error TEXT,
        cancel_requested INTEGER NOT NULL DEFAULT 0,
        log_path TEXT NOT NULL
    );
    CREATE INDEX jobs_status ON jobs(status, created);
    """,
    # 3: routing decisions, experiments, drift checks, deployments (deployments are written by export)
    """
    CREATE TABLE decisions (
        id TEXT PRIMARY KEY,
        ts REAL NOT NULL,
        role TEXT NOT NULL,
        task_type TEXT,
        complexity TEXT,
        task_key TEXT,
        adapter_id TEXT,
        route TEXT NOT NULL,
        experiment_id TEXT,
        arm TEXT
    );
    CREATE INDEX decisions_experiment ON decisions(experiment_id, arm);

    CREATE TABLE experiments (
        id TEXT PRIMARY KEY,
        role TEXT NOT NULL,
        task_type TEXT,
        complexity TEXT,
        candidate_id TEXT NOT NULL,
        control_id TEXT,
        mode TEXT NOT NULL,
        fraction REAL,
        seed INTEGER NOT NULL,
        status TEXT NOT NULL,
        created REAL NOT NULL,
        stopped REAL,
        reason TEXT NOT NULL DEFAULT ''
    );
    -- At most one running experiment per route.
    CREATE UNIQUE INDEX experiments_one_running
        ON experiments(role, ifnull(task_type, ''), ifnull(complexity, ''))
        WHERE status = 'running';

    CREATE TABLE drift_checks (
        id INTEGER PRIMARY KEY,
        ts REAL NOT NULL,
        role TEXT,
        new_id TEXT,
        old_id TEXT,
        decision TEXT NOT NULL,
        result TEXT NOT NULL
    );
    CREATE INDEX drift_checks_role ON drift_checks(role, id);

    CREATE TABLE IF NOT EXISTS deployments (
        id TEXT PRIMARY KEY,
        adapter_id TEXT NOT NULL,
        target TEXT NOT NULL,
        url TEXT,
        served_name TEXT,
        created REAL NOT NULL,
        status TEXT NOT NULL
    );
    CREATE INDEX IF NOT EXISTS deployments_adapter ON deployments(adapter_id, created);
    """,
    # 4: the runtime each route is kept in step with (learning.routing.lifecycle deploys to it on promote and rollback).
    """
    CREATE TABLE deploy_targets (
        role TEXT NOT NULL,
        task_type TEXT,
        complexity TEXT,
        target TEXT NOT NULL,
        url TEXT NOT NULL,
        updated REAL NOT NULL
    );
    CREATE UNIQUE INDEX deploy_targets_route
        ON deploy_targets(role, ifnull(task_type, ''), ifnull(complexity, ''));
    """,
]

RUN_COLUMNS = (
    "ts", "agent", "role", "task_type", "complexity", "task_key", "instruction", "input",
    "output", "reward", "signals", "model", "adapter_id", "decision_id", "meta",
)


def dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), sort_keys=True)


def loads(text: str | None) -> Any:
    return json.loads(text) if text else None


class Store:
    """The database of one learnloop home. Cheap to create; connections are per thread."""

    def __init__(self, home: str | Path | None = None):
        self.home = resolve_home(home)
        self.path = self.home / DB_NAME
        self._local = threading.local()
        self._migrated = False
        self._migrate_lock = threading.Lock()

    # ---- connections and transactions -------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            try:
                conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
            except sqlite3.OperationalError as exc:
                raise InvalidInput(
                    f"Cannot open the database {self.path}: {exc}. Check that the home is writable "
                    "(--home or LEARNLOOP_HOME)."
                ) from exc
            conn.row_factory = sqlite3.Row
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute("PRAGMA foreign_keys = ON")
            self._local.conn = conn
        if not self._migrated:
            with self._migrate_lock:
                if not self._migrated:
                    self._migrate(conn)
                    self._migrated = True
        return conn

    def _migrate(self, conn: sqlite3.Connection) -> None:
        conn.execute("BEGIN IMMEDIATE")
        try:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > len(MIGRATIONS):
                raise InvalidInput(
                    f"The database {self.path} has schema version {version}, newer than this "
                    f"learnloop knows ({len(MIGRATIONS)}). Upgrade learnloop."
                )
            for number in range(version, len(MIGRATIONS)):
                for statement in MIGRATIONS[number].split(";"):
                    if statement.strip():
                        conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {number + 1}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    @contextmanager
    def read(self) -> Iterator[sqlite3.Connection]:
        yield self._connect()

    @contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction. Everything inside commits together or not at all."""
        conn = self._connect()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def schema_version(self) -> int:
        with self.read() as conn:
            return conn.execute("PRAGMA user_version").fetchone()[0]

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    # ---- runs ---------------------------------------------------------------------------

    def insert_runs(self, rows: Iterable[tuple], conn: sqlite3.Connection | None = None) -> list[int]:
        """Insert rows (tuples in RUN_COLUMNS order) in one transaction; returns their ids."""
        if conn is None:
            with self.write() as conn:
                return self.insert_runs(rows, conn)
        rows = list(rows)
        sql = f"INSERT INTO runs ({', '.join(RUN_COLUMNS)}) VALUES ({', '.join('?' * len(RUN_COLUMNS))})"
        if len(rows) == 1:
            return [conn.execute(sql, rows[0]).lastrowid]
        # Inside one write transaction ids are consecutive: nobody else can insert meanwhile.
        first = (conn.execute("SELECT ifnull(max(id), 0) FROM runs").fetchone()[0]) + 1
        conn.executemany(sql, rows)
        return list(range(first, first + len(rows)))

    def get_run(self, run_id: int) -> sqlite3.Row | None:
        with self.read() as conn:
            return conn.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone()

    def count_runs(self) -> int:
        with self.read() as conn:
            return conn.execute("SELECT count(*) FROM runs").fetchone()[0]

    def run_stats_rows(self, group_cols: list[str], role: str | None = None, adapter_id: str | None = None,
                       agent: str | None = None, start: float | None = None,
                       end: float | None = None) -> list[sqlite3.Row]:
        """Aggregates of runs grouped by columns (from a fixed list), filtered by the values given."""
        allowed = {"role", "adapter_id", "agent", "model", "task_type"}
        assert set(group_cols) <= allowed, group_cols
        conditions, args = [], []
        for col, value in (("role", role), ("adapter_id", adapter_id), ("agent", agent)):
            if value:
                conditions.append(f"{col} = ?")
                args.append(value)
        for condition, value in (("ts >= ?", start), ("ts < ?", end)):
            if value is not None:
                conditions.append(condition)
                args.append(value)
        where = " AND ".join(conditions)
        cols = ", ".join(group_cols) if group_cols else "'all'"
        sql = f"""
            SELECT {cols + ',' if group_cols else ''}
                count(*) AS runs,
                avg(reward) AS mean_reward,
                avg(CASE json_extract(signals, '$.compiled') WHEN 1 THEN 1.0 WHEN 0 THEN 0.0 END) AS compile_rate,
                sum(json_extract(signals, '$.compiled') IS NOT NULL) AS compile_known,
                avg(CASE WHEN json_extract(signals, '$.tests_total') > 0
                         THEN 1.0 * json_extract(signals, '$.tests_passed') / json_extract(signals, '$.tests_total')
                    END) AS test_pass_rate,
                avg(json_extract(signals, '$.iterations')) AS mean_iterations,
                min(ts) AS first_ts,
                max(ts) AS last_ts
            FROM runs {('WHERE ' + where) if where else ''}
            {('GROUP BY ' + cols) if group_cols else ''}
            ORDER BY runs DESC
        """
        with self.read() as conn:
            return conn.execute(sql, args).fetchall()

    # ---- datasets -----------------------------------------------------------------------

    # Curation filters become WHERE fragments here, in a fixed order that is also the order of
    # the funnel (the count of runs left after each filter). Values are always bound.
    _LENGTH = "(length(instruction) + length(input) + length(output))"
    _FUNNEL = (
        ("min_reward", "reward >= ?"), ("max_reward", "reward <= ?"), ("task_type", "task_type = ?"),
        ("complexity", "complexity = ?"), ("agent", "agent = ?"), ("since", "ts >= ?"), ("until", "ts < ?"),
        ("min_length", _LENGTH + " >= ?"), ("max_length", _LENGTH + " <= ?"),
    )

    def _curation_filters(self, filters: dict[str, Any]) -> list[tuple[str, str, Any]]:
        return [(name, sql, filters[name]) for name, sql in self._FUNNEL if filters.get(name) is not None]

    def stream_curation_runs(self, role: str, filters: dict[str, Any], order: str = "reward",
                             batch: int = 2_000) -> Iterator[tuple]:
        """Runs of a role passing the filters, as tuples (id, task_key, reward, instruction, input,
        output, task_type, complexity), read in batches from one cursor. order 'reward': best first
        (the index on (role, reward) gives this order without sorting, so a limit stops the read
        early); order 'task_key': attempts at one task together, best first."""
        parts = self._curation_filters(filters)
        where = " AND ".join(["role = ?"] + [sql for _, sql, _ in parts])
        order_by = {"reward": "reward DESC, id", "task_key": "task_key, reward DESC, id"}[order]
        sql = (f"SELECT id, task_key, reward, instruction, input, output, task_type, complexity FROM runs "
               f"WHERE {where} ORDER BY {order_by}")
        with self.read() as conn:
            cursor = conn.cursor()
            cursor.row_factory = None  # plain tuples: several times cheaper than sqlite3.Row
            cursor.execute(sql, [role] + [value for _, _, value in parts])
            try:
                while rows := cursor.fetchmany(batch):
                    yield from rows
            finally:
                cursor.close()

    def curation_funnel(self, role: str, filters: dict[str, Any]) -> list[tuple[str, int]]:
        """How many runs of the role are left after each filter in turn: [('role', n), (filter, n), ...]."""
        parts = self._curation_filters(filters)
        # The i-th sum repeats the first i conditions, so it binds their values again.
        sums = ["sum(" + " AND ".join(sql for _, sql, _ in parts[: i + 1]) + ")" for i in range(len(parts))]
        bound = [value for i in range(len(parts)) for _, _, value in parts[: i + 1]]
        sql = f"SELECT count(*){''.join(', ' + s for s in sums)} FROM runs WHERE role = ?"
        with self.read() as conn:
            row = conn.execute(sql, bound + [role]).fetchone()
        return [("role", row[0])] + [(name, row[i + 1] or 0) for i, (name, _, _) in enumerate(parts)]

    def role_run_counts(self) -> dict[str, int]:
        with self.read() as conn:
            return {r[0]: r[1] for r in conn.execute("SELECT role, count(*) FROM runs GROUP BY role ORDER BY 2 DESC")}

    def insert_dataset(self, row: dict[str, Any]) -> None:
        cols = list(row)
        with self.write() as conn:
            conn.execute(f"INSERT INTO datasets ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})",
                         [row[c] for c in cols])

    def get_dataset(self, dataset_id: str) -> sqlite3.Row | None:
        with self.read() as conn:
            return conn.execute("SELECT * FROM datasets WHERE id = ?", (dataset_id,)).fetchone()

    def list_datasets(self, role: str | None = None, kind: str | None = None, limit: int = 100) -> list[sqlite3.Row]:
        where, args = [], []
        for col, value in (("role", role), ("kind", kind)):
            if value:
                where.append(f"{col} = ?")
                args.append(value)
        sql = ("SELECT * FROM datasets" + (" WHERE " + " AND ".join(where) if where else "")
               + " ORDER BY created DESC, id DESC LIMIT ?")
        with self.read() as conn:
            return conn.execute(sql, args + [limit]).fetchall()


    # ---- adapters and their events ------------------------------------------------------

    def insert_adapter(self, conn: sqlite3.Connection, row: dict[str, Any]) -> None:
        cols = list(row)
        conn.execute(
            f"INSERT INTO adapters ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})",
            [row[c] for c in cols],
        )

    def get_adapter(self, adapter_id: str, conn: sqlite3.Connection | None = None) -> sqlite3.Row | None:
        sql = "SELECT * FROM adapters WHERE id = ?"
        if conn is not None:
            return conn.execute(sql, (adapter_id,)).fetchone()
        with self.read() as c:
            return c.execute(sql, (adapter_id,)).fetchone()

    def adapter_exists(self, adapter_id: str) -> bool:
        with self.read() as conn:
            return conn.execute("SELECT 1 FROM adapters WHERE id = ?", (adapter_id,)).fetchone() is not None

    def list_adapters(self, role: str | None = None, status: str | None = None) -> list[sqlite3.Row]:
        where, args = [], []
        if role:
            where.append("role = ?")
            args.append(role)
        if status:
            where.append("status = ?")
            args.append(status)
        sql = "SELECT * FROM adapters" + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY created DESC, id DESC"
        with self.read() as conn:
            return conn.execute(sql, args).fetchall()

    def set_adapter_status(
        self, conn: sqlite3.Connection, adapter_id: str, from_status: str | None, to_status: str,
        actor: str, reason: str, data: dict | None = None,
    ) -> None:
        """Move an adapter to a status and record the event, inside the caller's transaction."""
        now = time.time()
        conn.execute("UPDATE adapters SET status = ?, updated = ? WHERE id = ?", (to_status, now, adapter_id))
        conn.execute(
            "INSERT INTO adapter_events (adapter_id, ts, actor, from_status, to_status, reason, data) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (adapter_id, now, actor, from_status, to_status, reason, dumps(data or {})),
        )

    def update_adapter_fields(self, conn: sqlite3.Connection, adapter_id: str, **fields: Any) -> None:
        allowed = {"metrics", "params", "path", "base_hash", "dataset_id", "updated"}
        assert set(fields) <= allowed, fields
        sets = ", ".join(f"{k} = ?" for k in fields)
        conn.execute(f"UPDATE adapters SET {sets} WHERE id = ?", [*fields.values(), adapter_id])

    def adapter_events(self, adapter_id: str | None = None, role: str | None = None) -> list[sqlite3.Row]:
        if adapter_id:
            sql, args = "SELECT * FROM adapter_events WHERE adapter_id = ? ORDER BY id", [adapter_id]
        elif role:
            sql = ("SELECT e.* FROM adapter_events e JOIN adapters a ON a.id = e.adapter_id "
                   "WHERE a.role = ? ORDER BY e.id")
            args = [role]
        else:
            sql, args = "SELECT * FROM adapter_events ORDER BY id", []
        with self.read() as conn:
            return conn.execute(sql, args).fetchall()

    def production_for_route(self, conn: sqlite3.Connection, role: str, task_type: str | None,
                             complexity: str | None) -> sqlite3.Row | None:
        return conn.execute(
            "SELECT * FROM adapters WHERE status = 'production' AND role = ? AND ifnull(task_type, '') = ifnull(?, '') "
            "AND ifnull(complexity, '') = ifnull(?, '')", (role, task_type, complexity)).fetchone()

    def previous_production(self, conn: sqlite3.Connection, role: str, task_type: str | None,
                            complexity: str | None) -> sqlite3.Row | None:
        """The adapter of the route most recently moved from production to archived, if still archived."""
        return conn.execute(
            "SELECT a.* FROM adapter_events e JOIN adapters a ON a.id = e.adapter_id "
            "WHERE e.from_status = 'production' AND e.to_status = 'archived' AND a.status = 'archived' "
            "AND a.role = ? AND ifnull(a.task_type, '') = ifnull(?, '') AND ifnull(a.complexity, '') = ifnull(?, '') "
            "ORDER BY e.id DESC LIMIT 1", (role, task_type, complexity)).fetchone()

    # ---- jobs ---------------------------------------------------------------------------

    def insert_job(self, row: dict[str, Any]) -> None:
        cols = list(row)
        with self.write() as conn:
            conn.execute(
                f"INSERT INTO jobs ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})",
                [row[c] for c in cols],
            )

    def get_job(self, job_id: str) -> sqlite3.Row | None:
        with self.read() as conn:
            return conn.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()

    def list_jobs(self, status: str | None = None, limit: int = 50) -> list[sqlite3.Row]:
        with self.read() as conn:
            if status:
                return conn.execute(
                    "SELECT * FROM jobs WHERE status = ? ORDER BY created DESC LIMIT ?", (status, limit)
                ).fetchall()
            return conn.execute("SELECT * FROM jobs ORDER BY created DESC LIMIT ?", (limit,)).fetchall()

    def active_jobs(self) -> list[sqlite3.Row]:
        with self.read() as conn:
            return conn.execute("SELECT * FROM jobs WHERE status IN ('queued', 'running')").fetchall()

    def update_job(self, job_id: str, only_if_status: tuple[str, ...] | None = None, **fields: Any) -> bool:
        """Set job fields; with only_if_status, only when the job is in one of those states.
        Returns whether a row changed."""
        allowed = {"status", "started", "finished", "pid", "pid_started", "heartbeat", "progress",
                   "result", "error", "cancel_requested", "params", "subject"}
        assert set(fields) <= allowed, fields
        sets = ", ".join(f"{k} = ?" for k in fields)
        sql = f"UPDATE jobs SET {sets} WHERE id = ?"
        args = [*fields.values(), job_id]
        if only_if_status:
            sql += f" AND status IN ({', '.join('?' * len(only_if_status))})"
            args += list(only_if_status)
        with self.write() as conn:
            return conn.execute(sql, args).rowcount > 0

    # ---- routes, decisions and deployments ----------------------------------------------

    def route_token(self, conn: sqlite3.Connection) -> tuple:
        """Changes whenever an adapter moves (every move writes an event) or an experiment
        starts or stops: the router's cache key."""
        return tuple(conn.execute(
            "SELECT (SELECT ifnull(max(id), 0) FROM adapter_events), (SELECT count(*) FROM experiments), "
            "(SELECT count(stopped) FROM experiments)").fetchone())

    def route_table(self, conn: sqlite3.Connection) -> tuple[list[sqlite3.Row], list[sqlite3.Row], list[sqlite3.Row]]:
        """Production adapters, running experiments, and each role's latest base model."""
        production = conn.execute("SELECT id, role, task_type, complexity, base_model, path FROM adapters "
                                  "WHERE status = 'production'").fetchall()
        experiments = conn.execute("SELECT * FROM experiments WHERE status = 'running'").fetchall()
        bases = conn.execute("SELECT role, base_model FROM adapters a WHERE created = "
                             "(SELECT max(created) FROM adapters b WHERE b.role = a.role)").fetchall()
        return production, experiments, bases

    def adapter_brief(self, conn: sqlite3.Connection, adapter_id: str) -> sqlite3.Row | None:
        return conn.execute("SELECT id, role, task_type, complexity, base_model, path, status FROM adapters "
                            "WHERE id = ?", (adapter_id,)).fetchone()

    def insert_decisions(self, conn: sqlite3.Connection, rows: list[tuple]) -> None:
        """rows: (id, ts, role, task_type, complexity, task_key, adapter_id, route, experiment_id, arm)."""
        conn.executemany("INSERT INTO decisions (id, ts, role, task_type, complexity, task_key, adapter_id, route, "
                     "experiment_id, arm) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)

    def get_decision(self, decision_id: str) -> sqlite3.Row | None:
        with self.read() as conn:
            return conn.execute("SELECT * FROM decisions WHERE id = ?", (decision_id,)).fetchone()

    def experiment_arm_rewards(self, conn: sqlite3.Connection, experiment_id: str) -> list[sqlite3.Row]:
        """Runs attributed (through their decision) to each arm of an experiment: count and reward sum."""
        return conn.execute(
            "SELECT d.arm AS arm, count(r.id) AS runs, ifnull(sum(r.reward), 0) AS reward_sum "
            "FROM decisions d JOIN runs r ON r.decision_id = d.id WHERE d.experiment_id = ? GROUP BY d.arm",
            (experiment_id,)).fetchall()

    def insert_experiment(self, conn: sqlite3.Connection, row: dict[str, Any]) -> None:
        cols = list(row)
        conn.execute(f"INSERT INTO experiments ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})",
                     [row[c] for c in cols])

    def get_experiment(self, experiment_id: str, conn: sqlite3.Connection | None = None) -> sqlite3.Row | None:
        with self.read() as c:
            return (conn or c).execute("SELECT * FROM experiments WHERE id = ?", (experiment_id,)).fetchone()

    def running_experiment(self, conn: sqlite3.Connection, role: str, task_type: str | None,
                           complexity: str | None) -> sqlite3.Row | None:
        return conn.execute(
            "SELECT * FROM experiments WHERE status = 'running' AND role = ? AND ifnull(task_type, '') = ifnull(?, '') "
            "AND ifnull(complexity, '') = ifnull(?, '')", (role, task_type, complexity)).fetchone()

    def stop_experiment(self, conn: sqlite3.Connection, experiment_id: str, reason: str) -> None:
        conn.execute("UPDATE experiments SET status = 'stopped', stopped = ?, reason = ? WHERE id = ?",
                     (time.time(), reason, experiment_id))

    def list_experiments(self, role: str | None = None) -> list[sqlite3.Row]:
        with self.read() as conn:
            if role:
                return conn.execute("SELECT * FROM experiments WHERE role = ? ORDER BY created DESC", (role,)).fetchall()
            return conn.execute("SELECT * FROM experiments ORDER BY created DESC").fetchall()

    def latest_deployment(self, adapter_id: str, conn: sqlite3.Connection | None = None) -> sqlite3.Row | None:
        """The newest deployment of an adapter that is not failed or removed."""
        sql = ("SELECT * FROM deployments WHERE adapter_id = ? AND status NOT IN ('failed', 'removed') "
               "ORDER BY created DESC LIMIT 1")
        with self.read() as c:
            return (conn or c).execute(sql, (adapter_id,)).fetchone()

    def arm_rewards(self, role: str | None, adapter_id: str | None, task_type: str | None = None,
                    complexity: str | None = None, start: float | None = None, end: float | None = None,
                    last_n: int | None = None, experiment_id: str | None = None,
                    arm: str | None = None) -> list[tuple[float, float]]:
        """(ts, reward) of the runs served by one adapter (None: the base model, which needs a role),
        oldest first; optionally only runs of a route, a time window, the last N, or one experiment
        (with an arm: the runs of that arm, whichever adapter served them)."""
        where, args = (["r.adapter_id IS ?"], [adapter_id]) if arm is None else ([], [])
        for col, value in (("r.role", role), ("r.task_type", task_type), ("r.complexity", complexity)):
            if value is not None:
                where.append(f"{col} = ?")
                args.append(value)
        if start is not None:
            where.append("r.ts >= ?")
            args.append(start)
        if end is not None:
            where.append("r.ts < ?")
            args.append(end)
        join = ""
        if experiment_id is not None:
            join = "JOIN decisions d ON d.id = r.decision_id"
            where.append("d.experiment_id = ?")
            args.append(experiment_id)
            if arm is not None:
                where.append("d.arm = ?")
                args.append(arm)
        sql = f"SELECT r.ts, r.reward FROM runs r {join} WHERE {' AND '.join(where)} ORDER BY r.ts DESC, r.id DESC"
        if last_n is not None:
            sql += " LIMIT ?"
            args.append(last_n)
        with self.read() as conn:
            rows = conn.execute(sql, args).fetchall()
        return [(r[0], r[1]) for r in reversed(rows)]

    def role_rewards(self, role: str) -> list[sqlite3.Row]:
        """(ts, reward, adapter_id) of every run of a role, oldest first (for the report)."""
        with self.read() as conn:
            return conn.execute("SELECT ts, reward, adapter_id FROM runs WHERE role = ? ORDER BY ts, id",
                                (role,)).fetchall()

    def role_known(self, role: str) -> bool:
        with self.read() as conn:
            return conn.execute("SELECT EXISTS(SELECT 1 FROM adapters WHERE role = ?) "
                                "OR EXISTS(SELECT 1 FROM runs WHERE role = ?)", (role, role)).fetchone()[0] == 1

    def known_roles(self) -> list[str]:
        with self.read() as conn:
            return [r[0] for r in conn.execute("SELECT role FROM adapters UNION SELECT DISTINCT role FROM runs "
                                               "ORDER BY 1 LIMIT 50")]

    def last_production_event(self, adapter_id: str) -> sqlite3.Row | None:
        with self.read() as conn:
            return conn.execute("SELECT * FROM adapter_events WHERE adapter_id = ? AND to_status = 'production' "
                                "ORDER BY id DESC LIMIT 1", (adapter_id,)).fetchone()

    def insert_drift_check(self, ts: float, role: str | None, new_id: str | None, old_id: str | None,
                           decision: str, result: str) -> None:
        with self.write() as conn:
            conn.execute("INSERT INTO drift_checks (ts, role, new_id, old_id, decision, result) VALUES (?, ?, ?, ?, ?, ?)",
                         (ts, role, new_id, old_id, decision, result))

    def latest_drift_check(self, role: str) -> sqlite3.Row | None:
        with self.read() as conn:
            return conn.execute("SELECT * FROM drift_checks WHERE role = ? ORDER BY id DESC LIMIT 1", (role,)).fetchone()

    def insert_deployment(self, conn: sqlite3.Connection, deployment_id: str, adapter_id: str, target: str, url: str,
                          served_name: str, status: str = "active") -> None:
        conn.execute(
            "INSERT INTO deployments (id, adapter_id, target, url, served_name, created, status) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (deployment_id, adapter_id, target, url, served_name, time.time(), status))

    def set_deployment_status(self, conn: sqlite3.Connection, deployment_id: str, status: str) -> None:
        conn.execute("UPDATE deployments SET status = ? WHERE id = ?", (status, deployment_id))

    def active_deployments(self, target: str, url: str) -> list[sqlite3.Row]:
        """Active deployments on one runtime, with their adapter's route."""
        with self.read() as conn:
            return conn.execute(
                "SELECT d.*, a.role, a.task_type, a.complexity FROM deployments d JOIN adapters a ON a.id = d.adapter_id "
                "WHERE d.target = ? AND d.url = ? AND d.status = 'active' ORDER BY d.created", (target, url)).fetchall()

    def set_deploy_target(self, role: str, task_type: str | None, complexity: str | None, target: str | None,
                          url: str | None) -> None:
        """Set (or, with target None, clear) the runtime a route is deployed to."""
        with self.write() as conn:
            conn.execute("DELETE FROM deploy_targets WHERE role = ? AND ifnull(task_type, '') = ifnull(?, '') "
                         "AND ifnull(complexity, '') = ifnull(?, '')", (role, task_type, complexity))
            if target is not None:
                conn.execute("INSERT INTO deploy_targets (role, task_type, complexity, target, url, updated) "
                             "VALUES (?, ?, ?, ?, ?, ?)", (role, task_type, complexity, target, url, time.time()))

    def deploy_target(self, role: str, task_type: str | None, complexity: str | None) -> sqlite3.Row | None:
        with self.read() as conn:
            return conn.execute(
                "SELECT * FROM deploy_targets WHERE role = ? AND ifnull(task_type, '') = ifnull(?, '') "
                "AND ifnull(complexity, '') = ifnull(?, '')", (role, task_type, complexity)).fetchone()

    def deploy_targets(self) -> list[sqlite3.Row]:
        with self.read() as conn:
            return conn.execute("SELECT * FROM deploy_targets ORDER BY role, task_type, complexity").fetchall()
