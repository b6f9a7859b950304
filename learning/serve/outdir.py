"""Folders an export is written to: written aside in `.NAME.partial`, renamed into place when
complete, and nothing deleted that learnloop did not create. Every folder it creates holds the
marker file MARKER from its first moment; a folder (or a `.partial` beside it) without the
marker is someone else's and is refused, never removed.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from learning.errors import Conflict

MARKER = ".learnloop-export"


def ours(folder: Path) -> bool:
    """A real folder (not a link) holding learnloop's marker file: learnloop created it."""
    marker = folder / MARKER
    return folder.is_dir() and not folder.is_symlink() and marker.is_file() and not marker.is_symlink()


def claim_folders(target: Path) -> Path:
    """Check that writing target deletes nothing learnloop did not create, and make the folder
    the export is written in (marked as learnloop's from the start, renamed to target at the end)."""
    if target.is_symlink() or (target.exists() and not target.is_dir()):
        raise Conflict(f"{target} is a link or a file, not a folder learnloop wrote; choose another --out.")
    if target.is_dir() and any(target.iterdir()) and not ours(target):
        raise Conflict(f"{target} exists and holds files learnloop did not write; choose another --out.")
    work = target.with_name(f".{target.name}.partial")
    if work.exists() or work.is_symlink():
        if not ours(work):
            raise Conflict(
                f"{work} exists and learnloop did not create it (no {MARKER} inside); "
                "move it away or choose another --out."
            )
        shutil.rmtree(work)  # an earlier export that stopped half way
    work.mkdir(parents=True)
    (work / MARKER).write_text("{}")
    return work
