"""The search job: open the index files (validated by their owner, core/formats/index.py), embed text queries the way
the index records, run the exact blocked top-k of each file and merge.

A hit is addressed by its file and row, never by its id: ids are reported as the files store them, and ids that name
more than one row (two indexes embedded apart both hold ids 0..N-1) are a warning, or with `strict` an error."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np

from embtool.algorithms import search as S
from embtool.core.embeddings_io import expand_index_paths
from embtool.core.errors import BadUsage, CorruptFile, InputError
from embtool.core.formats.index import StoredIndex, open_index
from embtool.core.texts import iter_texts

ID_CHECK_ROWS = 1 << 20  # ids compared at a time when checking that they increase


@dataclass
class SearchRequest:
    """What `embtool search` / `embtool.search` is asked: the index files, the queries (one kind of them), and how
    to score. `check()` holds every rule on these values."""

    indexes: list[str]
    queries: list[str] = field(default_factory=list)  # query texts
    query_files: list[str] = field(default_factory=list)  # files of query texts, one per line ("-": stdin)
    query_embeddings: str | None = None  # queries as vectors: an embeddings file (.npy, index)
    query_vectors: np.ndarray | None = None  # queries as vectors in memory, [q, dim] (or [dim]: one query)
    k: int = 10
    metric: str = "cosine"
    model: str | None = None
    tokenizer: str | None = None  # a tokenizer.json for a model without one beside it (default: the index's record)
    cache_dir: str | None = None  # the Hub cache, for a model (--model, or the index's record) that is a Hub id
    query_prefix: str | None = None
    strict: bool = False  # refuse, not warn: another model than the index's, files embedded apart, repeated ids
    rescore: int | None = None  # None: a depth chosen from the index size (algorithms.search.auto_rescore); 0: off
    block_rows: int = 0  # 0: from the row size (algorithms.search.default_block_rows)
    threads: int = 0
    ray: str | None = None  # score each index file in a Ray task ('local', 'auto' or an address); merged here

    def check(self) -> None:
        """Every rule on the request's values: TypeError for a value of the wrong type, BadUsage (exit 2) for one
        out of range or a contradiction."""
        if isinstance(self.indexes, (str, os.PathLike)) or not self.indexes:
            raise BadUsage("no index files to search")
        for name, least in (("k", 1), ("block_rows", 0), ("threads", 0), ("rescore", 0)):
            v = getattr(self, name)
            if v is None and name == "rescore":
                continue
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool):
                raise TypeError(f"search: {name} must be an integer, not {type(v).__name__}")
            if v < least:
                raise BadUsage(f"search: {name} must be at least {least} (got {v})")
        if self.metric not in S.METRICS:
            raise BadUsage(f"search: unknown metric {self.metric!r} ({', '.join(S.METRICS)})")
        if isinstance(self.queries, str) or not all(isinstance(t, str) for t in self.queries):
            raise TypeError("search: queries are strings (texts) or a numpy array of vectors")
        if self.query_vectors is not None and not isinstance(self.query_vectors, np.ndarray):
            raise TypeError(f"search: query vectors must be a numpy array, not {type(self.query_vectors).__name__}")
        kinds = [bool(self.queries or self.query_files), self.query_embeddings is not None, self.query_vectors is not None]
        if sum(kinds) > 1:
            raise BadUsage("give queries one way: as texts (or files of texts), with --query-embeddings, or as vectors")


class Hit(tuple):
    """(score, id, text) of one hit, and where it lives: `file` (the index file) and `row` (its row there), which
    tell apart rows whose ids repeat."""

    file: str
    row: int

    def __new__(cls, score: float, id: int, text: str, file: str, row: int) -> "Hit":
        self = super().__new__(cls, (score, id, text))
        self.file, self.row = file, row
        return self

    def __getnewargs__(self):  # pickling (multiprocessing, Ray) rebuilds the whole hit
        return (*self, self.file, self.row)

    @property
    def score(self) -> float:
        return self[0]

    @property
    def id(self) -> int:
        return self[1]

    @property
    def text(self) -> str:
        return self[2]


@dataclass
class SearchResult:
    hits: list[list[Hit]]
    query_texts: list[str] | None


def _query_vectors(req: SearchRequest, idxs: list[StoredIndex], warn: Callable[[str], None]) -> tuple[np.ndarray, list[str] | None]:
    if req.query_vectors is not None:
        q = req.query_vectors
        return _finite_queries(q[None, :] if q.ndim == 1 else q, "the query vectors"), None
    if req.query_embeddings:
        qi = open_index(req.query_embeddings)
        return _finite_queries(qi.block(0, len(qi)), req.query_embeddings), None  # block() refuses NaN rows
    texts = list(iter_texts(req.queries, req.query_files, skip_empty=True))
    if not texts:
        raise InputError("no queries (the query input is empty)")
    from embtool.core.hub import is_id
    from embtool.core.model import open_model
    from embtool.runtime.encoder import EmbedSettings, Encoder

    first = idxs[0]
    _same_making(idxs, req.strict, warn)
    src = first.record.source
    model_path = req.model or src.model
    if not model_path:
        raise InputError(f"{first.path} does not record its model; give --model to embed text queries")
    if not Path(model_path).exists() and not is_id(model_path):
        raise InputError(f"the index's model {model_path} is not there; give --model")
    m = open_model(model_path, need_tokenizer=True, tokenizer=req.tokenizer or (None if req.model else src.tokenizer),
                   onnx_file=None if req.model else src.onnx_file, cache_dir=req.cache_dir)
    msg = None
    if src.model_fingerprint and m.fingerprint() != src.model_fingerprint:
        msg = (f"--model {req.model} is not the model the index was made with ({src.model})" if req.model else
               f"the model {src.model} is not the one the index was made with (its weights changed since)")
    elif src.tokenizer_fingerprint and m.tokenizer_fingerprint() != src.tokenizer_fingerprint:
        msg = (f"the tokenizer of {req.model or src.model} is not the one the index was made with "
               "(same weights, another tokenizer.json)")
    if msg and req.strict:
        raise InputError(msg)
    if msg:
        warn(msg + "; scores may be meaningless")
    rec = src.encoder
    if src.model and not rec.recorded:  # an older index (e.g. `embed --ray` shards of earlier releases)
        warn(f"{first.path} does not record how its texts were embedded (pooling, normalize, prefix, max length); "
             "queries are embedded with the model's defaults")
    # normalize as recorded; None when that is the model's own default, so that a Normalize module of its
    # sentence-transformers pipeline runs where the documents' did
    normalize = None if rec.normalize is None or rec.normalize == bool(m.st.normalize) else rec.normalize
    enc = Encoder(m, EmbedSettings(pooling=rec.pooling or "auto", normalize=normalize, prefix=_query_prefix(req, m, rec.prefix),
                                   max_length=rec.max_length, output_name=rec.output_name, threads=req.threads))
    v = enc.embed(texts)
    if first.dim < v.shape[1]:  # embedded with --dim: the first dims, normalised again (what Encoder(dim=) does)
        v = v[:, :first.dim]
        if enc.normalize:
            v = v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
    return v, texts


def _same_making(idxs: list[StoredIndex], strict: bool, warn: Callable[[str], None]) -> None:
    """Text queries are embedded one way, the first file's: say so when the files were embedded differently."""
    def making(ix: StoredIndex):
        s = ix.record.source
        return (s.model_fingerprint, s.tokenizer_fingerprint, s.encoder)

    first = making(idxs[0])
    for ix in idxs[1:]:
        if making(ix) != first:
            msg = (f"{ix.path} was not embedded like {idxs[0].path} (model or settings differ); text queries are "
                   f"embedded as {idxs[0].path} records")
            if strict:
                raise InputError(msg)
            warn(msg + ", so scores of the other file may be meaningless")
            return


def _query_prefix(req: SearchRequest, model, recorded: str | None) -> str:
    """--query-prefix, else the model's query prompt (sentence-transformers' `encode_query`), else the
    prefix the index was embedded with."""
    if req.query_prefix is not None:
        return req.query_prefix
    q = model.st.query_prompt()
    if q is not None:
        return q
    return recorded or ""


def _finite_queries(q: np.ndarray, where: str) -> np.ndarray:
    """Query vectors as float32 [Q, D], refusing any that is not made of finite numbers."""
    if q.ndim != 2 or q.dtype.kind not in "fiu" or q.dtype.itemsize > 8:
        raise InputError(f"{where}: queries must be a 2-D array of numbers, not {q.dtype} of shape {list(q.shape)}")
    if q.shape[0] == 0:
        raise InputError(f"{where}: no query vectors")
    q = np.asarray(q, dtype=np.float32)
    bad = ~np.isfinite(q).all(1)
    if bad.any():
        raise InputError(f"{where}: query {int(np.flatnonzero(bad)[0])} holds a value that is not a finite number")
    return q


def _repeated_ids(idxs: list[StoredIndex], starts: np.ndarray, increasing: list[bool]) -> str | None:
    """None when every id names one row; else what repeats. Cheap when each file's ids increase (`increasing`) and
    the files' id ranges do not overlap (what embed writes, --shard and --ray included); else every id is compared."""
    if all(increasing):
        spans = sorted((int(start), int(start) + len(ix) - 1) if ix.ids is None else (int(ix.ids[0]), int(ix.ids[-1]))
                       for ix, start in zip(idxs, starts))
        if all(a[1] < b[0] for a, b in zip(spans, spans[1:])):
            return None
    ids = np.concatenate([_ids_of(ix, start) for ix, start in zip(idxs, starts)])
    uniq, counts = np.unique(ids, return_counts=True)
    rep = uniq[counts > 1]
    if not rep.size:
        return None
    x = int(rep[0])
    where = [str(ix.path) for ix, start in zip(idxs, starts) if (_ids_of(ix, start) == x).any()]
    return (f"ids repeat: {rep.size} id(s) name more than one row (id {x}: {int(counts[counts > 1][0])} rows, in "
            f"{', '.join(where)})")


def _ids_of(ix: StoredIndex, start: int) -> np.ndarray:
    """Each row's id: the stored ids, else the row's position in the files searched."""
    return np.asarray(ix.ids, dtype=np.int64) if ix.ids is not None else np.arange(start, start + len(ix), dtype=np.int64)


def _increasing(ids: np.ndarray) -> bool:
    prev = None
    for r0 in range(0, ids.shape[0], ID_CHECK_ROWS):
        part = np.asarray(ids[r0:r0 + ID_CHECK_ROWS], dtype=np.int64)
        if (part[1:] <= part[:-1]).any() or (prev is not None and part[0] <= prev):
            return False
        prev = part[-1]
    return True


def run_search(req: SearchRequest, warn: Callable[[str], None] = lambda m: None, score_files: Callable | None = None) -> SearchResult:
    """Exact top-k over every index file, merged. `score_files(paths, queries, req, threads)` scores the files
    elsewhere (embtool.ray.search_files on Ray, for `ray=`) and returns what `search_file` returns per file."""
    req.check()
    paths = expand_index_paths([os.fspath(p) for p in req.indexes])
    idxs = [open_index(p) for p in paths]
    for ix in idxs:
        if len(ix) == 0:
            raise InputError(f"{ix.path}: the index is empty")
    dims = {ix.dim for ix in idxs}
    if len(dims) > 1:
        raise InputError(f"the index files have different dimensions: {sorted(dims)}")
    starts = np.cumsum([0] + [len(ix) for ix in idxs])
    total = int(starts[-1])
    increasing = [ix.ids is None or _increasing(ix.ids) for ix in idxs]
    repeated = _repeated_ids(idxs, starts[:-1], increasing)
    if repeated and req.strict:
        raise InputError(repeated + " (--strict)")
    if repeated:
        warn(repeated + "; hits are told apart by file and row (--json shows both), ids are shown as stored")
    if req.k > total:
        warn(f"-k {req.k} is larger than the index ({total} rows); returning {total} per query")
    q, texts = _query_vectors(req, idxs, warn)
    if q.shape[1] != idxs[0].dim:
        raise InputError(f"query vectors have {q.shape[1]} dimensions but the index has {idxs[0].dim}")
    threads = req.threads if req.threads > 0 else min(4, os.cpu_count() or 1)
    if req.ray is not None:
        if score_files is None:
            raise BadUsage("ray= needs the Ray scorer: call embtool.search (the API), which provides it")
        parts = score_files(paths, q, replace(req, query_vectors=None), threads)
    else:
        parts = [_search_one(q, ix, req, threads, warn) for ix in idxs]
    # merged by score; ties to the smaller id, then the earlier position in the files searched (file order, then
    # row). A file cuts its own ties by row, so when a file's ids do not increase with its rows, ties go by position
    # alone (the same rule everywhere). A position names one row: a hit's id and text are always its row's
    k = min(req.k, total)
    per_file = []
    for (s, i), ix, start in zip(parts, idxs, starts):
        rows = np.asarray(i, dtype=np.int64)
        ids = np.asarray(ix.ids[rows], dtype=np.int64) if ix.ids is not None else rows + start
        per_file.append((s, ids if all(increasing) else rows + start, rows + start))
    scores, _, pos = S.merge(per_file, k, req.metric)
    hits = []
    for qs, qp in zip(scores, pos):
        f = np.searchsorted(starts, qp, side="right") - 1
        row = []
        for sc, fi, p in zip(qs, f, qp):
            ix, r = idxs[fi], int(p - starts[fi])
            row.append(Hit(float(sc), int(ix.ids[r]) if ix.ids is not None else int(p), ix.text(r), str(ix.path), r))
        hits.append(row)
    return SearchResult(hits, texts)


def rescore_depth(ix: StoredIndex, req: SearchRequest, warn: Callable[[str], None]) -> int:
    """How many candidates of an int8/binary scan to rescore (0: none): --rescore N, else a depth chosen from the
    index size; says so when the index stores nothing to rescore with, instead of skipping silently."""
    if ix.precision not in ("int8", "binary") or req.rescore == 0:
        return 0
    n = len(ix)
    if ix.rescore_source is None:
        if req.rescore is not None or ix.precision == "binary":
            keep = "--keep-float or --keep-int8" if ix.precision == "binary" else "--keep-float"
            warn(f"{ix.path.name}: no rescoring, the {ix.precision} index stores no vectors to rescore with "
                 f"(embed with {keep}); results are the {ix.precision} scan's")
        return 0
    depth = req.rescore if req.rescore is not None else S.auto_rescore(n, req.k, ix.precision)
    return min(n, max(depth, req.k))


def _search_one(q: np.ndarray, ix: StoredIndex, req: SearchRequest, threads: int, warn: Callable[[str], None]):
    """(scores, local row numbers) of the top-k of one index file, rescored when it can be. Refuses a row that
    scores NaN or infinity, and hits whose values break a claim the scan trusted (StoredIndex.check_hits)."""
    n = len(ix)
    k = min(req.k, n)
    depth = rescore_depth(ix, req, warn)
    try:
        with np.errstate(over="ignore", invalid="ignore"):  # an overflow scores inf or NaN: refused below, not warned
            s, i = S.topk_codes(q, ix.emb, max(k, depth), req.metric, ix.precision, scales=ix.scales, dim=ix.dim,
                                unit_rows=ix.unit_rows, query_bits=ix.query_bits(q) if ix.precision == "binary" else None,
                                block_rows=req.block_rows, threads=threads, after_block=ix.release, before_block=ix.prefetch,
                                mean=ix.int8_mean if ix.precision == "int8" else None,
                                sqnorms=ix.int8_sqnorms if ix.precision == "int8" else None,
                                sign_product=_sign_product(threads) if ix.precision == "binary" else None,
                                int8_product=_int8_product(threads) if ix.precision == "int8" else None)
            if depth:
                s, i = S.rescore(q, i, ix.rescore_rows, req.metric, k, unit_rows=ix.rescore_unit_rows)
    except S.NonFiniteScore as e:
        raise CorruptFile(f"{ix.path}: row {e.row} scores {e.value} (a value of the row, its scale or its norm is not a "
                          "finite number)") from None
    ix.check_hits(i, req.metric, rescored=bool(depth))
    return s, i


def _sign_product(threads: int) -> Callable[[np.ndarray], Callable[[np.ndarray], np.ndarray]]:
    """The runtime's Hamming kernel (one integer matrix product per block of a binary scan)."""
    from embtool.runtime.kernels import SignProduct

    return lambda q01: SignProduct(q01, threads)


def _int8_product(threads: int) -> Callable[..., Callable[..., np.ndarray]]:
    """The runtime's int8 kernel (the codes scored by one integer matrix product, never widened to float32)."""
    from embtool.runtime.kernels import QUERY_PARTS, Int8Product

    return lambda q, qm, n_parts=QUERY_PARTS: Int8Product(q, qm, threads, n_parts)


def search_file(path: str, q: np.ndarray, req: SearchRequest, threads: int) -> tuple[np.ndarray, np.ndarray]:
    """(scores, local row numbers) of one index file: what a Ray task runs next to the file."""
    return _search_one(q, open_index(path), req, threads, lambda m: None)
