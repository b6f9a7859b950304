"""Run ids given out before the run is written.

The gateway's writer thread stores many runs in one transaction (a group commit), and each run's
id must be known before that commit, so the answer can name it (`x-learnloop-run-id`, released
only once the commit is done). So it reserves ids in blocks. The runs table is AUTOINCREMENT (migration 8): SQLite keeps the highest id ever given
in `sqlite_sequence`, and a row inserted without an id gets one above both that number and every
stored id. Reserving a block is raising that number, in one short transaction: rows anyone else
writes meanwhile (log_run, import_runs, another gateway) get ids above the block, and the holder
writes its rows later under the ids it was given. `release_run_ids` hands back the unused tail
of the last block when nobody reserved or wrote after it; otherwise the unused ids stay a gap.

A reader that asks for a reserved id not written yet (a run being written this instant) waits for
it a moment (`written_run`) instead of being told the run does not exist. The wait is short: no
client holds an id before its run is stored, so an id still missing after it (reserved by a
gateway that was killed, never handed out) is not a run.
"""

from __future__ import annotations

import sqlite3
import time

from learning.store import Store

WAIT_S = 1.0  # how long a reader waits for a reserved run to be written


def highest_given(conn: sqlite3.Connection) -> int:
    """The highest run id given so far, written or only reserved."""
    row = conn.execute(
        "SELECT max(ifnull((SELECT seq FROM sqlite_sequence WHERE name = 'runs'), 0), "
        "ifnull((SELECT max(id) FROM runs), 0)) AS top"
    ).fetchone()
    return int(row["top"])


def reserve_run_ids(conn: sqlite3.Connection, n: int) -> range:
    """Reserve the next n run ids, inside the caller's write transaction; returns them."""
    top = highest_given(conn)
    if conn.execute("UPDATE sqlite_sequence SET seq = ? WHERE name = 'runs'", (top + n,)).rowcount == 0:
        conn.execute("INSERT INTO sqlite_sequence (name, seq) VALUES ('runs', ?)", (top + n,))
    return range(top + 1, top + n + 1)


def release_run_ids(conn: sqlite3.Connection, unused: range) -> None:
    """Give back the unused tail of the last block reserved, if nobody reserved after it (inside
    the caller's write transaction). Stored ids are never handed out again either way."""
    if unused:
        conn.execute(
            "UPDATE sqlite_sequence SET seq = ? WHERE name = 'runs' AND seq = ?", (unused.start - 1, unused.stop - 1)
        )


def written_run(store: Store, run_id: int, wait_s: float = WAIT_S) -> sqlite3.Row | None:
    """The stored run, waiting up to wait_s while its id is reserved but not written yet."""
    deadline = time.monotonic() + wait_s
    while True:
        with store.read() as conn:
            row = conn.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone()
            if row is not None or run_id > highest_given(conn) or time.monotonic() > deadline:
                return row
        time.sleep(0.01)
