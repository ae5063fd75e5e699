"""The package's layout, measured from its imports: each wing on one floor.

- no import circle between modules, nor between folders (a subpackage, or a module at the top of the
  package, is one folder): the folders can be stacked so that every import runs down;
- no module of more than 1,000 lines;
- no private name (``_x``) imported from another module: what another module needs is public.

Every ``import`` counts, at the top of a module or inside a function (a function-local import that
dodges a circle is still a circle). ``from . import x`` inside a package's ``__init__`` counts too.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "src" / "duplexlm"
MAX_LINES = 1000


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


MODULES = _modules()


def _imports(name: str, path: Path) -> list[tuple[str, str | None]]:
    """(module imported, name taken from it or None) for every import of the package's own modules."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(a.name, None) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            for a in node.names:
                sub = f"{module}.{a.name}"
                found.append((sub, None) if sub in MODULES else (module, a.name))
    out = []
    for module, taken in found:
        if not module.startswith("duplexlm"):
            continue
        while module not in MODULES and "." in module:
            module = module.rpartition(".")[0]
        if module != name:
            out.append((module, taken))
    return out


IMPORTS = {name: _imports(name, path) for name, path in MODULES.items()}


def _edges() -> dict[str, set[str]]:
    # a module reaching its own package's __init__ (``from .. import x`` of a sibling) is not an edge up
    return {m: {t for t, _ in imps if not m.startswith(t + ".")} for m, imps in IMPORTS.items()}


def _circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(edges.get(v, ())):
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
                found.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def _folder(module: str) -> str:
    parts = module.split(".")
    if MODULES[module].name == "__init__.py" or len(parts) == 2:
        return ".".join(parts[:2])
    return ".".join(parts[:-1]) if len(parts) > 2 else module


def test_the_walker_sees_a_circle() -> None:
    # the check itself can fail: a made-up pair importing each other is one circle
    assert _circles({"a": {"b"}, "b": {"a"}, "c": {"a"}}) == [["a", "b"]]


def test_no_import_circle_between_modules() -> None:
    assert _circles(_edges()) == []


def test_no_import_circle_between_folders() -> None:
    folders: dict[str, set[str]] = defaultdict(set)
    for module, targets in _edges().items():
        for t in targets:
            if _folder(module) != _folder(t):
                folders[_folder(module)].add(_folder(t))
    circles = _circles(folders)
    detail = {c: sorted(f"{m} -> {t}" for m, ts in _edges().items() for t in ts
                        if _folder(m) in c and _folder(t) in c and _folder(m) != _folder(t))
              for c in map(tuple, circles)}
    assert circles == [], detail


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_module_over_a_thousand_lines(module: str) -> None:
    lines = len(MODULES[module].read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_LINES, f"{MODULES[module]}: {lines} lines"


def test_no_private_name_imported_from_another_module() -> None:
    private = sorted(f"{m} imports {t}.{n}" for m, imps in IMPORTS.items() for t, n in imps
                     if n and n.startswith("_") and not n.startswith("__"))
    assert private == []
