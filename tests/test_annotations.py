"""Every public function and method in loom/ is annotated (issue 26: "type annotations on every
public function"): each parameter but self/cls, and the return type (not for __init__), and every
module that annotates says `from __future__ import annotations`, so no annotation runs at import.
Public: a name without a leading underscore at module level or in a public class, and the __init__
and __call__ of public classes."""
import ast
from pathlib import Path

import pytest

LOOM = Path(__file__).resolve().parents[1] / "loom"
_SPECIAL = ("__init__", "__call__")


def _public_functions(tree: ast.Module):
    """(qualified name, node, in a class) of the public functions of a module."""
    def walk(node, prefix: str, in_class: bool):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                if not child.name.startswith("_") or (in_class and child.name in _SPECIAL):
                    yield prefix + child.name, child, in_class
            elif isinstance(child, ast.ClassDef) and not child.name.startswith("_"):
                yield from walk(child, prefix + child.name + ".", True)
    yield from walk(tree, "", False)


def _missing(node: ast.FunctionDef, in_class: bool) -> list[str]:
    args = node.args.posonlyargs + node.args.args + node.args.kwonlyargs
    if in_class and args and args[0].arg in ("self", "cls") and not _is_static(node):
        args = args[1:]
    args += [a for a in (node.args.vararg, node.args.kwarg) if a is not None]
    out = [a.arg for a in args if a.annotation is None]
    if node.returns is None and node.name != "__init__":
        out.append("return")
    return out


def _is_static(node: ast.FunctionDef) -> bool:
    return any(isinstance(d, ast.Name) and d.id == "staticmethod" for d in node.decorator_list)


SOURCES = sorted(p for p in LOOM.rglob("*.py") if "__pycache__" not in p.parts)


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(LOOM.parent)))
def test_public_functions_are_annotated(path):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    bare = [f"{name} ({', '.join(missing)})" for name, node, in_class in _public_functions(tree)
            if (missing := _missing(node, in_class))]
    assert not bare, f"{path.relative_to(LOOM.parent)}: annotate " + "; ".join(bare)


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(LOOM.parent)))
def test_annotations_are_not_evaluated_at_import(path):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    annotated = any(isinstance(n, ast.arg) and n.annotation is not None or
                    isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.returns is not None
                    for n in ast.walk(tree))
    future = any(isinstance(n, ast.ImportFrom) and n.module == "__future__" and
                 any(a.name == "annotations" for a in n.names) for n in tree.body)
    assert future or not annotated, f"{path.relative_to(LOOM.parent)}: add `from __future__ import annotations`"


def test_the_checker_sees_a_bare_function():
    tree = ast.parse("def f(a, b: int) -> int: ...\nclass C:\n    def m(self, x: int): ...\n"
                     "    def _private(self, y): ...\nclass _Hidden:\n    def n(self, z): ...\n")
    found = {name: _missing(node, in_class) for name, node, in_class in _public_functions(tree)}
    assert found == {"f": ["a"], "C.m": ["return"]}
