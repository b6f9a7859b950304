"""The learnloop home: the one folder under which every file learnloop writes lives.

Chosen by `--home`, else $LEARNLOOP_HOME, else ~/.learnloop.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path

from learning.errors import InvalidInput, shown

DB_NAME = "learnloop.db"
_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def resolve_home(home: str | os.PathLike | None = None) -> Path:
    """The home folder to use, created if missing, checked writable."""
    raw = home or os.environ.get("LEARNLOOP_HOME") or "~/.learnloop"
    path = Path(raw).expanduser().resolve()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InvalidInput(
            f"Cannot create the learnloop home {path}: {exc.strerror or exc}. "
            "Choose a writable folder with --home or LEARNLOOP_HOME."
        ) from exc
    if not os.access(path, os.W_OK | os.X_OK):
        raise InvalidInput(
            f"The learnloop home {path} is not writable. "
            "Fix its permissions or choose another folder with --home or LEARNLOOP_HOME."
        )
    return path


def safe_id(value: str, what: str = "id") -> str:
    """Check an id that becomes a file name: no path separators, no '..', bounded length."""
    if not isinstance(value, str) or not _SAFE_ID.fullmatch(value) or ".." in value:
        raise InvalidInput(
            f"Invalid {what} {shown(value)}: use 1-128 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit (no '/' or '..')."
        )
    return value


def within(home: Path, path: str | os.PathLike, what: str) -> Path:
    """A recorded path (absolute, or relative to the home) resolved; refuses one outside the home."""
    resolved = (home / path).resolve()
    if home != resolved and home not in resolved.parents:
        raise InvalidInput(f"{what} is recorded at {resolved}, outside the learnloop home {home}; it is not used.")
    return resolved


def subdir(home: Path, *parts: str) -> Path:
    """A folder under the home, created if missing; refuses anything that escapes the home."""
    path = home.joinpath(*parts).resolve()
    if home != path and home not in path.parents:
        raise InvalidInput(f"Path {path} escapes the learnloop home {home}.")
    path.mkdir(parents=True, exist_ok=True)
    return path


def regular_file(home: Path, path: str | os.PathLike) -> Path | None:
    """path (absolute, or relative to the home) when it is a regular file under the home reached
    through no link at all; None otherwise (missing, a folder, a link, or outside the home)."""
    absolute = os.path.abspath(home / path)
    if os.path.realpath(absolute) != absolute:  # a link somewhere on the way
        return None
    found = Path(absolute)
    if home not in found.parents or not found.is_file():
        return None
    return found


def links_in(folder: Path, skip: Callable[[str], bool] = lambda name: False) -> list[str]:
    """Every symbolic link inside folder (relative paths), not looking into links or into
    entries whose name `skip` accepts."""
    found = []
    for root, dirs, files in os.walk(folder):  # never follows links to folders
        dirs[:] = [d for d in dirs if not skip(d)]
        for name in dirs + [f for f in files if not skip(f)]:
            if os.path.islink(os.path.join(root, name)):
                found.append(os.path.relpath(os.path.join(root, name), folder))
    return sorted(found)
