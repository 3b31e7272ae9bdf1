"""The pure core imports nothing that does I/O, keeps time, or draws randomness.

STYLE.md: the shard state machine is a pure function of (state, command); it imports no
lmdb, grpc, pysyncobj, asyncio, threading, time, random or os, and "a test that walks its
imports keeps it so". This is that test. It reads source files with `ast` and never
imports them, so it sees imports hidden inside functions or behind `if TYPE_CHECKING:` too
(both count: they are one edit away from running), and a module that is already in
sys.modules because another test imported it proves nothing either way.

Modules are found through pyproject's [tool.setuptools.package-dir] (coda -> coda_root/,
coda.flow -> flow/, ...). Walking `from coda.flow import commands` follows the submodule
coda.flow.commands; a package's __init__ is followed only when a name defined in it is
imported. Parent packages' __init__ modules run on import too, but `coda/__init__` is meant
to re-export the SDK (which talks gRPC), so they are not part of the pure core.
"""

from __future__ import annotations

import ast
import textwrap
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

FORBIDDEN = frozenset({
    # named by the brief and STYLE.md
    "lmdb", "grpc", "pysyncobj", "asyncio", "threading", "time", "random", "os", "socket",
    "uuid", "datetime",
    # the same hazards under other names
    "secrets", "subprocess", "multiprocessing", "concurrent", "signal", "selectors",
    "importlib", "_thread", "uvloop", "shutil", "tempfile", "pathlib", "logging",
})

PURE = frozenset({
    "coda.flow.state_machine", "coda.flow.queries", "coda.flow.commands", "coda.flow.validate",
    "coda.flow.model", "coda.flow.limits", "coda.flow.sharding", "coda.storage.keys",
    "coda.storage.codec", "coda.storage.txn", "coda.errors", "coda.flow.retry",
    "coda.flow.sm_common", "coda.flow.sm_tasks", "coda.flow.sm_workflows",
    "coda.flow.sm_supervisors", "coda.flow.sm_children", "coda.flow.sm_schedules",
    "coda.flow.sm_state",
    "coda.flow.schedule_spec",
})

# The one exception, and why: schedule_spec turns stamped times into calendar times for
# cron specs (datetime objects, no clock); test_schedule_spec_never_reads_the_clock below
# keeps it from asking for the current time.
ALLOWED = frozenset({("coda.flow.schedule_spec", "datetime")})
CLOCK_READS = frozenset({"now", "today", "utcnow", "time", "monotonic", "perf_counter"})


def package_dirs_from_pyproject(root: Path = ROOT) -> dict[str, Path]:
    with open(root / "pyproject.toml", "rb") as f:
        mapping = tomllib.load(f)["tool"]["setuptools"]["package-dir"]
    return {package: root / folder for package, folder in mapping.items()}


@dataclass
class Walk:
    """What a walk from some root modules found."""
    # module -> the file it was read from (coda modules only)
    files: dict[str, Path] = field(default_factory=dict)
    # (importing module, imported top-level name) for every non-coda import
    external: set[tuple[str, str]] = field(default_factory=set)
    # coda.* names imported that map to no file (a typo, or a module in another tree)
    unresolved: set[tuple[str, str]] = field(default_factory=set)
    # dynamic imports: (module, description)
    dynamic: set[tuple[str, str]] = field(default_factory=set)
    # module -> the module through which the walk first reached it
    parent: dict[str, str | None] = field(default_factory=dict)

    def chain(self, module: str) -> str:
        links = [module]
        while self.parent.get(links[-1]):
            links.append(self.parent[links[-1]])
        return " <- ".join(links)

    def violations(self, forbidden=FORBIDDEN) -> list[str]:
        found = [f"{self.chain(module)} imports {name}"
                 for module, name in sorted(self.external)
                 if name in forbidden and (module, name) not in ALLOWED]
        found += [f"{self.chain(module)} imports dynamically: {what}"
                  for module, what in sorted(self.dynamic)]
        return found


class ImportWalker:
    def __init__(self, package_dirs: dict[str, Path], namespace: str = "coda",
                 source_overrides: dict[str, str] | None = None):
        self.package_dirs = package_dirs
        self.namespace = namespace
        self.overrides = source_overrides or {}

    def file_of(self, module: str) -> Path | None:
        for package in sorted(self.package_dirs, key=len, reverse=True):
            folder = self.package_dirs[package]
            if module == package:
                return folder / "__init__.py"
            if module.startswith(package + "."):
                base = folder.joinpath(*module[len(package) + 1:].split("."))
                for candidate in (base.with_suffix(".py"), base / "__init__.py"):
                    if candidate.is_file():
                        return candidate
                return None
        return None

    def _ours(self, name: str) -> bool:
        return name == self.namespace or name.startswith(self.namespace + ".")

    def source_of(self, module: str, path: Path) -> str:
        return self.overrides[module] if module in self.overrides else path.read_text()

    def imports_of(self, module: str, path: Path, walk: Walk) -> list[str]:
        """Modules `module` imports: coda ones to follow, others recorded in `walk`."""
        tree = ast.parse(self.source_of(module, path), filename=str(path))
        is_package = path.name == "__init__.py"
        found: list[str] = []
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                found += [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = self._absolute(module, is_package, node)
                submodules = [f"{base}.{a.name}" for a in node.names if a.name != "*"]
                resolved = [s for s in submodules if self._ours(s) and self.file_of(s)]
                # `from pkg import sub` needs only pkg.sub; any other name comes from pkg.
                if not self._ours(base) or len(resolved) < len(submodules):
                    found.append(base)
                found += resolved
            elif isinstance(node, ast.Call):
                self._dynamic(module, node, walk, found)
        return found

    def _absolute(self, module: str, is_package: bool, node: ast.ImportFrom) -> str:
        if not node.level:
            return node.module
        package = module if is_package else module.rpartition(".")[0]
        for _ in range(node.level - 1):
            package = package.rpartition(".")[0]
        return f"{package}.{node.module}" if node.module else package

    @staticmethod
    def _dynamic(module: str, node: ast.Call, walk: Walk, found: list[str]) -> None:
        func = node.func
        name = (func.id if isinstance(func, ast.Name)
                else func.attr if isinstance(func, ast.Attribute) else None)
        if name not in ("__import__", "import_module"):
            return
        arg = node.args[0] if node.args else None
        if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
            found.append(arg.value)
        else:
            walk.dynamic.add((module, f"{name}(<computed name>)"))

    def walk(self, *roots: str) -> Walk:
        walk = Walk()
        todo = [(root, None) for root in roots]
        while todo:
            module, importer = todo.pop()
            if module in walk.files:
                continue
            path = self.file_of(module)
            if path is None or not path.is_file():
                walk.unresolved.add((importer or "<root>", module))
                continue
            walk.files[module] = path
            walk.parent[module] = importer
            for name in self.imports_of(module, path, walk):
                if self._ours(name):
                    todo.append((name, module))
                else:
                    walk.external.add((module, name.split(".")[0]))
        return walk


@pytest.fixture(scope="module")
def walker() -> ImportWalker:
    return ImportWalker(package_dirs_from_pyproject())


# --- the real core -----------------------------------------------------------------------

@pytest.mark.parametrize("root", ["coda.flow.state_machine", "coda.flow.queries"])
def test_state_machine_and_queries_are_pure(walker, root):
    walk = walker.walk(root)
    assert not walk.unresolved, walk.unresolved
    assert not walk.violations(), "\n".join(walk.violations())
    impure = sorted(set(walk.files) - PURE)
    assert not impure, "pure modules reach modules outside the pure core: " + ", ".join(
        walk.chain(m) for m in impure)


def test_the_walk_follows_the_real_imports(walker):
    """A walker that silently found nothing would pass everything."""
    walk = walker.walk("coda.flow.state_machine")
    assert set(walk.files) == {
        "coda.flow.state_machine", "coda.flow.commands", "coda.flow.limits", "coda.flow.model",
        "coda.flow.validate", "coda.storage.codec", "coda.storage.keys", "coda.storage.txn",
        "coda.errors", "coda.flow.retry", "coda.flow.sm_common", "coda.flow.sm_tasks",
        "coda.flow.sm_workflows", "coda.flow.sm_supervisors", "coda.flow.sm_children",
        "coda.flow.sm_schedules", "coda.flow.sm_state", "coda.flow.schedule_spec"}
    assert walk.files["coda.flow.state_machine"] == ROOT / "flow" / "state_machine.py"
    assert walk.files["coda.errors"] == ROOT / "coda_root" / "errors.py"
    externals = {name for _, name in walk.external}
    assert {"msgpack", "__future__"} <= externals
    assert walk.chain("coda.errors").startswith("coda.errors <- ")
    assert set(walker.walk("coda.flow.queries").files) >= {"coda.flow.queries", "coda.errors",
                                                           "coda.storage.codec"}


@pytest.mark.parametrize("module", sorted(PURE))
def test_every_pure_module_is_pure_on_its_own(walker, module):
    walk = walker.walk(module)
    assert module in walk.files and not walk.unresolved
    assert not walk.violations(), "\n".join(walk.violations())
    assert set(walk.files) <= PURE, sorted(set(walk.files) - PURE)


def _clock_reads(source: str) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            if name in CLOCK_READS:
                found.append(f"line {node.lineno}: {name}()")
            if name in ("croniter", "fromtimestamp") and len(node.args) < 2:
                found.append(f"line {node.lineno}: {name}() without an explicit time/zone")
    return found


def test_schedule_spec_never_reads_the_clock():
    """The datetime exception is safe only while the module never asks for the time."""
    assert _clock_reads((ROOT / "flow" / "schedule_spec.py").read_text()) == []
    assert _clock_reads("import datetime\nx = datetime.datetime.now()\n") == ["line 2: now()"]
    assert _clock_reads("from croniter import croniter\ncroniter('* * * * *')\n")


def test_the_shell_is_seen_as_impure(walker):
    """The walker recognises real impurity: the LMDB shell and the applier are not pure."""
    assert any("imports lmdb" in v for v in walker.walk("coda.storage.env").violations())
    applier = walker.walk("coda.flow.applier")
    assert any(v.startswith("coda.flow.applier imports time") for v in applier.violations())
    assert any("coda.storage.env <- coda.flow.applier imports lmdb" in v
               for v in applier.violations())


# --- the walker on altered and synthetic sources ----------------------------------------

def _state_machine_source() -> str:
    return (ROOT / "flow" / "state_machine.py").read_text()


@pytest.mark.parametrize("addition, culprit", [
    ("import time", "time"),
    ("import os.path", "os"),
    ("from datetime import datetime", "datetime"),
    ("def _f():\n    import random\n    return random.random()", "random"),
    ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import grpc", "grpc"),
    ("try:\n    import uvloop\nexcept ImportError:\n    pass", "uvloop"),
])
def test_adding_an_impure_import_to_the_state_machine_is_caught(addition, culprit):
    walker = ImportWalker(package_dirs_from_pyproject(), source_overrides={
        "coda.flow.state_machine": _state_machine_source() + "\n" + addition + "\n"})
    violations = walker.walk("coda.flow.state_machine").violations()
    assert f"coda.flow.state_machine imports {culprit}" in violations


def test_an_impure_import_two_modules_away_is_caught():
    walker = ImportWalker(package_dirs_from_pyproject(), source_overrides={
        "coda.flow.limits": "import threading\nLOCK = threading.Lock()\n"})
    violations = walker.walk("coda.flow.state_machine").violations()
    assert any(v.startswith("coda.flow.limits <- ") and v.endswith("imports threading")
               for v in violations), violations


def test_importing_the_shell_from_the_core_is_caught():
    walker = ImportWalker(package_dirs_from_pyproject(), source_overrides={
        "coda.flow.queries": "from coda.storage import env\n"})
    walk = walker.walk("coda.flow.queries")
    assert "coda.storage.env" in walk.files and "coda.storage.env" not in PURE
    assert "coda.storage.env <- coda.flow.queries imports lmdb" in walk.violations()


def _write_tree(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))


def test_walker_on_a_synthetic_package(tmp_path):
    _write_tree(tmp_path, {
        "top/__init__.py": "",
        "top/core.py": """
            from . import helper
            from .sub import deep
            from coda_top.sub.deep import VALUE as _
            """,
        "top/helper.py": "import json\n",
        "top/sub/__init__.py": "from .. import helper\n",
        "top/sub/deep.py": """
            from ..helper import json
            import importlib
            VALUE = 1
            def later():
                mod = importlib.import_module("socket")
                return __import__("uuid"), __import__(mod.__name__)
            """,
        "other/__init__.py": "",
        "other/mapped.py": "import asyncio\n",
        "top/uses_mapped.py": "from coda_other import mapped\n",
    })
    dirs = {"coda_top": tmp_path / "top", "coda_top.sub": tmp_path / "top" / "sub",
            "coda_other": tmp_path / "other"}
    # The synthetic tree is its own namespace, with the same package-dir style mapping.
    walker = ImportWalker(dirs, namespace="coda_top")
    walk = walker.walk("coda_top.core")
    assert set(walk.files) == {"coda_top.core", "coda_top.helper", "coda_top.sub.deep"}
    assert {name for _, name in walk.external} == {"json", "importlib", "socket", "uuid"}
    assert walk.violations() == [
        "coda_top.sub.deep <- coda_top.core imports importlib",
        "coda_top.sub.deep <- coda_top.core imports socket",
        "coda_top.sub.deep <- coda_top.core imports uuid",
        "coda_top.sub.deep <- coda_top.core imports dynamically: __import__(<computed name>)",
    ]
    # A package's own __init__ is walked when it is the root or a name comes from it.
    assert "coda_top.helper" in walker.walk("coda_top.sub").files
    # Another namespace is external to this walk, like any third-party package.
    assert ("coda_top.uses_mapped", "coda_other") in walker.walk("coda_top.uses_mapped").external
    # An import of a coda module that does not exist is reported, not skipped.
    walker = ImportWalker(dirs, namespace="coda_top",
                          source_overrides={"coda_top.helper": "import coda_top.missing\n"})
    assert walker.walk("coda_top.core").unresolved == {("coda_top.helper", "coda_top.missing")}
