"""The tiny embedded base, built once per test session and copied into each test's home.

A build takes about 5 s; a copy a few milliseconds. The build is deterministic, so a copy is the
base the home would have built (tests/test_tinybase.py checks the build itself).
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path

from learning.models.tinybase import BaseInfo, base_dir, ensure_base

_built: Path | None = None


def tiny_base(store_or_home) -> BaseInfo:
    """ensure_base(store_or_home, "tiny"), from the session's one build."""
    global _built
    if _built is None:
        cache = Path(tempfile.mkdtemp(prefix="learnloop-tiny-"))
        atexit.register(shutil.rmtree, cache, ignore_errors=True)
        ensure_base(cache, "tiny")
        _built = base_dir(cache, "tiny")
    home = Path(store_or_home if isinstance(store_or_home, (str, Path)) else store_or_home.home)
    target = base_dir(home, "tiny")
    if not target.exists():
        shutil.copytree(_built, target)
    return ensure_base(home, "tiny")
