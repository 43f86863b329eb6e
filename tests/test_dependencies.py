"""The dependency direction between Loom's top-level modules (ARCHITECTURE.md, "The layering rule"):
every import inside loom/ (at the top of a file or inside a function) goes to a module of a lower or
the same level, never up; the package root `loom` (re-exports only) is imported by nothing inside
loom; no modules import each other, directly or around a circle (any import counts: lazy and
type-only ones too, but not a module's import of the packages it lives in); and only loom/backend/
imports cupy.
"""
import ast
import functools
from pathlib import Path

import pytest

LOOM = Path(__file__).resolve().parents[1] / "loom"

# Level of each top-level module or package of loom/; a module may import its own level and below.
LEVELS = {
    # foundations: no Loom imports but each other
    "errors": 0, "dtypes": 0, "version": 0, "atomic": 0, "mode": 0, "mixed_precision": 0, "fallback": 0,
    "config": 1, "rng": 1, "config_schema": 1,
    "config_checks": 1, "config_layers": 1,
    "backend": 2,
    "kernels": 3,
    "nn": 4, "batch_invariance": 4, "datasets": 4,
    "formats": 5,
    "llm": 6, "engine": 6, "db": 6, "distributed": 6, "verify": 6, "spec": 6,
    "capi": 7, "web": 7, "info": 7, "serve": 7,
    "cli": 8,
    "__main__": 9,
}


def _top_level(module: str) -> str | None:
    """The top-level part of a dotted loom module name ('loom.kernels.exact' -> 'kernels'), or None for
    the root package itself."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


@functools.cache
def _parse(text: str) -> ast.Module:
    """A source's syntax tree, parsed once per test process (four tests walk every file of loom/);
    keyed by the text itself, so the checker's own tests, which fake the files' text, still parse theirs."""
    return ast.parse(text)


def _tree(path: Path) -> ast.Module:
    return _parse(path.read_text(encoding="utf-8"))


def _imports(path: Path) -> tuple[tuple[int, str], ...]:
    """(line, absolute module name) of every import in a loom source file, relative ones resolved;
    `from package import name` gives package.name where name is a submodule."""
    return _resolved_imports(path, path.read_text(encoding="utf-8"))


@functools.cache
def _resolved_imports(path: Path, text: str) -> tuple[tuple[int, str], ...]:
    return tuple(_walk_imports(path, text))


def _walk_imports(path: Path, text: str):
    rel = path.relative_to(LOOM.parent).with_suffix("")
    package = list(rel.parts[:-1])            # a module's package; an __init__'s own package
    for node in ast.walk(_parse(text)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            for alias in node.names:
                sub = module + "." + alias.name
                is_module = (LOOM.parent / sub.replace(".", "/")).with_suffix(".py").exists() or \
                    (LOOM.parent / sub.replace(".", "/")).is_dir()
                yield node.lineno, sub if is_module else module


def _sources():
    return sorted(p for p in LOOM.rglob("*.py") if "__pycache__" not in p.parts)


def _source_level(path: Path) -> tuple[str, int]:
    rel = path.relative_to(LOOM)
    name = rel.parts[0].removesuffix(".py")
    return name, LEVELS.get(name, -1)


def test_every_top_level_module_has_a_level():
    names = {p.name.removesuffix(".py") for p in LOOM.iterdir() if p.name != "__pycache__" and
             (p.suffix == ".py" or p.is_dir())} - {"__init__"}
    assert not names - set(LEVELS), f"give these a level in LEVELS: {sorted(names - set(LEVELS))}"


def test_imports_follow_the_dependency_direction():
    wrong = []
    for path in _sources():
        if path == LOOM / "__init__.py":
            continue                          # the root re-exports the public API from every level
        name, level = _source_level(path)
        for line, module in _imports(path):
            if module != "loom" and not module.startswith("loom."):
                continue
            target = _top_level(module)
            where = f"{path.relative_to(LOOM.parent)}:{line}"
            if target is None:
                wrong.append(f"{where}: imports the package root (import {module}'s names from their modules)")
            elif target != name and LEVELS.get(target, 99) > level:
                wrong.append(f"{where}: {name} (level {level}) imports {module} (level {LEVELS.get(target)})")
    assert not wrong, "imports against the dependency direction:\n" + "\n".join(wrong)


def test_only_the_cuda_backend_imports_cupy():
    wrong = [f"{p.relative_to(LOOM.parent)}:{line}" for p in _sources() for line, module in _imports(p)
             if module.split(".")[0] == "cupy" and p.relative_to(LOOM).parts[:2] != ("backend", "cuda")]
    assert not wrong, "cupy imported outside loom/backend/cuda/:\n" + "\n".join(wrong)


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(LOOM.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _import_time_graph() -> dict:
    """Module -> the loom modules it imports when imported (its top-level statements; imports inside
    functions run later and cannot make a cycle at import time)."""
    modules = {_module_name(p): p for p in _sources()}
    graph = {}
    for name, path in modules.items():
        top = [n for n in _tree(path).body if isinstance(n, (ast.Import, ast.ImportFrom))]
        lines = {n.lineno for n in top}
        graph[name] = {m for line, m in _imports(path) if line in lines and m in modules and m != name}
    return graph


def test_no_import_cycles():
    graph, state, cycles = _import_time_graph(), {}, []

    def visit(node, trail):
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycles.append(" -> ".join(trail[trail.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt, trail + [nxt])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not cycles, "modules that import each other at import time:\n" + "\n".join(cycles)


def _module_graph(sources=None) -> dict:
    """Module -> every loom module it imports: at the top, inside functions and under TYPE_CHECKING
    alike. An import of one of its own ancestor packages is left out: a package's __init__ re-exports
    its submodules, so that edge says nothing about the module's own dependencies."""
    modules = {_module_name(p): p for p in (_sources() if sources is None else sources)}
    return {name: {m for _, m in _imports(path)
                   if m in modules and m != name and not name.startswith(m + ".")}
            for name, path in modules.items()}


def _circles(graph: dict) -> list[list[str]]:
    """The strongly connected components of more than one node (Tarjan's algorithm, iterative), each
    sorted, in order of their first module."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, edges = work[-1]
            nxt = next(edges, None)
            if nxt is not None:
                if nxt not in index:
                    index[nxt] = low[nxt] = len(index)
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(sorted(graph.get(nxt, ())))))
                elif nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return sorted(found)


def test_no_import_circles_inside_loom():
    # any import counts, lazy or type-only: a circle means neither module can be understood (or
    # moved) without the other; break it by moving the shared piece down or passing it in
    circles = _circles(_module_graph())
    assert not circles, "modules that import each other, directly or around a circle:\n" + \
        "\n".join("  " + ", ".join(c) for c in circles)


def test_the_circle_finder_finds_every_circle_and_nothing_else():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(),     # a -> b -> c -> a
             "e": {"f"}, "f": {"e", "d"},                             # e <-> f
             "g": {"a", "e"}, "h": {"h"}}                             # reaches both circles; a self-import
    assert _circles(graph) == [["a", "b", "c"], ["e", "f"]]
    assert _circles({"a": {"b"}, "b": {"c"}, "c": set()}) == []
    long = {str(i): {str(i + 1)} for i in range(5000)} | {"5000": {"0"}}   # deeper than Python's recursion limit
    assert len(_circles(long)) == 1 and len(_circles(long)[0]) == 5001


def test_the_graph_leaves_out_only_ancestor_packages(monkeypatch):
    backend, cuda = LOOM / "backend", LOOM / "backend" / "cuda"
    sources = {backend / "__init__.py": "", backend / "protocols.py": "", cuda / "__init__.py": "",
               cuda / "quant.py": "",
               cuda / "x.py": "from .. import Array\nimport loom.backend.cuda\n"          # its ancestors
                              "from ..protocols import Backend\nfrom . import quant\n"}  # two edges
    monkeypatch.setattr(Path, "read_text", lambda self, encoding=None: sources[self])
    assert _module_graph(list(sources)) == {
        "loom.backend": set(), "loom.backend.protocols": set(), "loom.backend.cuda": set(),
        "loom.backend.cuda.quant": set(), "loom.backend.cuda.x": {"loom.backend.protocols", "loom.backend.cuda.quant"}}


@pytest.mark.parametrize("source, expected", [
    ("from ..kernels import exact\n", "loom.kernels.exact"),      # a submodule
    ("from ..errors import LoomError\n", "loom.errors"),          # a name in a module
    ("from . import no_such_module\n", "loom.backend"),
    ("import loom.nn\n", "loom.nn"),
    ("from .. import version\n", "loom.version"),
])
def test_imports_are_resolved(source, expected, monkeypatch):
    # the checker itself: a file at loom/backend/x.py holding `source` is read as importing `expected`
    monkeypatch.setattr(Path, "read_text", lambda self, encoding=None: source)
    assert [m for _, m in _imports(LOOM / "backend" / "x.py")] == [expected]
