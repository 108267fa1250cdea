"""The search job: load indexes and queries, embed text queries, run the exact blocked top-k."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from embtool.algorithms import search as S
from embtool.core.embeddings_io import Index, expand_index_paths, open_index
from embtool.core.errors import BadUsage, InputError
from embtool.core.texts import iter_texts


@dataclass
class SearchRequest:
    indexes: list[str]
    queries: list[str] = field(default_factory=list)
    query_files: list[str] = field(default_factory=list)
    query_embeddings: str | None = None
    k: int = 10
    metric: str = "cosine"
    model: str | None = None
    tokenizer: str | None = None  # a tokenizer.json for a model without one beside it (default: the index's record)
    query_prefix: str | None = None
    strict: bool = False
    rescore: int | None = None  # None: a depth chosen from the index size (algorithms.search.auto_rescore); 0: off
    block_rows: int = 0  # 0: from the row size (algorithms.search.default_block_rows)
    threads: int = 0
    ray: str | None = None  # score each index file in a Ray task ('local', 'auto' or an address); merged here


@dataclass
class SearchResult:
    hits: list[list[tuple[float, int, str]]]
    query_texts: list[str] | None


def _query_vectors(req: SearchRequest, first: Index, warn: Callable[[str], None]) -> tuple[np.ndarray, list[str] | None]:
    if req.query_embeddings:
        if req.queries or req.query_files:
            raise InputError("give queries either as text or with --query-embeddings, not both")
        qi = open_index(req.query_embeddings)
        return qi.block(0, len(qi)), None
    texts = list(iter_texts(req.queries, req.query_files, skip_empty=True))
    if not texts:
        raise InputError("no queries (the query input is empty)")
    from embtool.core.model import open_model
    from embtool.runtime.encoder import EmbedSettings, Encoder

    meta = first.meta
    model_path = req.model or meta.get("model")
    if not model_path:
        raise InputError(f"{first.path} does not record its model; give --model to embed text queries")
    if not Path(model_path).exists():
        raise InputError(f"the index's model {model_path} is not there; give --model")
    m = open_model(model_path, need_tokenizer=True, tokenizer=req.tokenizer or (None if req.model else meta.get("tokenizer") or None))
    if req.model or req.tokenizer:
        msg = None
        if meta.get("model_fingerprint") and m.fingerprint() != meta["model_fingerprint"]:
            msg = f"--model {req.model} is not the model the index was made with ({meta.get('model')})"
        elif meta.get("tokenizer_fingerprint") and m.tokenizer_fingerprint() != meta["tokenizer_fingerprint"]:
            msg = (f"the tokenizer of {req.model or meta.get('model')} is not the one the index was made with "
                   "(same weights, another tokenizer.json)")
        if msg and req.strict:
            raise InputError(msg)
        if msg:
            warn(msg + "; scores may be meaningless")
    dim = int(meta["dim"]) if meta.get("dim") else None
    settings = EmbedSettings(pooling=meta.get("pooling", "auto"),
                             normalize={"true": True, "false": False}.get(meta.get("normalize", ""), None),
                             prefix=_query_prefix(req, m, meta),
                             max_length=int(meta["max_length"]) if meta.get("max_length") else None, threads=req.threads)
    enc = Encoder(m, settings)
    v = enc.embed(texts)
    if dim is not None and dim < v.shape[1]:
        v = v[:, :dim]
        if enc.normalize:
            v = v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
    return v, texts


def _query_prefix(req: SearchRequest, model, meta: dict) -> str:
    """--query-prefix, else the model's query prompt (sentence-transformers' `encode_query`), else the
    prefix the index was embedded with."""
    if req.query_prefix is not None:
        return req.query_prefix
    q = model.st.query_prompt()
    if q is not None:
        return q
    return meta.get("prefix", "")


def run_search(req: SearchRequest, warn: Callable[[str], None] = lambda m: None, score_files: Callable | None = None) -> SearchResult:
    """Exact top-k over every index file, merged. `score_files(paths, queries, req, threads)` scores the files
    elsewhere (embtool.ray.search_files on Ray, for `ray=`) and returns what `search_file` returns per file."""
    paths = expand_index_paths(req.indexes)
    idxs = [open_index(p) for p in paths]
    for ix in idxs:
        if len(ix) == 0:
            raise InputError(f"{ix.path}: the index is empty")
    dims = {ix.dim for ix in idxs}
    if len(dims) > 1:
        raise InputError(f"the index files have different dimensions: {sorted(dims)}")
    total = sum(len(ix) for ix in idxs)
    if req.k > total:
        warn(f"-k {req.k} is larger than the index ({total} rows); returning {total} per query")
    q, texts = _query_vectors(req, idxs[0], warn)
    if q.shape[1] != idxs[0].dim:
        raise InputError(f"query vectors have {q.shape[1]} dimensions but the index has {idxs[0].dim}")
    results = []
    offset = 0
    threads = req.threads if req.threads > 0 else min(4, os.cpu_count() or 1)
    if req.ray is not None:
        if score_files is None:
            raise BadUsage("ray= needs the Ray scorer: call embtool.search (the API), which provides it")
        parts = score_files(paths, q, req, threads)
    else:
        parts = [_search_one(q, ix, req, threads, warn) for ix in idxs]
    for ix, (s, i) in zip(idxs, parts):
        gid = ix.ids[i] if ix.ids is not None else i + offset
        results.append((s, np.asarray(gid, dtype=np.int64), ix, i))
        offset += len(ix)
    # merge shards
    k = min(req.k, total)
    merged_s, merged_g = S.merge([(r[0], r[1]) for r in results], k, req.metric)
    # map global id -> (index, local row) for the text
    lookup = {}
    for s, g, ix, loc in results:
        for row_g, row_l in zip(g.reshape(-1), loc.reshape(-1)):
            lookup[int(row_g)] = (ix, int(row_l))
    hits = []
    for qi in range(q.shape[0]):
        row = []
        for sc, g in zip(merged_s[qi], merged_g[qi]):
            ix, loc = lookup[int(g)]
            row.append((float(sc), int(g), ix.text(loc)))
        hits.append(row)
    return SearchResult(hits, texts)


def rescore_depth(ix: Index, req: SearchRequest, warn: Callable[[str], None]) -> int:
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


def _search_one(q: np.ndarray, ix: Index, req: SearchRequest, threads: int, warn: Callable[[str], None]):
    """(scores, local row numbers) of the top-k of one index file, rescored when it can be."""
    n = len(ix)
    k = min(req.k, n)
    depth = rescore_depth(ix, req, warn)
    s, i = S.topk_codes(q, ix.emb, max(k, depth), req.metric, ix.precision, scales=ix.scales, dim=ix.dim,
                        unit_rows=ix.unit_rows, query_bits=ix.query_bits(q) if ix.precision == "binary" else None,
                        block_rows=req.block_rows, threads=threads, after_block=ix.release, before_block=ix.prefetch,
                        mean=ix.int8_mean if ix.precision == "int8" else None,
                        sqnorms=ix.int8_sqnorms if ix.precision == "int8" else None,
                        sign_product=_sign_product(threads) if ix.precision == "binary" else None,
                        int8_product=_int8_product(threads) if ix.precision == "int8" else None)
    if depth:
        s, i = S.rescore(q, i, ix.rescore_rows, req.metric, k, unit_rows=ix.unit_rows)
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
