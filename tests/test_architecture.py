"""The layering the code promises (README "Python API", DESIGN): read from the source with `ast`, so a new import
that breaks a rule fails here, not in a review.

- the import graph of the package has no cycle (imports inside functions count: they are edges too);
- only `embtool/runtime/` imports onnxruntime (and so creates sessions); only `embtool/ray/` imports Ray;
- the quantization record (`__metadata__["embtool_quantization"]`) is read and written in one module;
- the CLI modules, `make demo` and `make bench` use embtool through its public API only.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PKG = ROOT / "embtool"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    """Every embtool module `path` imports, at any depth of the code (`from embtool.x import y` counts as
    embtool.x, and as embtool.x.y when that is a module)."""
    modules = {_module_name(p) for p in PKG.rglob("*.py")}
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in modules)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return {m for m in found if m == "embtool" or m.startswith("embtool.")}


def _graph() -> dict[str, set[str]]:
    mods = {_module_name(p): p for p in PKG.rglob("*.py")}
    # `import embtool` (the package's lazy __init__) is not an edge to everything it can name
    return {m: {d for d in _imports(p) if d in mods and d != m and d != "embtool"} for m, p in mods.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    state: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(u: str) -> None:
        state[u] = 1
        stack.append(u)
        for v in sorted(graph[u]):
            if state.get(v) == 1:
                found.append(stack[stack.index(v):] + [v])
            elif v not in state:
                visit(v)
        stack.pop()
        state[u] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)
    return found


def test_import_graph_has_no_cycle():
    assert _cycles(_graph()) == []


def test_the_cycle_finder_finds_cycles():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == [["a", "b", "c", "a"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def _importers(top: str) -> list[str]:
    """The embtool modules that import the package `top` (at any depth of their code)."""
    def imports(tree) -> bool:
        return any((isinstance(n, ast.Import) and any(a.name.split(".")[0] == top for a in n.names))
                   or (isinstance(n, ast.ImportFrom) and n.level == 0 and (n.module or "").split(".")[0] == top)
                   for n in ast.walk(tree))
    return sorted(_module_name(p) for p in PKG.rglob("*.py") if imports(ast.parse(p.read_text(encoding="utf-8"))))


def test_only_the_runtime_imports_onnxruntime():
    users = _importers("onnxruntime")
    assert users and all(u.startswith("embtool.runtime.") for u in users), users
    sessions = sorted(_module_name(p) for p in PKG.rglob("*.py") if "InferenceSession(" in p.read_text(encoding="utf-8"))
    assert sessions == ["embtool.runtime.encoder"], sessions


def test_only_the_ray_subpackage_imports_ray():
    users = _importers("ray")
    assert users and all(u == "embtool.ray" or u.startswith("embtool.ray.") for u in users), users


def test_the_quantization_record_has_one_reader_and_writer():
    where = sorted(_module_name(p) for p in PKG.rglob("*.py")
                   if '"embtool_quantization"' in p.read_text(encoding="utf-8")
                   or "'embtool_quantization'" in p.read_text(encoding="utf-8"))
    assert where == ["embtool.core.qrecord"], where


PUBLIC = {"embtool", "embtool.api", "embtool.errors"}


def test_the_cli_uses_the_public_api_only():
    for p in sorted((PKG / "cli").glob("*.py")):
        bad = sorted(m for m in _imports(p) if m not in PUBLIC and not m.startswith("embtool.cli"))
        assert bad == [], f"{p.name} reaches past the API: {bad}"


def test_demo_and_bench_use_the_public_api_only():
    for name in ("demo.py", "bench.py"):
        bad = sorted(m for m in _imports(ROOT / "tools" / name) if m not in PUBLIC)
        assert bad == [], f"tools/{name} reaches past the API: {bad}"
