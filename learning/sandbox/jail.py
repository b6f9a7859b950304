"""The bubblewrap jail that untrusted code runs in: what it sees and what it may do.

`jail_command` builds the `bwrap` command line: new user, pid, network, ipc, uts and cgroup
namespaces; no capabilities; `--die-with-parent` and `--new-session`; an empty environment but
PATH, LANG and HOME; read-only binds of only what the Python interpreter needs (its executable,
its standard library with `site-packages` hidden, its shared library, the system library folders
and the loader cache); a fresh /proc and /dev; a private, size-capped tmpfs as /tmp and working
folder. Nothing else of the machine exists inside: not the learnloop home, not the user's home,
not the current folder, not /usr/bin (so no `id`, no shell).
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

from learning.errors import Conflict

INSTALL_HINT = (
    "Install bubblewrap: `apt-get install bubblewrap` (Debian, Ubuntu) or `dnf install bubblewrap` "
    "(Fedora); it runs unprivileged where user namespaces are allowed. macOS has no bubblewrap: "
    "there, or to accept running untrusted code without a jail, set LEARNLOOP_SANDBOX=none "
    "(a weaker mode: a separate process with time and memory limits, but it sees your files, "
    "network and environment)."
)
SYSTEM_LIBS = ("/usr/lib", "/usr/lib64", "/usr/lib32", "/lib", "/lib64", "/lib32")


class SandboxUnavailable(Conflict):
    """bubblewrap is missing or cannot start a jail here, and no weaker mode was chosen."""


def python_executable() -> str:
    """The interpreter that runs in the jail: the base one (a virtual environment is not needed)."""
    return os.path.realpath(getattr(sys, "_base_executable", None) or sys.executable)


def python_paths() -> tuple[list[str], list[str]]:
    """(paths to bind read-only, folders to hide under an empty tmpfs) for the interpreter."""
    paths = sysconfig.get_paths(vars={"base": sys.base_prefix, "platbase": sys.base_exec_prefix})
    binds = [python_executable(), paths["stdlib"], paths["platstdlib"]]
    if sysconfig.get_config_var("Py_ENABLE_SHARED"):
        libdir, soname = sysconfig.get_config_var("LIBDIR"), sysconfig.get_config_var("INSTSONAME")
        if libdir and soname and os.path.exists(os.path.join(libdir, soname)):
            binds.append(os.path.join(libdir, soname))
    hide = sorted({p for p in (paths["purelib"], paths["platlib"]) if os.path.isdir(p)})
    return [p for p in dict.fromkeys(binds) if p and os.path.exists(p)], hide


def _covered(path: str, by: list[str]) -> bool:
    return any(path == b or path.startswith(b.rstrip("/") + "/") for b in by)


@functools.lru_cache(maxsize=1)
def bwrap_version() -> tuple[int, ...]:
    out = subprocess.run([bwrap_path(), "--version"], capture_output=True, text=True, timeout=10).stdout
    found = re.search(r"(\d+)\.(\d+)(?:\.(\d+))?", out)
    return tuple(int(x) for x in found.groups(default="0")) if found else (0,)


def bwrap_path() -> str:
    found = shutil.which("bwrap")
    if found is None:
        raise SandboxUnavailable(
            f"Untrusted code runs only in a bubblewrap jail, and `bwrap` is not installed. {INSTALL_HINT}"
        )
    return found


def jail_command(tmp_mb: int) -> list[str]:
    """The bwrap command that runs the supervisor; the supervisor's source follows `-c`."""
    bwrap = bwrap_path()
    version = bwrap_version()
    cmd = [bwrap, "--unshare-all", "--unshare-user", "--die-with-parent", "--new-session", "--cap-drop", "ALL"]
    if version >= (0, 8):
        cmd.append("--disable-userns")  # no nested namespaces for the code inside
    cmd += [
        "--clearenv",
        "--setenv",
        "PATH",
        "/usr/bin:/bin",
        "--setenv",
        "LANG",
        "C.UTF-8",
        "--setenv",
        "HOME",
        "/tmp",
    ]
    bound: list[str] = []
    for lib in SYSTEM_LIBS:
        if os.path.islink(lib):
            cmd += ["--symlink", os.readlink(lib), lib]
        elif os.path.isdir(lib) and not _covered(lib, bound):
            cmd += ["--ro-bind", lib, lib]
            bound.append(lib)
    cmd += ["--ro-bind-try", "/etc/ld.so.cache", "/etc/ld.so.cache"]
    binds, hide = python_paths()
    for path in sorted(binds, key=lambda p: (len(Path(p).parts), p)):
        if not _covered(path, bound):
            cmd += ["--ro-bind", path, path]
            bound.append(path)
    for folder in hide:
        cmd += ["--tmpfs", folder, "--remount-ro", folder]
    cmd += ["--proc", "/proc", "--dev", "/dev"]
    if version >= (0, 7):
        cmd += ["--size", str(tmp_mb << 20)]
    cmd += ["--tmpfs", "/tmp", "--chdir", "/tmp"]
    return [*cmd, python_executable(), "-I", "-S", "-B", "-c"]


def plain_command() -> list[str]:
    """The unjailed mode: the same supervisor in a plain child interpreter."""
    return [sys.executable, "-I", "-S", "-B", "-c"]
