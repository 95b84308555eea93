"""The layout's rules, checked on the source (docs/architecture.md): no import cycles, no
private name imported from another module, and each heavy or foreign dependency imported only
where the architecture puts it."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# source folder ▶ the package it installs as (pyproject.toml's package-dir)
PACKAGES = {"oodguard": "oodguard", "export": "oodguard.export",
            "calibration": "oodguard.calibration", "inspection": "oodguard.inspect",
            "demo": "oodguard.demo", "training": "oodguard.training"}


def _modules() -> dict[str, Path]:
    mods = {}
    for folder, pkg in PACKAGES.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            rel = path.relative_to(ROOT / folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            mods[".".join([pkg, *parts])] = path
    return mods


MODULES = _modules()


def _imports(name: str, path: Path) -> Iterator[tuple[str, str, int]]:
    """``(module imported, name imported or "", line)`` for every import in the file, lazy
    and TYPE_CHECKING ones included (a cycle through them is still a cycle of concepts)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    base = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            target = node.module or ""
            if node.level:
                parts = base.split(".")
                keep = parts[: len(parts) - node.level + 1]
                target = ".".join(keep + ([target] if target else []))
            for alias in node.names:
                yield target, alias.name, node.lineno
        elif isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, "", node.lineno


def _graph() -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {m: set() for m in MODULES}
    for name, path in MODULES.items():
        for target, imported, _ in _imports(name, path):
            full = f"{target}.{imported}" if imported else target
            dest = full if full in MODULES else target
            if dest in MODULES and dest != name:
                edges[name].add(dest)
    return edges


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected component of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def test_the_module_list_is_the_source_tree() -> None:
    assert len(MODULES) > 80
    assert {"oodguard.guard", "oodguard.scoring.scorer", "oodguard.serve.app",
            "oodguard.export.exporter", "oodguard.inspect"} <= MODULES.keys()


def test_no_import_cycles() -> None:
    cycles = _cycles(_graph())
    assert not cycles, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in cycles)


def test_the_cycle_finder_finds_a_cycle() -> None:
    """The check above can fail: a two-module loop and a three-module loop are found."""
    edges = {"a": {"b"}, "b": {"a", "c"}, "c": {"d"}, "d": {"e"}, "e": {"c"}, "f": set()}
    assert sorted(_cycles(edges)) == [["a", "b"], ["c", "d", "e"]]


def test_no_private_name_is_imported_from_another_module() -> None:
    """A name starting with ``_`` (not a dunder) is private to its module, and a module whose
    name starts with ``_`` is private to its package's ``__init__``... except ``_version``,
    the package's conventional version file."""
    found = []
    for name, path in MODULES.items():
        for target, imported, line in _imports(name, path):
            if not (target.startswith("oodguard") or target.split(".")[0] in PACKAGES):
                continue
            private_name = imported.startswith("_") and not imported.startswith("__")
            private_module = any(p.startswith("_") and not p.startswith("__")
                                 and p != "_version" for p in target.split("."))
            if (private_name or private_module) and target != name:
                found.append(f"{path.relative_to(ROOT)}:{line}: {target} {imported}")
    assert not found, "private names imported across modules:\n" + "\n".join(found)


# library ▶ the only runtime packages allowed to import it
_OWNERS = {
    "onnxruntime": ("oodguard.engine",),
    "prometheus_client": ("oodguard.metrics",),
    "uvicorn": ("oodguard.serve",),
    "starlette": ("oodguard.serve",),
    "ray": ("oodguard.integrations.ray",),
}
_OFFLINE_ONLY = ("torch", "sklearn", "scipy", "onnx", "onnxscript", "matplotlib")


@pytest.mark.parametrize("library", sorted(_OWNERS))
def test_each_library_is_imported_by_its_one_package(library: str) -> None:
    owners = _OWNERS[library]
    found = [f"{path.relative_to(ROOT)}:{line}"
             for name, path in MODULES.items()
             if name.startswith("oodguard.") and not name.startswith(
                 ("oodguard.export", "oodguard.calibration", "oodguard.demo", "oodguard.inspect",
                  "oodguard.training"))
             and not name.startswith(owners)
             for target, _, line in _imports(name, path)
             if target == library or target.startswith(library + ".")]
    assert not found, f"{library} imported outside {owners}: {found}"


def test_the_runtime_never_imports_the_offline_stages_libraries() -> None:
    found = [f"{path.relative_to(ROOT)}:{line}: {target}"
             for name, path in MODULES.items()
             if path.is_relative_to(ROOT / "oodguard")
             for target, _, line in _imports(name, path)
             if target.split(".")[0] in _OFFLINE_ONLY]
    assert not found, "\n".join(found)
