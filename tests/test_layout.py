"""The layout keeps its promises: every module imports on its own, imports point one way along
the loop, and no module reaches into another's private names.

(That starting the MCP server imports no torch, transformers, peft, trl or datasets is checked
in test_server.py.)
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib  # pyright: ignore[reportMissingImports]

ROOT = Path(__file__).resolve().parent.parent

# The loop's order, top to bottom, is import-linter's layers contract in pyproject.toml.
LAYERS = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["importlinter"]["contracts"][0][
    "layers"
]

# The CLI modules register their commands on the shared app when imported, so importing one
# alone re-enters server.cli half-initialised.


def module_names() -> list[str]:
    names = []
    for top in ("learning", "server"):
        for path in sorted((ROOT / top).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            if parts[-1] == "__main__":  # run, not imported
                continue
            names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def source_files(top: str) -> list[Path]:
    return sorted((ROOT / top).rglob("*.py"))


def imports(path: Path) -> list[tuple[int, str, list[str]]]:
    """(line, imported module, names taken from it) for every import in a file, at any depth."""
    found = []
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:  # relative: resolve against the file's package
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join([*base, module] if module else base)
            found.append((node.lineno, module, [alias.name for alias in node.names]))
    return found


# ---- (a) every module imports on its own ---------------------------------------------------

# Each module is imported in a forked child of a process that has imported only a few
# third-party packages (to save their start-up in every child), never a learnloop module.
IMPORT_EACH = r"""
import importlib, json, os, sys, traceback
import pydantic, psutil, anyio, typer, rich  # third-party only: shared by the children
names = json.loads(sys.argv[1])
results = {}
for name in names:
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        try:
            importlib.import_module(name)
            message = ""
        except BaseException:
            message = traceback.format_exc(limit=4)[-1500:] or "failed"
        os.write(write, message.encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as handle:
        message = handle.read().decode()
    _, status = os.waitpid(pid, 0)
    results[name] = message if status == 0 else message or f"exit status {status}"
print(json.dumps(results))
"""


@pytest.fixture(scope="module")
def import_results() -> dict[str, str]:
    if not hasattr(__import__("os"), "fork"):
        pytest.skip("needs os.fork")
    out = subprocess.run(
        [sys.executable, "-c", IMPORT_EACH, json.dumps(module_names())],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in module_names()])
def test_each_module_imports_on_its_own(import_results, name):
    assert import_results[name] == "", f"import {name} in a fresh interpreter failed:\n{import_results[name]}"


# ---- (b) imports point down the loop -------------------------------------------------------


def test_imports_point_down_the_loop():
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, importlinter.cli as c; sys.exit(c.lint_imports(no_cache=True, no_logo=True))",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, "imports that point up the loop:\n" + out.stdout[out.stdout.find("Broken") :]


def test_the_order_names_every_package():
    named = {name.strip() for layer in LAYERS for name in layer.split(":")}
    on_disk = {f"learning.{p.name}" for p in (ROOT / "learning").iterdir() if (p / "__init__.py").exists()}
    shared = {f"learning.{p.stem}" for p in (ROOT / "learning").glob("*.py") if p.stem != "__init__"}
    assert named == on_disk | shared | {"server"}, (
        "a package or shared module was added or removed: place it in the layers in pyproject.toml"
    )


# ---- (c) no private names across modules ---------------------------------------------------


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def test_no_module_imports_another_modules_private_names():
    ours = ("learning", "server")
    wrong = []
    for path in source_files("learning") + source_files("server"):
        this = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        tree = ast.parse(path.read_text(encoding="utf-8"))
        modules = set()  # local names bound to learnloop modules: `from learning.jobs import manage as jobs`
        for line, module, names in imports(path):
            if module.split(".")[0] not in ours or module == this:
                continue
            wrong += [f"{path.relative_to(ROOT)}:{line} imports {n} from {module}" for n in names if _private(n)]
            wrong += [
                f"{path.relative_to(ROOT)}:{line} imports {module}" for part in module.split(".") if _private(part)
            ]
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in ours:
                modules |= {a.asname or a.name for a in node.names}
            elif isinstance(node, ast.Import):
                modules |= {a.asname or a.name.split(".")[0] for a in node.names if a.name.split(".")[0] in ours}
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and _private(node.attr)
                and isinstance(node.value, ast.Name)
                and node.value.id in modules
            ):
                wrong.append(f"{path.relative_to(ROOT)}:{node.lineno} uses {node.value.id}.{node.attr}")
    assert not wrong, "private names used across modules:\n" + "\n".join(wrong)


# ---- (e) small modules, functions that fit on a screen ------------------------------------

MAX_MODULE_LINES = 420  # "about 400"
MAX_FUNCTION_LINES = 60  # the body, after the signature and the docstring
LONG_MARK = "# Long:"  # a comment right above a longer function says why it stays whole


def _body_lines(node: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    body = node.body
    first = (
        body[1]
        if len(body) > 1 and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
        else body[0]
    )
    return (node.end_lineno or node.lineno) - first.lineno + 1


def test_modules_and_functions_stay_small():
    too_long = []
    for path in source_files("learning") + source_files("server"):
        text = path.read_text(encoding="utf-8")
        lines = text.splitlines()
        where = path.relative_to(ROOT)
        if len(lines) > MAX_MODULE_LINES:
            too_long.append(f"{where}: {len(lines)} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and _body_lines(node) > MAX_FUNCTION_LINES:
                top = min([node.lineno] + [d.lineno for d in node.decorator_list])
                if not lines[top - 2].strip().startswith(LONG_MARK):
                    too_long.append(f"{where}:{node.lineno} {node.name}: {_body_lines(node)} lines")
    assert not too_long, "split these, or say above the function why it stays whole (# Long: ...):\n" + "\n".join(
        too_long
    )
