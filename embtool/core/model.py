"""Opening a model folder: layouts, weights, tokenizer, configs, and the vocabulary axis.

Every command opens its MODEL through `open_model`; nothing else reads model files.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from embtool.core.architectures import (SUPPORTED, Arch, check_value, find_token_table, model_type, read_arch,
                                        table_width)
from embtool.core.errors import CorruptFile, ModelNotFound, UnsafeModel
from embtool.core.hub import HubSource, blob_roots, resolve_model, resolve_tokenizer
from embtool.core.safetensors_io import SafetensorsFile, TensorInfo
from embtool.core.st_config import SentenceTransformersInfo, read_st_info
from embtool.core.tokenizer_io import TokenizerJson

log = logging.getLogger("embtool")  # notes for the user (the CLI prints them on stderr)

PICKLE_PATTERNS = ("pytorch_model*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl", "*.pickle", "tf_model.h5")


@dataclass(frozen=True)
class Layout:
    """One way a folder can hold weights (model2vec-style: layouts as data)."""

    name: str
    weights: str  # path relative to the model folder
    format: str  # "safetensors" | "onnx"


LAYOUTS: tuple[Layout, ...] = (
    Layout("Hugging Face safetensors", "model.safetensors", "safetensors"),
    Layout("sharded safetensors", "model.safetensors.index.json", "safetensors"),
    Layout("ONNX", "model.onnx", "onnx"),
    Layout("optimum ONNX", "onnx/model.onnx", "onnx"),
)


class WeightStore:
    """Tensors of one or several (sharded) safetensors files, memory-mapped, by name."""

    def __init__(self, files: list[Path]):
        self.files = [SafetensorsFile(p) for p in files]
        self.index: dict[str, SafetensorsFile] = {}
        for f in self.files:
            for k in f.tensors:
                if k in self.index:
                    raise CorruptFile(f"tensor {k!r} appears in both {self.index[k].path.name} and {f.path.name}")
                self.index[k] = f

    def __contains__(self, name: str) -> bool:
        return name in self.index

    def keys(self) -> list[str]:
        return list(self.index)

    def info(self, name: str) -> TensorInfo:
        return self.index[name].tensors[name]

    def get(self, name: str) -> np.ndarray:
        return self.index[name].get(name)

    @property
    def metadata(self) -> dict[str, str]:
        meta: dict[str, str] = {}
        for f in self.files:
            meta.update(f.metadata)
        return meta

    overhead = 0  # bytes of the file beside the tensors (the safetensors header is estimated by the planner)


ONNX_DTYPES = {1: "F32", 10: "F16", 16: "BF16", 11: "F64"}  # ONNX TensorProto data types as safetensors names them


class OnnxWeights:
    """The initializers of an ONNX model read like a WeightStore (keys, info, get), for the quantization planners:
    the B [in, out] of a MatMul reads as the Linear weight Bᵀ [out, in] (a safetensors Linear's orientation), every
    other initializer as it is stored. `overhead`: the bytes of the files beside the initializers' data (the graph)."""

    def __init__(self, model: "Model"):
        g = model.onnx_model.graph
        self.inits = {t.name: t for t in g.initializer}
        self.transposed = frozenset(n.input[1] for n in g.node if n.op_type == "MatMul" and len(n.input) == 2
                                    and n.input[1] in self.inits and len(self.inits[n.input[1]].dims) == 2)
        self.metadata: dict[str, str] = {}
        self.overhead = max(0, model.weight_bytes() - sum(self.info(k).nbytes for k in self.inits))

    def __contains__(self, name: str) -> bool:
        return name in self.inits

    def keys(self) -> list[str]:
        return list(self.inits)

    def info(self, name: str) -> TensorInfo:
        t = self.inits[name]
        shape = tuple(int(d) for d in t.dims)
        return TensorInfo(name, ONNX_DTYPES.get(t.data_type, str(t.data_type)), shape[::-1] if name in self.transposed else shape,
                          0, _tensor_nbytes(t))

    def get(self, name: str) -> np.ndarray:
        from onnx import numpy_helper

        a = numpy_helper.to_array(self.inits[name])
        return np.ascontiguousarray(a.T) if name in self.transposed else a


def weight_view(model: "Model") -> "WeightStore | OnnxWeights":
    """A model's tensors by name: its safetensors weights, or an ONNX model's initializers (`OnnxWeights`)."""
    return model.weights if model.weights is not None else OnnxWeights(model)


@dataclass
class Model:
    root: Path
    layout: Layout
    weight_path: Path
    config: dict[str, Any]
    tokenizer: TokenizerJson | None
    st: SentenceTransformersInfo
    weights: WeightStore | None = None  # safetensors models
    onnx_external: list[Path] = field(default_factory=list)
    source: HubSource | None = None  # opened from a Hub id: the id, the revision asked for and its commit (core/hub.py)

    @property
    def format(self) -> str:
        return self.layout.format

    @cached_property
    def onnx_model(self):
        """The ONNX ModelProto with its external data loaded (ONNX models only)."""

        assert self.format == "onnx"
        return _load_onnx(self.weight_path, self.root)

    def weight_files(self) -> list[Path]:
        if self.weights is not None:
            return [f.path for f in self.weights.files]
        return [self.weight_path, *self.onnx_external]

    def weight_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.weight_files())

    def fingerprint(self) -> str:
        """A cheap identity of the weights: sha256 over sizes and the first/last MiB of each file."""
        h = hashlib.sha256()
        for p in self.weight_files():
            size = p.stat().st_size
            h.update(f"{p.name}:{size}".encode())
            with open(p, "rb") as f:
                h.update(f.read(1 << 20))
                if size > 1 << 20:
                    f.seek(max(size - (1 << 20), 1 << 20))
                    h.update(f.read(1 << 20))
        return h.hexdigest()[:16]

    def tokenizer_fingerprint(self) -> str | None:
        """sha256 of the tokenizer.json in use (None without one): two models with the same weights and another
        tokenizer embed differently, and `search --strict` must tell them apart."""
        if self.tokenizer is None or self.tokenizer.path is None:
            return None
        return hashlib.sha256(Path(self.tokenizer.path).read_bytes()).hexdigest()[:16]


def read_json(path: Path) -> Any:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise CorruptFile(f"{path}: not valid UTF-8") from e
    except json.JSONDecodeError as e:
        raise CorruptFile(f"{path}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})") from e
    except RecursionError:
        raise CorruptFile(f"{path}: JSON nested too deeply to be a real configuration; refusing it") from None
    except OSError as e:
        raise CorruptFile(f"{path}: cannot read: {e.strerror}") from e


def _refuse_pickles(folder: Path) -> None:
    found = sorted({p.name for pat in PICKLE_PATTERNS for p in folder.glob(pat)})
    if found:
        raise UnsafeModel(
            f"{folder} has only pickle-based weights ({', '.join(found)}); embtool never loads them because "
            "unpickling can run arbitrary code. Convert them to model.safetensors first "
            "(e.g. with the safetensors `convert` tool) in an environment you trust"
        )


LFS_POINTER = b"version https://git-lfs.github.com/spec/v1"


def refuse_lfs_pointer(p: Path, what: str = "weights") -> None:
    """A Git LFS pointer (a small text file) checked out in place of the real file."""
    try:
        if p.stat().st_size > 1024:
            return
        with open(p, "rb") as f:
            head = f.read(len(LFS_POINTER))
    except OSError:
        return
    if head == LFS_POINTER:
        raise CorruptFile(f"{p}: this is a Git LFS pointer, not the {what}; run git lfs pull (in the model's repository)")


class ModelRef(str):
    """A MODEL argument together with how to read it: `tokenizer` (a tokenizer.json, or a folder
    holding one, or a Hub id, for a model that has none beside it), `onnx_file` (which ONNX file of a
    folder with several) and `cache_dir` (the Hub cache, for a Hub id). It is a str, so it goes wherever
    a model path goes (requests, summaries, provenance) and `open_model` reads the settings from it."""

    tokenizer: str | None
    onnx_file: str | None
    cache_dir: str | None

    def __new__(cls, path: str | os.PathLike, tokenizer: str | os.PathLike | None = None,
                onnx_file: str | None = None, cache_dir: str | os.PathLike | None = None) -> "ModelRef":
        self = super().__new__(cls, os.fspath(path))
        self.tokenizer = os.fspath(tokenizer) if tokenizer is not None else None
        self.onnx_file = onnx_file
        self.cache_dir = os.fspath(cache_dir) if cache_dir is not None else None
        return self


def _onnx_files(folder: Path) -> list[str]:
    """The .onnx files of a model folder and of its optimum `onnx/` subfolder, relative to it."""
    found = [p.name for p in sorted(folder.glob("*.onnx"))]
    if (folder / "onnx").is_dir():
        found += [f"onnx/{p.name}" for p in sorted((folder / "onnx").glob("*.onnx"))]
    return found


# weights that are not Linear layers nor the token table: norms, position/type tables, MPNet's relative attention
# bias. quantize keeps them in float; the runtime never feeds them as Linear weights
NOT_LINEAR = re.compile(r"(LayerNorm|layer_norm|layernorm|norm\.|position_embeddings|token_type_embeddings|position_ids|relative_attention_bias)")

def _buildable(folder: Path) -> tuple[bool, str]:
    """(whether embtool's runtime builds this safetensors architecture (core/architectures.py), its model_type)."""

    cfg_p = folder / "config.json"
    if not cfg_p.is_file():
        return True, ""
    cfg = read_json(cfg_p)
    mt = model_type(cfg) if isinstance(cfg, dict) else ""
    return (not mt or mt in SUPPORTED), mt


def _locate(path: Path, onnx_file: str | None = None) -> tuple[Path, Layout, Path, list[str]]:
    """Resolve MODEL (a folder, or a .safetensors/.onnx file) to (root, layout, weight path, notes).
    The notes say which file was chosen when the folder offers several."""
    if not path.exists():
        raise ModelNotFound(f"{path}: no such file or folder")
    if path.is_file():
        if onnx_file:
            raise ModelNotFound(f"--onnx-file chooses a file inside a model folder; {path} is already a file")
        suffix = path.suffix.lower()
        if suffix == ".safetensors":
            return path.parent, Layout("single safetensors file", path.name, "safetensors"), path, []
        if suffix == ".onnx":
            return path.parent, Layout("single ONNX file", path.name, "onnx"), path, []
        if suffix in (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle"):
            raise UnsafeModel(
                f"{path}: pickle-based weights are never loaded (unpickling can run arbitrary code); "
                "convert them to .safetensors in an environment you trust"
            )
        raise ModelNotFound(f"{path}: not a model (expected a folder, a .safetensors or an .onnx file)")
    onnx_here = _onnx_files(path)
    if onnx_file:
        for rel in (onnx_file, f"onnx/{onnx_file}"):
            if Path(rel).suffix.lower() == ".onnx" and (path / rel).is_file():
                p = _inside(path, rel, path)
                return path, Layout("ONNX (--onnx-file)", rel, "onnx"), p, []
        raise ModelNotFound(f"{path}: no ONNX file {onnx_file!r} (it has: {', '.join(onnx_here) or 'none'})")
    notes: list[str] = []
    found = next((layout for layout in LAYOUTS if (path / layout.weights).is_file()), None)
    if found is not None and found.format == "safetensors":
        onnx_layout = next((layout for layout in LAYOUTS if layout.format == "onnx" and (path / layout.weights).is_file()), None)
        if onnx_layout is not None:
            ok, mt = _buildable(path)
            if not ok:
                notes.append(f"embtool cannot build architecture {mt!r} from safetensors; using {onnx_layout.weights} instead")
                found = onnx_layout
    if found is None and onnx_here:
        if len(onnx_here) > 1:
            raise ModelNotFound(f"{path}: several ONNX files and none is model.onnx ({', '.join(onnx_here)}); "
                                "choose one with --onnx-file NAME")
        found = Layout("ONNX", onnx_here[0], "onnx")
    if found is not None:
        if found.format == "onnx":
            others = [f for f in onnx_here if f != found.weights]
            if others:
                notes.append(f"using {found.weights} (also in the folder: {', '.join(others)}; choose with --onnx-file NAME)")
        return path, found, path / found.weights, notes
    _refuse_pickles(path)
    tried = ", ".join(layout.weights for layout in LAYOUTS)
    raise ModelNotFound(f"{path}: no model weights found (looked for {tried})")


def _shards(index_path: Path) -> list[Path]:
    idx = read_json(index_path)
    wm = idx.get("weight_map") if isinstance(idx, dict) else None
    if not isinstance(wm, dict) or not wm:
        raise CorruptFile(f"{index_path}: no weight_map")
    files = []
    for name in sorted(set(wm.values())):
        if not isinstance(name, str):
            raise CorruptFile(f"{index_path}: weight_map values must be file names")
        p = _inside(index_path.parent, name, index_path)
        if not p.is_file():
            raise CorruptFile(f"{index_path}: shard {name} is missing")
        files.append(p)
    return files


def _inside(root: Path, rel: str, referrer: Path) -> Path:
    """`root/rel`, refusing anything that escapes root (absolute paths, '..', symlinks out)."""
    if os.path.isabs(rel) or ".." in Path(rel).parts:
        raise UnsafeModel(f"{referrer}: refers to {rel!r}, outside the model folder; refusing to read it")
    p = root / rel
    real = p.resolve()
    if not any(real.is_relative_to(r) for r in (root.resolve(), *blob_roots(root))):  # a Hub snapshot links into blobs
        raise UnsafeModel(
            f"{referrer}: {rel!r} is a link that points outside the model folder; refusing to read it"
        )
    return p


def onnx_external_files(onnx_path: Path, root: Path) -> list[Path]:
    """Check the external-data references of an ONNX file without loading the data."""
    import onnx
    from google.protobuf.message import DecodeError

    try:
        m = onnx.load(str(onnx_path), load_external_data=False)
    except (DecodeError, ValueError, RuntimeError) as e:
        raise CorruptFile(f"{onnx_path}: not a valid ONNX model ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from e
    files: dict[str, Path] = {}
    for t in _all_tensors(m.graph):
        if t.data_location != onnx.TensorProto.EXTERNAL:
            continue
        info = {e.key: e.value for e in t.external_data}
        loc = info.get("location", "")
        p = _inside(onnx_path.parent, loc, onnx_path)
        if not p.is_file():
            raise CorruptFile(f"{onnx_path}: external data file {loc!r} of tensor {t.name!r} is missing")
        refuse_lfs_pointer(p)
        size = p.stat().st_size
        off = int(info.get("offset", 0) or 0)
        length = info.get("length")
        if off < 0 or off > size or (length is not None and off + int(length) > size):
            raise CorruptFile(f"{onnx_path}: tensor {t.name!r} reads past the end of {loc!r}")
        files[loc] = p
    return [files[k] for k in sorted(files)]


def _all_tensors(graph):
    yield from graph.initializer
    for n in graph.node:
        for a in n.attribute:
            if a.t is not None and a.HasField("t"):
                yield a.t
            for g in list(a.graphs) + ([a.g] if a.HasField("g") else []):
                yield from _all_tensors(g)


def _load_onnx(path: Path, root: Path):
    """The ModelProto with its external data read in, after `onnx_external_files` checked every reference (onnx's
    own loader refuses any symlinked data file, which is how a Hub snapshot holds them)."""
    import onnx

    onnx_external_files(path, root)  # safety check first
    m = onnx.load(str(path), load_external_data=False)
    for t in _all_tensors(m.graph):
        if t.data_location != onnx.TensorProto.EXTERNAL:
            continue
        info = {e.key: e.value for e in t.external_data}
        with open(_inside(path.parent, info["location"], path), "rb") as f:
            f.seek(int(info.get("offset", 0) or 0))
            t.raw_data = f.read(int(info["length"])) if info.get("length") else f.read()
        del t.external_data[:]
        t.data_location = onnx.TensorProto.DEFAULT
    return m


SIZE_KEYS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
             "max_position_embeddings", "type_vocab_size", "dim", "n_layers", "n_heads", "hidden_dim")


def _check_config(cfg: Any, path: Path) -> dict[str, Any]:
    """The checks every config.json gets, whatever its architecture: sizes are integers in [0, 2^31], and
    pad_token_id (which the encoder pads with) an integer or null. A family's own keys are checked
    against the weights by `check_config_against_weights` (core/architectures.py)."""
    if not isinstance(cfg, dict):
        raise CorruptFile(f"{path}: config must be a JSON object")
    for key in SIZE_KEYS:
        v = cfg.get(key)
        if v is None:
            continue
        if not isinstance(v, int) or isinstance(v, bool) or v < 0 or v > 1 << 31:
            raise CorruptFile(f"{path}: {key} = {v!r} is not a sensible size")
    if cfg.get("pad_token_id") is not None:
        check_value(cfg["pad_token_id"], "an integer", None, None, str(path), "pad_token_id")
    return cfg


def _first_int(cfg: dict[str, Any], *keys: str) -> tuple[str, int] | None:
    for k in keys:
        v = cfg.get(k)
        if isinstance(v, int) and not isinstance(v, bool):
            return k, v
    return None


def check_config_against_weights(model: Model) -> None:
    """Refuse a config.json that contradicts the safetensors weights (layers, hidden size, heads, vocabulary rows,
    the padding id), and, for a family embtool builds, any key of the wrong type or out of range or any size the
    weights' shapes contradict (`model_arch`): a graph built from it would be wrong, give NaN, or fail half-way
    through a command."""
    cfg, ws = model.config, model.weights
    assert ws is not None
    where = model.root / "config.json"
    problems = []
    layers = _first_int(cfg, "num_hidden_layers", "n_layers", "num_layers")
    found = num_layers(ws.keys())
    if layers and found and layers[1] != found:
        problems.append(f"{layers[0]} = {layers[1]:,} but the weights have {found} layers")
    hidden = _first_int(cfg, "hidden_size", "dim", "d_model")
    heads = _first_int(cfg, "num_attention_heads", "n_heads")
    if hidden and heads and (heads[1] == 0 or (hidden[1] % heads[1] and "head_dim" not in cfg)):  # head_dim: sizes free
        problems.append(f"{heads[0]} = {heads[1]} does not divide {hidden[0]} = {hidden[1]}")
    table = find_token_table(cfg, ws)
    if table is not None:
        rows = ws.info(table.rows).shape[0]
        vocab = _first_int(cfg, "vocab_size")
        if vocab and vocab[1] != rows:
            problems.append(f"vocab_size = {vocab[1]:,} but the token-embedding table has {rows:,} rows")
        pad = _first_int(cfg, "pad_token_id")
        if pad and not -rows <= pad[1] < rows:  # the padding id indexes the table (from its end when negative)
            problems.append(f"pad_token_id = {pad[1]:,} but the token-embedding table has {rows:,} rows")
        width = table_width(table, ws, {})
        if hidden and width and hidden[1] != width:
            problems.append(f"{hidden[0]} = {hidden[1]:,} but the token embeddings have {width} columns")
    if problems:
        raise CorruptFile(f"{where} contradicts the weights: " + "; ".join(problems))
    model_arch(model)


def model_arch(model: Model) -> Arch | None:
    """The architecture of a safetensors model as core/architectures.py resolves it from config.json and the weights'
    headers (None: not a family embtool builds). Raises CorruptFile on a key of the wrong type, out of range, or
    contradicted by the weights; a variant the runtime does not build comes back with `Arch.unsupported` set."""
    from embtool.core.qrecord import read_record

    ws = model.weights
    if ws is None:
        return None
    logical = {base: tuple(info["shape"]) for base, info in read_record(ws.metadata, str(model.root)).items()}
    return read_arch(model.config, ws, model.root / "config.json", logical)


def _tokenizer_file(given: str | None, root: Path, wpath: Path) -> Path | None:
    """The tokenizer.json to use: --tokenizer (a file, or a folder holding tokenizer.json), else the
    model folder's own (or one beside the ONNX file of an `onnx/` layout)."""
    if given:
        p = Path(given)
        if p.is_dir():
            p = p / "tokenizer.json"
        if not p.is_file():
            raise ModelNotFound(f"--tokenizer {given}: no such tokenizer.json")
        return p
    for p in (root / "tokenizer.json", wpath.parent / "tokenizer.json"):
        if p.is_file():
            return p
    return None


def open_model(path: str | os.PathLike, need_tokenizer: bool = False, tokenizer: str | os.PathLike | None = None,
               onnx_file: str | None = None, cache_dir: str | os.PathLike | None = None) -> Model:
    """Open MODEL; raises a named core error with one clear sentence on anything wrong.

    :param path: a model folder, a .safetensors/.onnx file, a Hub id `org/name[@revision]` (core/hub.py: from the
        Hub cache, downloaded when missing), or a `ModelRef` (which carries the next three)
    :param need_tokenizer: fail unless a tokenizer.json is found
    :param tokenizer: a tokenizer.json (or a folder holding one, or a Hub id) for a model that has none beside it
    :param onnx_file: which ONNX file of a folder with several (default: model.onnx)
    :param cache_dir: the Hub cache for Hub ids (default: $HF_HUB_CACHE, $HF_HOME/hub, ~/.cache/huggingface/hub)
    """
    tokenizer = tokenizer if tokenizer is not None else getattr(path, "tokenizer", None)
    onnx_file = onnx_file if onnx_file is not None else getattr(path, "onnx_file", None)
    cache_dir = cache_dir if cache_dir is not None else getattr(path, "cache_dir", None)
    where, source = resolve_model(path, SNAPSHOTS, cache_dir=cache_dir, onnx_file=onnx_file)
    if tokenizer is not None:
        tokenizer = resolve_tokenizer(tokenizer, cache_dir=cache_dir)
    root, layout, wpath, notes = _locate(where, onnx_file)
    for n in notes:
        log.info(n)
    refuse_lfs_pointer(wpath)
    config: dict[str, Any] = {}
    if (root / "config.json").is_file():
        refuse_lfs_pointer(root / "config.json", "config")
        config = _check_config(read_json(root / "config.json"), root / "config.json")
    tok = None
    tok_path = _tokenizer_file(os.fspath(tokenizer) if tokenizer is not None else None, root, wpath)
    if tok_path is not None:
        refuse_lfs_pointer(tok_path, "tokenizer")
        tok = TokenizerJson.load(tok_path)
    elif need_tokenizer:
        raise ModelNotFound(f"{root}: no tokenizer.json beside the model; pass --tokenizer PATH "
                            "(the model's tokenizer.json, or a folder holding it; --source-tokenizer for init-subwords)")
    model = Model(root=root, layout=layout, weight_path=wpath, config=config, tokenizer=tok, st=read_st_info(root, config),
                  source=source)
    if layout.format == "safetensors":
        files = _shards(wpath) if wpath.name.endswith(".index.json") else [wpath]
        for f in files:
            refuse_lfs_pointer(f)
        model.weights = WeightStore(files)
        if config:
            check_config_against_weights(model)
    else:
        model.onnx_external = onnx_external_files(wpath, root)
    return model


class SnapshotLayouts:
    """What core/hub.py asks about a Hub snapshot (its `Folders`), answered by this module's layouts: whether the
    weights open as they are, which repository files are the weights to fetch, and an ONNX file's external data."""

    def problem(self, folder: Path, onnx_file: str | None) -> str | None:
        try:
            root, layout, wpath, _ = _locate(folder, onnx_file)
            if wpath.name.endswith(".index.json"):
                _shards(wpath)
            elif layout.format == "onnx":
                onnx_external_files(wpath, root)
        except (ModelNotFound, CorruptFile, UnsafeModel) as e:
            return str(e).replace(f"{folder}: ", "").replace(f"{folder}/", "")
        return None

    def weights(self, folder: Path, names: set[str], onnx_file: str | None, label: str) -> list[str]:
        """Chosen as `_locate` chooses in a folder: safetensors first unless embtool cannot build the architecture
        and there is an ONNX model; --onnx-file; a lone .onnx file."""
        onnx_here = sorted(n for n in names if n.lower().endswith(".onnx")
                           and (n.count("/") == 0 or (n.startswith("onnx/") and n.count("/") == 1)))
        if onnx_file:
            for rel in (onnx_file, f"onnx/{onnx_file}"):
                if rel in onnx_here:
                    return [rel]
            raise ModelNotFound(f"{label}: no ONNX file {onnx_file!r} in the repository (it has: {', '.join(onnx_here) or 'none'})")
        st = next((lay for lay in LAYOUTS if lay.format == "safetensors" and lay.weights in names), None)
        ox = next((lay for lay in LAYOUTS if lay.format == "onnx" and lay.weights in names), None)
        if st is not None and (ox is None or _buildable(folder)[0]):
            if not st.weights.endswith(".index.json"):
                return [st.weights]
            wm = read_json(folder / st.weights).get("weight_map") if (folder / st.weights).is_file() else None
            if not isinstance(wm, dict) or not wm or not all(isinstance(v, str) for v in wm.values()):
                raise CorruptFile(f"{label}: {st.weights} has no usable weight_map")
            return sorted(set(wm.values()))
        if ox is not None:
            return [ox.weights]
        if len(onnx_here) == 1:
            return onnx_here
        if onnx_here:
            raise ModelNotFound(f"{label}: several ONNX files and none is model.onnx ({', '.join(onnx_here)}); choose one "
                                "with --onnx-file NAME")
        pickles = sorted(n for n in names if "/" not in n and any(Path(n).match(p) for p in PICKLE_PATTERNS))
        if pickles:
            raise UnsafeModel(f"{label} has only pickle-based weights ({', '.join(pickles)}); embtool never downloads nor "
                              "loads them because unpickling can run arbitrary code (only its configs were fetched). Use "
                              "a repository with model.safetensors or an ONNX model")
        raise ModelNotFound(f"{label}: the repository holds no model weights embtool reads (looked for "
                            f"{', '.join(lay.weights for lay in LAYOUTS)})")

    def external_data(self, onnx_path: Path) -> set[str]:
        import onnx
        from google.protobuf.message import DecodeError

        try:
            m = onnx.load(str(onnx_path), load_external_data=False)
        except (DecodeError, ValueError, RuntimeError) as e:
            raise CorruptFile(f"{onnx_path}: not a valid ONNX model ({type(e).__name__})") from e
        return {{e.key: e.value for e in t.external_data}.get("location", "") for t in _all_tensors(m.graph)
                if t.data_location == onnx.TensorProto.EXTERNAL}


SNAPSHOTS = SnapshotLayouts()


# ----------------------------------------------------------------------------------------------
# The vocabulary axis
# ----------------------------------------------------------------------------------------------

@dataclass
class VocabTensor:
    name: str
    role: str  # "input embedding", "LM head", "output bias", "factor F", "quantized codes", ...
    shape: tuple[int, ...]
    axis: int
    dtype: str
    nbytes: int


def find_vocab_tensors(model: Model) -> list[VocabTensor]:
    """Every tensor that has a vocabulary axis, with its role. The first is the input embedding: the token table in
    its stored form (`find_token_table`: float, OFA factor F, packed codes), then the other stored parts of the table
    (scales, zero points), then the LM heads and output biases whose axis has the table's row count."""
    if model.format == "onnx":
        return _onnx_vocab_tensors(model)
    ws = model.weights
    assert ws is not None
    table = find_token_table(model.config, ws)
    if table is None:
        return []
    V = ws.info(table.rows).shape[0]
    out: list[VocabTensor] = [_vt(ws, table.rows, table.role, 0)]
    for k in ws.keys():
        if k == table.rows:
            continue
        info = ws.info(k)
        if not info.shape:
            continue
        if k.startswith(table.parts()) and info.shape[0] == V:
            out.append(_vt(ws, k, "input embedding (" + k.rsplit(".", 1)[1] + ")", 0))
        elif len(info.shape) == 2 and info.shape[0] == V and ("decoder" in k or "lm_head" in k or "head" in k):
            out.append(_vt(ws, k, "LM head", 0))
        elif info.shape[-1] == V and len(info.shape) <= 2 and ("bias" in k or "logits" in k):
            out.append(_vt(ws, k, "output bias", len(info.shape) - 1))
    return out


def _vt(ws: WeightStore, k: str, role: str, axis: int) -> VocabTensor:
    i = ws.info(k)
    return VocabTensor(k, role, i.shape, axis, i.dtype, i.nbytes)


def onnx_embedding_gather(graph):
    """(gather node, source initializers) for the Gather that reads `input_ids`, following
    Cast/Mul/DequantizeLinear/MatMul back to the initializers that hold the table."""
    inits = {t.name: t for t in graph.initializer}
    producers = {o: n for n in graph.node for o in n.output}
    consumers: dict[str, list] = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    # input_ids may go through Cast/Unsqueeze first
    frontier = ["input_ids"]
    seen = set()
    gather = None
    while frontier and gather is None:
        x = frontier.pop(0)
        for n in consumers.get(x, []):
            if n.op_type in ("Gather", "GatherBlockQuantized") and len(n.input) >= 2 and n.input[1] == x:
                gather = n
                break
            if n.op_type in ("Cast", "Identity", "Reshape", "Unsqueeze", "Squeeze") and n.output[0] not in seen:
                seen.add(n.output[0])
                frontier.append(n.output[0])
    if gather is None:
        return None, []
    sources = []
    stack = [gather.input[0]] + (list(gather.input[2:]) if gather.op_type == "GatherBlockQuantized" else [])
    visited = set()
    while stack:
        x = stack.pop()
        if x in visited or not x:
            continue
        visited.add(x)
        if x in inits:
            sources.append(inits[x])
        elif x in producers and producers[x].op_type in (
            "Cast", "Mul", "DequantizeLinear", "MatMul", "Identity", "Add", "Sub", "Reshape", "Transpose"
        ):
            stack.extend(producers[x].input)
    return gather, sources


def _onnx_vocab_tensors(model: Model) -> list[VocabTensor]:
    from onnx import helper

    g = model.onnx_model.graph
    gather, sources = onnx_embedding_gather(g)
    if gather is None:
        return []
    out = []
    main = max(sources, key=lambda t: int(np.prod(t.dims)) if t.dims else 0)
    V = main.dims[0]
    done = set()
    for t in sorted(sources, key=lambda t: (t is not main, t.name)):
        role = "input embedding" if t is main else "input embedding (" + ("scale" if "scale" in t.name else "part") + ")"
        out.append(VocabTensor(t.name, role, tuple(t.dims), 0, helper.tensor_dtype_to_np_dtype(t.data_type).name,
                               _tensor_nbytes(t)))
        done.add(t.name)
    for t in g.initializer:
        if t.name in done or not t.dims:
            continue
        dims = tuple(t.dims)
        if len(dims) == 2 and V in dims and (dims[0] == V or dims[1] == V) and max(dims) == V and min(dims) > 2:
            out.append(VocabTensor(t.name, "LM head", dims, dims.index(V),
                                   helper.tensor_dtype_to_np_dtype(t.data_type).name, _tensor_nbytes(t)))
        elif len(dims) == 1 and dims[0] == V:
            out.append(VocabTensor(t.name, "output bias", dims, 0,
                                   helper.tensor_dtype_to_np_dtype(t.data_type).name, _tensor_nbytes(t)))
    return out


def _tensor_nbytes(t) -> int:
    from onnx import helper

    n = int(np.prod(t.dims)) if t.dims else 1
    return n * helper.tensor_dtype_to_np_dtype(t.data_type).itemsize


def onnx_initializer_stats(model: Model) -> tuple[int, int]:
    """(parameter count, bytes) over all initializers of an ONNX model."""
    params = nbytes = 0
    for t in model.onnx_model.graph.initializer:
        n = int(np.prod(t.dims)) if t.dims else 1
        params += n
        nbytes += _tensor_nbytes(t)
    return params, nbytes


def architecture(model: Model) -> str:
    arch = model.config.get("architectures")
    if isinstance(arch, list) and arch:
        return str(arch[0])
    return str(model.config.get("model_type", "unknown"))


_LAYER_RE = re.compile(r"\.(?:layer|layers|h)\.(\d+)\.")


def num_layers(keys: list[str]) -> int:
    ns = {int(m.group(1)) for k in keys for m in [_LAYER_RE.search("." + k)] if m}
    return max(ns) + 1 if ns else 0
