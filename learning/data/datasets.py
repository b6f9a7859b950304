"""Datasets on disk and in the store: the split writer, the atomic publish, get and list.

A dataset is `datasets/<id>/{train.jsonl,test.jsonl,metadata.json}` under the home, immutable
once written. It is written into a temporary folder under `datasets/`, renamed into place, and
recorded in the store only after the rename: a crash at any point leaves no dataset recorded
(at worst an unrecorded folder, which nothing reads).

The split is by task_key: a seeded hash of the task_key decides its side, so attempts at one
task never straddle train and test, and a task keeps its side in every dataset made with the
same seed (a later dataset's training set never holds an earlier one's test tasks).
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import sqlite3
import time
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field

from learning.clock import iso, stamp
from learning.errors import NotFound, shown
from learning.home import safe_id, subdir, within
from learning.store import Store, dumps, loads

FILES = ("train.jsonl", "test.jsonl", "metadata.json")
STALE_TMP_SECONDS = 3600


class DatasetInfo(BaseModel):
    """A recorded dataset and the absolute paths of its files."""

    id: str
    role: str
    kind: str = Field(description="sft, dpo or kto.")
    format: str
    created: str
    path: str = Field(description="Absolute path of the dataset folder.")
    train_path: str
    test_path: str
    metadata_path: str
    train_rows: int
    test_rows: int
    content_hash: str
    metadata: dict[str, Any] = Field(default_factory=dict, description="metadata.json without the run ids.")


def new_dataset_id(role: str, kind: str) -> str:
    return f"{role}-{kind}-{stamp()}-{secrets.token_hex(2)}"


def task_hash(seed: int, task_key: str) -> float:
    """A task's place in [0, 1): the same for a given seed on every machine and run."""
    digest = hashlib.blake2b(f"{seed}:{task_key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


class SplitWriter:
    """Streams rows into train/test by task_key. With dry_run it only counts.

    Keeps one short record per task (its side and row count), never the rows themselves.
    """

    def __init__(self, folder: Path | None, seed: int, test_fraction: float):
        self.folder, self.seed, self.test_fraction = folder, seed, test_fraction
        self.sides: dict[str, bool] = {}  # task_key -> is test
        self.task_rows: dict[str, int] = {}
        self.rows = {False: 0, True: 0}
        self.keys: dict[bool, list[str]] = {False: [], True: []}  # task_key of each written line
        self._files = None
        self._pending: dict[bool, list[str]] = {False: [], True: []}  # lines not yet written, by side
        if folder is not None:
            self._files = {
                False: open(folder / "train.jsonl", "w", encoding="utf-8"),
                True: open(folder / "test.jsonl", "w", encoding="utf-8"),
            }

    def add(self, task_key: str, line: str) -> None:
        """One row, already encoded as a JSON line (without the newline)."""
        is_test = self.sides.get(task_key)
        if is_test is None:
            is_test = self.sides[task_key] = task_hash(self.seed, task_key) < self.test_fraction
        self.rows[is_test] += 1
        self.task_rows[task_key] = self.task_rows.get(task_key, 0) + 1
        if self._files is not None:
            pending = self._pending[is_test]
            pending.append(line)
            if len(pending) >= 1000:  # one write per thousand lines, not per line
                self._flush(is_test)
            self.keys[is_test].append(task_key)

    def _flush(self, is_test: bool) -> None:
        pending = self._pending[is_test]
        if pending:
            assert self._files is not None  # only lines bound for files are pending
            pending.append("")
            self._files[is_test].write("\n".join(pending))
            pending.clear()

    def close(self) -> None:
        if self._files is not None:
            for is_test, f in self._files.items():
                self._flush(is_test)
                f.close()
        self._rebalance()

    def _rebalance(self) -> None:
        """A small dataset can hash every task to one side: then move the one task nearest the
        threshold across, so that both sides have rows when there are two tasks or more."""
        if len(self.sides) < 2 or self.test_fraction <= 0:
            return
        for empty in (True, False):
            if self.rows[empty] == 0:
                others = [k for k, side in self.sides.items() if side != empty]
                key = (min if empty else max)(others, key=lambda k: task_hash(self.seed, k))
                self._move(key, empty)

    def _move(self, key: str, to_test: bool) -> None:
        self.sides[key] = to_test
        n = self.task_rows[key]
        self.rows[not to_test] -= n
        self.rows[to_test] += n
        if self.folder is None:
            return
        src, dst = ("train.jsonl", "test.jsonl") if to_test else ("test.jsonl", "train.jsonl")
        lines = (self.folder / src).read_text(encoding="utf-8").splitlines(keepends=True)
        keys = self.keys[not to_test]
        (self.folder / src).write_text("".join(line for line, k in zip(lines, keys) if k != key), encoding="utf-8")
        with open(self.folder / dst, "a", encoding="utf-8") as f:
            f.write("".join(line for line, k in zip(lines, keys) if k == key))
        self.keys[not to_test] = [k for k in keys if k != key]
        self.keys[to_test] += [key] * n


def content_hash(folder: Path) -> str:
    """sha256 over train.jsonl then test.jsonl."""
    h = hashlib.sha256()
    for name in ("train.jsonl", "test.jsonl"):
        with open(folder / name, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
        h.update(b"\0")
    return "sha256:" + h.hexdigest()


def temp_folder(store: Store, dataset_id: str) -> Path:
    """A fresh folder under datasets/ to write into; old leftovers of crashed writes are removed."""
    root = subdir(store.home, "datasets")
    now = time.time()
    for old in root.glob(".tmp-*"):
        try:
            if now - old.stat().st_mtime > STALE_TMP_SECONDS:
                shutil.rmtree(old, ignore_errors=True)
        except OSError:
            pass
    folder = root / f".tmp-{dataset_id}"
    folder.mkdir()
    return folder


def publish(store: Store, tmp: Path, record: dict[str, Any], metadata: dict[str, Any]) -> Path:
    """Write metadata.json, move the folder into place, then record it in the store."""
    with open(tmp / "metadata.json", "w", encoding="utf-8") as f:
        f.write(json.dumps(metadata, ensure_ascii=False, indent=2))  # json.dump writes once per list item
    for name in FILES:  # on disk before the dataset is recorded, and immutable
        fd = os.open(tmp / name, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.chmod(tmp / name, 0o444)
    final = tmp.parent / record["id"]
    os.rename(tmp, final)
    try:
        light = {k: v for k, v in metadata.items() if k != "run_ids"}
        insert_dataset(store, {**record, "path": str(final), "metadata": dumps(light)})
    except BaseException:
        shutil.rmtree(final, ignore_errors=True)
        raise
    return final


def to_info(row, path: Path | None = None) -> DatasetInfo:
    path = path or Path(row["path"])
    return DatasetInfo.model_validate(
        dict(row)
        | {
            "created": iso(row["created"]),
            "path": str(path),
            "train_path": str(path / "train.jsonl"),
            "test_path": str(path / "test.jsonl"),
            "metadata_path": str(path / "metadata.json"),
            "metadata": loads(row["metadata"]) or {},
        }
    )


def recorded_dataset(store: Store, dataset_id: str) -> sqlite3.Row:
    """A dataset id from a caller, looked up in the store (never used as a path); NotFound names it."""
    safe_id(dataset_id, "dataset id")
    row = dataset_row(store, dataset_id)
    if row is None:
        raise NotFound(
            f"No dataset {shown(dataset_id)}. List datasets with list_datasets (CLI: learnloop datasets) "
            "or make one with make_sft / make_preferences."
        )
    return row


def dataset_folder(store: Store, dataset_id: str) -> Path:
    """The folder the store recorded for a dataset id, checked to be under the home."""
    row = recorded_dataset(store, dataset_id)
    return within(store.home, row["path"], f"Dataset {dataset_id}")


def get_dataset(store: Store, dataset_id: str) -> DatasetInfo:
    """The record of a dataset and the absolute paths of its files (what training reads)."""
    row = recorded_dataset(store, dataset_id)
    info = to_info(row, within(store.home, row["path"], f"Dataset {dataset_id}"))
    missing = [n for n in FILES if not (Path(info.path) / n).is_file()]
    if missing:
        raise NotFound(
            f"Dataset {dataset_id} is recorded but {', '.join(missing)} is missing under {info.path}. "
            "Make the dataset again with make_sft / make_preferences."
        )
    return info


def list_datasets(
    store: Store, role: str | None = None, kind: str | None = None, limit: int = 100
) -> list[DatasetInfo]:
    """Recorded datasets, newest first."""
    return [to_info(r) for r in dataset_rows(store, role=role, kind=kind, limit=limit)]


class DatasetList(BaseModel):
    datasets: list[DatasetInfo] = Field(description="Newest first, with absolute file paths.")


def dataset_list(
    store: Store,
    role: Annotated[str | None, Field(description="Only this role.")] = None,
    kind: Annotated[Literal["sft", "dpo", "kto"] | None, Field(description="Only this kind.")] = None,
    limit: Annotated[int, Field(ge=1, le=1000, description="At most this many, newest first.")] = 100,
) -> DatasetList:
    """The datasets made so far: id, role, kind, format, row counts, content hash, file paths and
    metadata (filters, counts, mean reward, redaction counts). Read-only."""
    return DatasetList(datasets=list_datasets(store, role, kind, limit))


# ---- SQL: the datasets table -------------------------------------------------------------------


def insert_dataset(store: Store, row: dict[str, Any]) -> None:
    cols = list(row)
    with store.write() as conn:
        conn.execute(
            f"INSERT INTO datasets ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})", [row[c] for c in cols]
        )


def dataset_row(store: Store, dataset_id: str) -> sqlite3.Row | None:
    with store.read() as conn:
        return conn.execute("SELECT * FROM datasets WHERE id = ?", (dataset_id,)).fetchone()


def dataset_rows(store: Store, role: str | None = None, kind: str | None = None, limit: int = 100) -> list[sqlite3.Row]:
    where, args = [], []
    for col, value in (("role", role), ("kind", kind)):
        if value:
            where.append(f"{col} = ?")
            args.append(value)
    sql = (
        "SELECT * FROM datasets"
        + (" WHERE " + " AND ".join(where) if where else "")
        + " ORDER BY created DESC, id DESC LIMIT ?"
    )
    with store.read() as conn:
        return conn.execute(sql, args + [limit]).fetchall()
