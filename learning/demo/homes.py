"""Where a demo runs: a home of its own, so its thousands of runs, its datasets and the adapter it
puts in production never land among yours.

Without a home named explicitly (the CLI's `--home`; $LEARNLOOP_HOME does not count), a demo runs
in a folder of its own inside the learnloop home: `demo/` (`demo-gateway/` for the gateway demo).
A home named explicitly is used as it is, unless it holds production adapters that a demo did not
put there: then the demo refuses, unless the caller allows it.
"""

from __future__ import annotations

from pathlib import Path

from learning.demo.answers import AGENT
from learning.errors import Conflict
from learning.home import DB_NAME, resolve_home
from learning.registry.adapters import adapter_history, list_adapters
from learning.store import Store

FOLDERS = {False: "demo", True: "demo-gateway"}


def demo_home(home: str | Path | None = None, gateway: bool = False, allow_production_home: bool = False) -> Path:
    """The home a demo runs in: `<learnloop home>/demo` (or `demo-gateway`) without `home`;
    `home` itself when given, refused (Conflict) when it holds production adapters that no demo
    promoted, unless allow_production_home."""
    if home is None:
        return resolve_home(None) / FOLDERS[gateway]
    path = resolve_home(home)
    if allow_production_home:
        return path
    theirs = production_not_from_a_demo(path)
    if theirs:
        raise Conflict(
            f"{path} holds production adapters ({', '.join(theirs)}): the demo would log thousands of runs "
            "there and put its own coder adapter in production, replacing yours. Run it without --home "
            f"(it uses {resolve_home(None) / FOLDERS[gateway]}, a folder of its own), name an empty folder "
            "with --home, or pass --allow-production-home to run it in this home anyway."
        )
    return path


def production_not_from_a_demo(home: Path) -> list[str]:
    """The production adapters of a home that a demo did not promote (none when it has no database).

    Only read: the home's database is opened, queried and closed (one an older learnloop wrote is
    brought up to date first, as any command does)."""
    if not (home / DB_NAME).is_file():
        return []
    store = Store(home)
    try:
        found = []
        for adapter in list_adapters(store, status="production"):
            moves = [e for e in adapter_history(store, adapter.id) if e.to_status == "production"]
            if not moves or moves[-1].actor != AGENT:
                found.append(adapter.id)
        return found
    finally:
        store.close()
