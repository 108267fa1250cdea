"""The layering the code promises (README "Python API", DESIGN): read from the source with `ast`, so a new import
that breaks a rule fails here, not in a review.

- the import graph of the package has no cycle (imports inside functions count: they are edges too);
- imports go one way between layers (LAYERS: algorithms at the bottom, then core, runtime, the Ray module,
  jobs, the API, the package face and the CLI on top);
- only `embtool/runtime/` imports onnxruntime (and so creates sessions); only `embtool/ray/` imports Ray;
- the quantization record (`__metadata__["embtool_quantization"]`) is read and written in one module;
- the model record (`embtool.json` and its keys) is spelled in one module, core/formats/record.py;
- the embeddings index record (metadata keys, tensor and column names) is spelled in one module, its owner;
- the model families (model types, token tables, layer prefixes) are described in one module, core/architectures.py;
- the CLI modules, `make demo` and every module of `make bench` (tools/bench/) use embtool through its public API only.
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
    "ray": {"ray", "runtime", "core", "algorithms", "version"},  # embtool/ray/: only what runs on Ray
    "jobs": {"jobs", "ray", "runtime", "core", "algorithms", "version"},  # one module per command
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
    return {"_version": "version", "__main__": "main"}.get(top, top if top in LAYERS else None)


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
                          ("embtool.jobs.trim", "embtool.cli.main"), ("embtool.core.card", "embtool.ray.cluster"), ("embtool.ray.search", "embtool.jobs.search")):
        broken = {**graph, module: graph[module] | {wrong}}
        assert _layer_violations(broken) == [f"{module} ({_layer(module)}) imports {wrong} ({_layer(wrong)})"]
    assert _layer_violations({**graph, "embtool.newthing": set()}) == ["embtool.newthing is in no layer: add its place "
                                                                       "to LAYERS"]


def test_the_model_record_has_one_owner():
    """"embtool.json" and the record's own keys appear as strings in core/formats/record.py only: every job builds its
    record through it (the keys it shares with other vocabularies, "command", "inputs" and "files" — huggingface_hub's
    tree listing, read by core/hub.py — are left out)."""
    from embtool.core.formats import record

    owned = {record.FILE, *record.KEYS} - {"command", "inputs", "files"}
    where = sorted(_module_name(p) for p in PKG.rglob("*.py") if _literals(p.read_text(encoding="utf-8")) & owned)
    assert where == ["embtool.core.formats.record"], where


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


def _literals(source: str) -> set[str]:
    """The str and bytes constants of Python source, docstrings aside (a docstring may name a key; code that
    spells one reads or writes it)."""
    tree = ast.parse(source)
    docs = {id(n.body[0].value) for n in ast.walk(tree)
            if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and n.body
            and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
    return {n.value if isinstance(n.value, str) else repr(n.value) for n in ast.walk(tree)
            if isinstance(n, ast.Constant) and isinstance(n.value, (str, bytes)) and id(n) not in docs}


# index keys that are also words of other vocabularies (JSON summaries, CLI options, Ray Data columns, the JSONL
# output): every other index key is spelled only by its owner
INDEX_SHARED_WORDS = {"count", "dim", "embedding", "embeddings", "id", "ids", "max_length", "model", "normalize",
                      "onnx_file", "pooling", "precision", "prefix", "prompt_name", "text", "texts", "tokenizer"}


def test_the_index_record_has_one_owner():
    from dataclasses import fields

    from embtool.core.formats import index

    keys = {*index.KEYS, *(f.name for f in fields(index.IndexArrays)), *index.PARQUET_COLUMNS}
    assert INDEX_SHARED_WORDS <= keys  # the exemptions are index keys still
    owned = {*(keys - INDEX_SHARED_WORDS), repr(index.PARQUET_META_KEY)}
    assert {"model_fingerprint", "text_offsets", "embtool_index", "id_offset", "b'embtool'"} <= owned
    spelled = {_module_name(p): _literals(p.read_text(encoding="utf-8")) & owned for p in PKG.rglob("*.py")}
    where = sorted(m for m, found in spelled.items() if found and m != "embtool.core.formats.index")
    assert where == [], {m: sorted(spelled[m]) for m in where}
    assert spelled["embtool.core.formats.index"] == owned


def test_the_literal_finder_skips_docstrings_only():
    src = '''"""model_fingerprint, in a docstring."""
def f():
    """text_offsets too."""
    return {"model_fingerprint": 1, b"embtool": 2}, f"{x}"
'''
    assert _literals(src) == {"model_fingerprint", "b'embtool'"}


def test_the_architecture_registry_has_one_owner():
    """No module but core/architectures.py spells a family's model_type, token table, layer prefix or position tables
    (as a string of its own): adding a family is adding a description there. Words that are also something else:
    "bert" names a graph builder, "new" (GTE's remote-code model_type) an output being built."""
    from embtool.core.architectures import FAMILIES

    spelled = {s for f in FAMILIES for s in (*f.model_types, f.token_table, f.layers, f.position_table, f.token_type,
                                             f.relative_bias) if s} - {f.builder for f in FAMILIES} - {"new"}
    found = sorted(f"{_module_name(p)}:{n.lineno} {n.value!r}" for p in PKG.rglob("*.py") if p.name != "architectures.py"
                   for n in ast.walk(ast.parse(p.read_text(encoding="utf-8")))
                   if isinstance(n, ast.Constant) and isinstance(n.value, str) and n.value in spelled)
    assert found == [], found


PUBLIC = {"embtool", "embtool.api", "embtool.errors"}


def test_the_cli_uses_the_public_api_only():
    for p in sorted((PKG / "cli").glob("*.py")):
        bad = sorted(m for m in _imports(p) if m not in PUBLIC and not m.startswith("embtool.cli"))
        assert bad == [], f"{p.name} reaches past the API: {bad}"


def _tools_imported(path: Path) -> set[Path]:
    """The files of the project's `tools` modules that `path` imports, absolutely (`from tools.experiments import
    fused_ops`) or relatively (`from ..common import log`), at any depth of the code."""
    package = path.relative_to(ROOT).parent.parts
    named: list[list[str]] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            base = list(package[: len(package) - node.level + 1]) if node.level else []
            module = base + (node.module.split(".") if node.module else [])
            named += [module] + [module + [a.name] for a in node.names]
        elif isinstance(node, ast.Import):
            named += [a.name.split(".") for a in node.names]
    files = {f for parts in named if parts and parts[0] == "tools"
             for f in (ROOT.joinpath(*parts).with_suffix(".py"), ROOT.joinpath(*parts, "__init__.py"))}
    return {f for f in files if f.is_file()}


def test_demo_and_bench_use_the_public_api_only():
    """`make demo` (tools/demo.py) and every module of `make bench` (the package tools/bench/), and every tools module
    they import (the fused section imports tools/experiments/fused_ops.py), reach embtool through its API only."""
    bench = sorted((ROOT / "tools" / "bench").rglob("*.py"))
    assert ROOT / "tools" / "bench" / "__main__.py" in bench and ROOT / "tools" / "bench" / "sections" / "embed.py" in bench
    todo, seen = [ROOT / "tools" / "demo.py", *bench], set()
    while todo:
        p = todo.pop()
        if p not in seen:
            seen.add(p)
            bad = sorted(m for m in _imports(p) if m not in PUBLIC)
            assert bad == [], f"{p.relative_to(ROOT)} reaches past the API: {bad}"
            todo += sorted(_tools_imported(p))
    assert ROOT / "tools" / "experiments" / "fused_ops.py" in seen  # imports are followed
