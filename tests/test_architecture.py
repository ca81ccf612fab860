"""The house plan (docs/architecture.md): no import cycle between files, imports at module level.

The layer order itself is import-linter's contract (`lint-imports` in .ci/run, `pyproject.toml`);
these checks cover what its contracts do not: cycles between single modules, and imports hidden
inside functions (the usual way to dodge a cycle).
"""
from __future__ import annotations

import ast
import pathlib

import grimp
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
PACKAGES = ("dff", "rfcn", "dff_rfcn")
SOURCE_DIRS = ("lib", "rfcn", "dff_rfcn", "experiments", "tools")

# (file, imported module): the only imports allowed inside functions, each for a reason
ALLOWED_LOCAL_IMPORTS = {
    ("lib/dff/ops/build.py", "torch.utils"),  # cpp_extension reads CUDA_HOME at import; build() sets it first
    ("lib/dff/apps/benchmark.py", "matplotlib"),  # optional: --plot only
    ("lib/dff/apps/benchmark.py", "matplotlib.pyplot"),
    ("lib/dff/train/trainer.py", "torch.utils.tensorboard"),  # optional: needs the tensorboard package
}


def _cycles(graph: grimp.ImportGraph) -> list[tuple[str, ...]]:
    """Every import a -> b that b leads back to, as the cycle (a, b, ..., a)."""
    found = []
    for a in sorted(graph.modules):
        for b in sorted(graph.find_modules_directly_imported_by(a)):
            back = graph.find_shortest_chain(importer=b, imported=a)
            if back:
                found.append((a, *back))
    return found


def test_cycle_finder_finds_a_cycle():
    graph = grimp.ImportGraph()
    for m in ("a", "b", "c"):
        graph.add_module(m)
    graph.add_import(importer="a", imported="b")
    graph.add_import(importer="b", imported="a")
    graph.add_import(importer="c", imported="a")
    assert _cycles(graph) == [("a", "b", "a"), ("b", "a", "b")]


def test_no_import_cycle_between_modules():
    graph = grimp.build_graph(*PACKAGES)
    assert _cycles(graph) == []


def _local_imports(path: pathlib.Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for sub in ast.walk(node):
                if isinstance(sub, ast.Import):
                    found += [(sub.lineno, a.name) for a in sub.names]
                elif isinstance(sub, ast.ImportFrom):
                    found.append((sub.lineno, "." * sub.level + (sub.module or "")))
    return found


def test_local_import_finder_sees_nested_imports(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("import os\n\ndef f():\n    if True:\n        from dff.ops import nms\n    import json\n")
    assert sorted(_local_imports(f)) == [(5, "dff.ops"), (6, "json")]


@pytest.mark.parametrize("folder", SOURCE_DIRS)
def test_imports_sit_at_module_level(folder):
    bad = []
    for path in sorted((REPO / folder).rglob("*.py")):
        rel = path.relative_to(REPO).as_posix()
        if "/_ext/" in rel:
            continue
        bad += [f"{rel}:{line} {mod}" for line, mod in _local_imports(path) if (rel, mod) not in ALLOWED_LOCAL_IMPORTS]
    assert not bad, "imports inside functions (move them to the top of the module):\n" + "\n".join(bad)
