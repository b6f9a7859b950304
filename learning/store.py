"""The store: one SQLite file under the home; its connections, transactions and migrations.

WAL journal synced at every commit (synchronous=FULL: a write that returned is on disk, even
after a power cut), a busy timeout, writes in `BEGIN IMMEDIATE` transactions (so concurrent
writers from several processes queue on the lock instead of failing with "database is
locked"), ordered migrations tracked in PRAGMA user_version. Connections are per thread,
so the MCP server's worker threads and the CLI share one code path.

The SQL itself lives next to the code that reads each table (learning/runs/record.py,
learning/data/datasets.py, learning/registry/queries.py, learning/routing/router.py, ...), as
plain functions that take a Store, or the connection of a transaction already open.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator
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
    # 5: the tests a run carries (a JSON list of Python statements; NULL when it has none).
    """
    ALTER TABLE runs ADD COLUMN tests TEXT
    """,
    # 6 (import keys): where an imported run came from, "<file sha256>:<line>" (NULL for runs
    # logged one by one), so importing the same file again adds only the lines still missing.
    """
    ALTER TABLE runs ADD COLUMN import_key TEXT;
    CREATE UNIQUE INDEX runs_import_key ON runs(import_key)
    """,
    # 7 (pending rewards): a run's reward may be NULL, "pending": the run is recorded now and
    # scored later (log_reward). SQLite cannot drop a NOT NULL, so the table is rebuilt with
    # every row, id and index kept.
    """
    CREATE TABLE runs_new (
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
        reward REAL CHECK (reward IS NULL OR (reward >= 0 AND reward <= 1)),
        signals TEXT NOT NULL DEFAULT '{}',
        model TEXT,
        adapter_id TEXT,
        decision_id TEXT,
        meta TEXT NOT NULL DEFAULT '{}',
        tests TEXT,
        import_key TEXT
    );
    INSERT INTO runs_new (id, ts, agent, role, task_type, complexity, task_key, instruction, input,
                          output, reward, signals, model, adapter_id, decision_id, meta, tests, import_key)
        SELECT id, ts, agent, role, task_type, complexity, task_key, instruction, input,
               output, reward, signals, model, adapter_id, decision_id, meta, tests, import_key
        FROM runs;
    DROP TABLE runs;
    ALTER TABLE runs_new RENAME TO runs;
    CREATE INDEX runs_role_ts ON runs(role, ts);
    CREATE INDEX runs_adapter_ts ON runs(adapter_id, ts);
    CREATE INDEX runs_task_key ON runs(task_key);
    CREATE INDEX runs_role_reward ON runs(role, reward DESC);
    CREATE UNIQUE INDEX runs_import_key ON runs(import_key)
    """,
    # 8 (run ids given out before the run is written): the runs table becomes AUTOINCREMENT, so
    # sqlite_sequence holds the highest id ever given and a writer can reserve a block of ids by
    # raising it (learning/runs/ids.py). Rebuilt with every row, id and index kept.
    """
    CREATE TABLE runs_new (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        ts REAL NOT NULL,
        agent TEXT NOT NULL,
        role TEXT NOT NULL,
        task_type TEXT,
        complexity TEXT,
        task_key TEXT NOT NULL,
        instruction TEXT NOT NULL DEFAULT '',
        input TEXT NOT NULL DEFAULT '',
        output TEXT NOT NULL,
        reward REAL CHECK (reward IS NULL OR (reward >= 0 AND reward <= 1)),
        signals TEXT NOT NULL DEFAULT '{}',
        model TEXT,
        adapter_id TEXT,
        decision_id TEXT,
        meta TEXT NOT NULL DEFAULT '{}',
        tests TEXT,
        import_key TEXT
    );
    INSERT INTO runs_new (id, ts, agent, role, task_type, complexity, task_key, instruction, input,
                          output, reward, signals, model, adapter_id, decision_id, meta, tests, import_key)
        SELECT id, ts, agent, role, task_type, complexity, task_key, instruction, input,
               output, reward, signals, model, adapter_id, decision_id, meta, tests, import_key
        FROM runs ORDER BY id;
    DROP TABLE runs;
    ALTER TABLE runs_new RENAME TO runs;
    CREATE INDEX runs_role_ts ON runs(role, ts);
    CREATE INDEX runs_adapter_ts ON runs(adapter_id, ts);
    CREATE INDEX runs_task_key ON runs(task_key);
    CREATE INDEX runs_role_reward ON runs(role, reward DESC);
    CREATE UNIQUE INDEX runs_import_key ON runs(import_key)
    """,
    # 9 (rewards set once): the sha256 of the reward token handed out with a pending run (NULL once
    # it is scored, or when none was handed out), and every reward given after logging as an
    # attributed event: "scored" fills a pending run, "correction" replaces a reward (`previous`).
    """
    ALTER TABLE runs ADD COLUMN reward_token_sha256 TEXT;
    CREATE TABLE reward_events (
        id INTEGER PRIMARY KEY,
        run_id INTEGER NOT NULL,
        ts REAL NOT NULL,
        actor TEXT NOT NULL,
        kind TEXT NOT NULL CHECK (kind IN ('scored', 'correction')),
        reward REAL NOT NULL CHECK (reward >= 0 AND reward <= 1),
        previous REAL,
        reason TEXT NOT NULL DEFAULT ''
    );
    CREATE INDEX reward_events_run ON reward_events(run_id, id)
    """,
    # 10 (whole exchanges): a run's messages in OpenAI chat format, tool calls and tool results
    # included, and the tools it was offered, each a JSON list (NULL when not recorded).
    """
    ALTER TABLE runs ADD COLUMN messages TEXT;
    ALTER TABLE runs ADD COLUMN tools TEXT
    """,
    # 11 (the newest runs of every role): the dashboard's latest runs and the gateway's traffic
    # read runs by time alone.
    """
    CREATE INDEX runs_ts ON runs(ts)
    """,
]


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
            conn.execute("PRAGMA synchronous = FULL")  # a write that returned survives a power cut
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
            version = conn.execute("PRAGMA user_version").fetchone()["user_version"]
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
            return conn.execute("PRAGMA user_version").fetchone()["user_version"]

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None
