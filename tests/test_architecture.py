"""The layering the code promises (README "Python API", DESIGN): read from the source with `ast`, so a new import
that breaks a rule fails here, not in a review.

- the import graph of the package has no cycle (imports inside functions count: they are edges too);
- imports go one way between layers (LAYERS: algorithms at the bottom, then core, runtime, jobs, the Ray module, the
  API, the package face and the CLI on top);
- only `embtool/runtime/` imports onnxruntime (and so creates sessions);
- the quantization record (`__metadata__["embtool_quantization"]`) is read and written in one module;
- the model record (`embtool.json` and its keys) is spelled in one module, core/formats/record.py;
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


# Which layers each layer may import (its own included): imports point down this table, never up. A module's layer
# is the first name under embtool/ (embtool/core/x.py: core); the exceptions are named in `_layer`.
LAYERS = {
    "version": set(),  # embtool/_version.py: what every layer may read
    "data": set(),  # embtool/data/: the repo's own corpora (files; core/corpora.py reads them)
    "algorithms": {"algorithms", "version"},  # pure numpy: arrays in, arrays out
    "core": {"core", "algorithms", "data", "version"},  # model folders, formats, atomic writers, corpora
    "runtime": {"runtime", "core", "algorithms", "version"},  # the only onnxruntime user
    "jobs": {"jobs", "runtime", "core", "algorithms", "version"},  # one module per command
    "ray": {"ray", "jobs", "runtime", "core", "algorithms", "version"},  # embtool/distributed.py (embtool/ray/)
    "errors": {"errors", "core"},  # embtool/errors.py: core's exceptions, named for API users
    "api": {"api", "ray", "jobs", "runtime", "core", "algorithms", "errors", "version"},  # the one door
    "face": {"face", "api", "errors", "version"},  # embtool/__init__.py (names the API lazily)
    "cli": {"cli", "face", "api", "errors", "version"},  # click only, over the API
    "main": {"main", "cli"},  # embtool/__main__.py
}


def _layer(module: str) -> str | None:
    if module == "embtool":
        return "face"
    top = module.split(".")[1]
    return {"_version": "version", "distributed": "ray", "__main__": "main"}.get(top, top if top in LAYERS else None)


def _layer_violations(graph: dict[str, set[str]]) -> list[str]:
    """Every import of `graph` ({module: modules it imports}) that points up LAYERS, or leaves a module unplaced."""
    bad = []
    for m, deps in sorted(graph.items()):
        src = _layer(m)
        if src is None:
            bad.append(f"{m} is in no layer: add its place to LAYERS")
            continue
        bad += [f"{m} ({src}) imports {d} ({_layer(d)})" for d in sorted(deps) if _layer(d) not in LAYERS[src]]
    return bad


def _full_graph() -> dict[str, set[str]]:
    """The import graph with the package face as a node (the cycle check leaves it out)."""
    mods = {_module_name(p): p for p in PKG.rglob("*.py")}
    return {m: {d for d in _imports(p) if (d in mods or d == "embtool") and d != m} for m, p in mods.items()}


def test_imports_go_one_way_between_layers():
    assert _layer_violations(_full_graph()) == []


def test_the_layer_rule_catches_a_wrong_import():
    graph = _full_graph()
    for module, wrong in (("embtool.algorithms.quantize", "embtool.core.threads"), ("embtool.core.writer", "embtool"),
                          ("embtool.core.model", "embtool.jobs.trim"), ("embtool.runtime.encoder", "embtool.api"),
                          ("embtool.jobs.trim", "embtool.cli.main"), ("embtool.core.card", "embtool.distributed")):
        broken = {**graph, module: graph[module] | {wrong}}
        assert _layer_violations(broken) == [f"{module} ({_layer(module)}) imports {wrong} ({_layer(wrong)})"]
    assert _layer_violations({**graph, "embtool.newthing": set()}) == ["embtool.newthing is in no layer: add its place "
                                                                       "to LAYERS"]


def _string_constants(path: Path) -> set[str]:
    return {n.value for n in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
            if isinstance(n, ast.Constant) and isinstance(n.value, str)}


def test_the_model_record_has_one_owner():
    """"embtool.json" and the record's own keys appear as strings in core/formats/record.py only: every job builds its
    record through it (the keys it shares with other vocabularies, "command" and "inputs", are left out)."""
    from embtool.core.formats import record

    owned = {record.FILE, *record.KEYS} - {"command", "inputs"}
    where = sorted(_module_name(p) for p in PKG.rglob("*.py") if _string_constants(p) & owned)
    assert where == ["embtool.core.formats.record"], where


def test_only_the_runtime_imports_onnxruntime():
    users = sorted(_module_name(p) for p in PKG.rglob("*.py")
                   if any(isinstance(n, (ast.Import, ast.ImportFrom)) and
                          any(a.name.split(".")[0] == "onnxruntime" for a in n.names) if isinstance(n, ast.Import)
                          else isinstance(n, ast.ImportFrom) and (n.module or "").split(".")[0] == "onnxruntime"
                          for n in ast.walk(ast.parse(p.read_text(encoding="utf-8")))))
    assert users and all(u.startswith("embtool.runtime.") for u in users), users
    sessions = sorted(_module_name(p) for p in PKG.rglob("*.py") if "InferenceSession(" in p.read_text(encoding="utf-8"))
    assert sessions == ["embtool.runtime.encoder"], sessions


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
