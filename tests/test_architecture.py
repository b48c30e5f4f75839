"""The package's shape (STYLE.md "Layout"): no import cycles, and a pure core that starts nothing.

Two checks anyone can run:

- every module's imports, read with ``ast`` (module level, inside functions and under
  ``if TYPE_CHECKING:`` alike), form a graph without cycles;
- each module of the pure core, imported in a fresh interpreter, brings in no thread, signal,
  event loop, ``ctypes`` or web framework, and leaves the process with one thread.

A row marked xfail names an import cycle or an impure import that is known today and is to be
removed; xfail is strict, so the row fails once it is gone -- then drop the mark.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from dataclasses import dataclass
from importlib.util import resolve_name
from pathlib import Path

import pytest

from tests.servers import ROOT

PACKAGE = ROOT / "taskhandler"


# -- the import graph ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Import:
    """One import of a package module by another, where it is written."""

    target: str
    line: int
    kind: str  # "module level", "in a function", "type checking only"


def package_modules(package: Path = PACKAGE) -> dict[str, Path]:
    """Every module of the package by its dotted name (a package by its own name)."""
    modules = {}
    for path in sorted(package.rglob("*.py")):
        parts = list(path.relative_to(package.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


MODULES = package_modules()


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _import_module_call(node: ast.AST) -> str | None:
    """The literal name in ``importlib.import_module("...")`` / ``import_module("...")``."""
    if not isinstance(node, ast.Call) or not node.args:
        return None
    func = node.func
    name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
    first = node.args[0]
    if name == "import_module" and isinstance(first, ast.Constant):
        return first.value if isinstance(first.value, str) else None
    return None


def imports_of(module: str, modules: dict[str, Path] = MODULES) -> list[Import]:
    """The package modules ``module`` imports, wherever in the file the import is written.

    ``from X import a`` is an import of ``X.a`` when that is a module, else of ``X``. A
    submodule's implicit import of its parent package (Python runs ``__init__`` first) is
    not counted: every module would then sit on a cycle through ``taskhandler/__init__.py``.
    """
    path = modules[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: list[Import] = []

    def add(name: str, node: ast.AST, kind: str) -> None:
        if name in modules and name != module:
            found.append(Import(name, getattr(node, "lineno", 0), kind))

    def visit(node: ast.AST, kind: str) -> None:
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name, node, kind)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = resolve_name("." * node.level + base, package)
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                add(submodule if submodule in modules else base, node, kind)
        elif (name := _import_module_call(node)) is not None:
            add(resolve_name(name, package) if name.startswith(".") else name, node, kind)
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.body:
                visit(child, "type checking only")
            for child in node.orelse:
                visit(child, kind)
            return
        inner = kind
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            inner = "in a function" if kind == "module level" else kind
        for child in ast.iter_child_nodes(node):
            visit(child, inner)

    visit(ast.parse(path.read_text(encoding="utf-8"), str(path)), "module level")
    return found


def import_graph(modules: dict[str, Path] = MODULES) -> dict[str, dict[str, Import]]:
    """For each module, the modules it imports (the first place each is imported)."""
    graph: dict[str, dict[str, Import]] = {}
    for module in modules:
        edges: dict[str, Import] = {}
        for found in imports_of(module, modules):
            edges.setdefault(found.target, found)
        graph[module] = edges
    return graph


def cycle_through(module: str, graph: dict[str, dict[str, Import]]) -> list[Import] | None:
    """A shortest import path from ``module`` back to itself, or None if it is on no cycle."""
    came_from: dict[str, tuple[str, Import]] = {}
    frontier = [module]
    while frontier:
        following = []
        for current in frontier:
            for target, edge in sorted(graph[current].items()):
                if target in came_from:
                    continue
                came_from[target] = (current, edge)
                if target == module:
                    path = []
                    while True:
                        source, step = came_from[target]
                        path.append(step)
                        if source == module:
                            return path[::-1]
                        target = source
                following.append(target)
        frontier = following
    return None


def describe(
    module: str, cycle: list[Import], modules: dict[str, Path] = MODULES, root: Path = ROOT
) -> str:
    """``a -> b (a.py:3, in a function) -> a (b.py:9, module level)``."""
    steps = [module]
    source = module
    for step in cycle:
        where = f"{modules[source].relative_to(root)}:{step.line}, {step.kind}"
        steps.append(f"{step.target} ({where})")
        source = step.target
    return " -> ".join(steps)


# Cycles known today, each to be broken by the change named; strict: drop the mark then.
KNOWN_CYCLES: dict[str, str] = {}


def _module_rows() -> list[object]:
    rows = []
    for module in MODULES:
        reason = KNOWN_CYCLES.get(module)
        marks = [] if reason is None else [pytest.mark.xfail(strict=True, reason=reason)]
        rows.append(pytest.param(module, marks=marks, id=module))
    return rows


@pytest.mark.parametrize("module", _module_rows())
def test_no_import_cycle(module: str) -> None:
    """The module is on no import cycle, counting lazy and type-only imports too."""
    cycle = cycle_through(module, import_graph())
    assert cycle is None, f"import cycle: {describe(module, cycle)}"


def test_known_cycles_name_modules_that_exist() -> None:
    """Every module marked as on a known cycle still exists (a renamed one is not forgotten)."""
    assert sorted(set(KNOWN_CYCLES) - set(MODULES)) == []


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        pytest.param(
            {"a": "from . import b\n", "b": "def f():\n    from .a import x\n"},
            "pkg.a -> pkg.b (pkg/a.py:1, module level) -> pkg.a (pkg/b.py:2, in a function)",
            id="lazy import closes a cycle",
        ),
        pytest.param(
            {
                "a": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .b import B\n",
                "b": "import pkg.a\n",
            },
            "pkg.a -> pkg.b (pkg/a.py:3, type checking only) -> pkg.a (pkg/b.py:1, module level)",
            id="type-only import closes a cycle",
        ),
        pytest.param(
            {
                "a": "import importlib\nimportlib.import_module('.b', __package__)\n",
                "b": "from .a import x\n",
            },
            "pkg.a -> pkg.b (pkg/a.py:2, module level) -> pkg.a (pkg/b.py:1, module level)",
            id="import_module with a literal name closes a cycle",
        ),
        pytest.param(
            {
                "a": "from . import b\nfrom .b import y\n",
                "b": "import json\nfrom . import c\n",
                "c": "x = 1\n",
            },
            None,
            id="no cycle; the parent package is not an import",
        ),
    ],
)
def test_cycle_finder(tmp_path: Path, files: dict[str, str], expected: str | None) -> None:
    """The cycle finder sees module-level, lazy, type-only and import_module imports."""
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("from .a import x\n")
    for name, text in files.items():
        (package / f"{name}.py").write_text(text)
    modules = package_modules(package)
    cycle = cycle_through("pkg.a", import_graph(modules))
    found = None if cycle is None else describe("pkg.a", cycle, modules, tmp_path)
    assert found == expected


# -- the pure core at import time ---------------------------------------------------------------

#: Modules the pure core never brings in. ``threading`` is allowed only where the standard
#: library or pydantic imports it for its own use (``logging`` does): what matters is that no
#: core module imports it and no thread runs.
FORBIDDEN = (
    "threading",
    "signal",
    "asyncio",
    "ctypes",
    "werkzeug",
    "webob",
    "flask",
    "starlette",
    "django",
    "pytest",
    "webtest",
)
ALLOWED_TO_IMPORT_THREADING = ("pydantic", "pydantic_core", *sorted(sys.stdlib_module_names))

# Run with -I in a fresh interpreter. The package is set up as an empty package object, so
# what is measured is the module and what it imports -- not taskhandler/__init__.py, which
# imports the adapters on purpose. Every import statement executed is seen (builtins'
# __import__), so the report names who imported a forbidden module.
PROBE = """
import builtins, importlib, importlib.machinery, importlib.util, json, sys

package_dir, module, forbidden = sys.argv[1], sys.argv[2], sys.argv[3].split(",")
spec = importlib.machinery.ModuleSpec("taskhandler", None, is_package=True)
spec.submodule_search_locations = [package_dir]
sys.modules["taskhandler"] = importlib.util.module_from_spec(spec)

importers = {}
real_import = builtins.__import__

def recording_import(name, globals=None, locals=None, fromlist=(), level=0):
    where = globals or {}
    target = name
    if level:
        target = importlib.util.resolve_name("." * level + name, where.get("__package__"))
    top = target.partition(".")[0]
    if top in forbidden:
        importers.setdefault(top, set()).add(where.get("__name__", "?"))
    return real_import(name, globals, locals, fromlist, level)

builtins.__import__ = recording_import
if module:
    importlib.import_module(module)
builtins.__import__ = real_import
loaded = sorted(sys.modules)

import threading

print(json.dumps({
    "modules": loaded,
    "importers": {top: sorted(names) for top, names in importers.items()},
    "threads": threading.active_count(),
}))
"""


@dataclass(frozen=True)
class Report:
    """What a fresh interpreter had after importing one module."""

    modules: frozenset[str]
    importers: dict[str, list[str]]  # forbidden module -> who imported it
    threads: int


def probe(module: str) -> Report:
    """Import ``module`` (nothing, for "") in a fresh interpreter; report what came with it."""
    done = subprocess.run(
        [sys.executable, "-I", "-c", PROBE, str(PACKAGE), module, ",".join(FORBIDDEN)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout)
    return Report(frozenset(found["modules"]), found["importers"], found["threads"])


def impurities(report: Report, baseline: Report) -> list[str]:
    """What ``report`` shows that the pure core must not do, one sentence each."""
    new = report.modules - baseline.modules
    found = []
    for name in FORBIDDEN:
        if not any(m == name or m.startswith(f"{name}.") for m in new):
            continue
        # Who imported it, leaving out its own submodules and the import system.
        by = [
            m
            for m in report.importers.get(name, [])
            if m.partition(".")[0] not in (name, "importlib")
        ]
        if name == "threading":
            own = [m for m in by if m.partition(".")[0] not in ALLOWED_TO_IMPORT_THREADING]
            if by and not own:
                continue  # the standard library's own use (logging)
            by = own
        found.append(f"imports {name} (imported by {', '.join(by) or 'an unseen importer'})")
    if report.threads != 1:
        found.append(f"leaves {report.threads} threads running")
    return found


@pytest.fixture(scope="module")
def baseline() -> Report:
    """What a fresh interpreter running the probe has loaded when it imports nothing."""
    return probe("")


CORE = [
    pytest.param("taskhandler.exceptions", id="exceptions"),
    pytest.param("taskhandler.headers", id="headers"),
    pytest.param("taskhandler.context", id="context"),
    pytest.param("taskhandler.trust", id="trust"),
    pytest.param("taskhandler.access", id="access"),
    pytest.param("taskhandler.config", id="config"),
    pytest.param("taskhandler.outcome", id="outcome"),
    pytest.param("taskhandler.deadline", id="deadline"),
    pytest.param("taskhandler._request", id="request view"),
    pytest.param("taskhandler._response", id="response"),
    pytest.param("taskhandler._keys", id="signing keys"),
    pytest.param("taskhandler._decision", id="decision"),
    pytest.param("taskhandler.handler", id="handler"),
]


@pytest.mark.parametrize("module", CORE)
def test_core_module_imports_nothing_that_runs(module: str, baseline: Report) -> None:
    """Importing a core module brings in no thread, signal, event loop, ctypes or web
    framework, and starts no thread."""
    assert impurities(probe(module), baseline) == []


@pytest.mark.parametrize(
    ("module", "expected"),
    [
        pytest.param(
            "taskhandler._watchdog",
            [
                "imports threading (imported by taskhandler._watchdog)",
                "imports signal (imported by taskhandler._watchdog)",
                "imports ctypes (imported by taskhandler._watchdog)",
            ],
            id="the sync machinery",
        ),
        pytest.param(
            "taskhandler._async_deadline",
            ["imports asyncio (imported by taskhandler._async_deadline)"],
            id="the async machinery",
        ),
    ],
)
def test_purity_probe_names_the_importer(
    module: str, expected: list[str], baseline: Report
) -> None:
    """The probe catches the machinery's imports and names the module that made them."""
    found = impurities(probe(module), baseline)
    assert [line for line in expected if line not in found] == [], found


def test_purity_probe_allows_the_standard_librarys_own_threading(baseline: Report) -> None:
    """logging imports threading for its own locks: that is not held against its importer."""
    report = probe("logging")
    assert "threading" in report.modules - baseline.modules
    assert impurities(report, baseline) == []


def test_purity_probe_counts_running_threads(baseline: Report) -> None:
    """A module that starts a thread at import is caught, whoever imported threading."""
    report = probe("taskhandler.deadline")
    assert impurities(Report(report.modules, report.importers, threads=2), baseline) == [
        "leaves 2 threads running"
    ]
