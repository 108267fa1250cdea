"""Exact top-k nearest neighbours over float, int8 and binary rows, block by block.

Scores: cosine (queries and rows normalised), dot, l2 (reported as the squared distance, smaller is
better). Ties are broken by the smaller id, so results are deterministic and equal a brute-force
reference. Rows come as arrays that may be memory-mapped (only one block is read at a time), so the
index can be larger than RAM.

Each precision is scored in its own form, never turned back into a float32 copy of the index:
- float32/float16: one matrix product per block (float16 blocks are widened per cache-sized tile);
- int8: int8 -> float32 tiles that stay in cache, the per-row scales applied to the scores;
- binary: Hamming distances on the packed bits, XOR + popcount on uint64 words, integer scores.
The top-k is a running buffer: after the first block, a row of the next block is a candidate only when it
beats the current k-th score, so the candidate set is never re-sorted.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import numpy as np

from embtool.algorithms.pooling import from_precision

METRICS = ("cosine", "dot", "l2")
# int8 and float16 rows are widened to float32 in tiles of this size: within the shared L3 (32 MB here) and
# large enough that a 2-thread BLAS product gains from its threads (1 MB L2-sized tiles measured 2-5x slower
# with 2 BLAS threads on 100 queries, as fast with 1 thread)
CACHE_BYTES = 16 << 20
FLOAT_BLOCK_BYTES = 16 << 20  # rows read per float block: big enough for BLAS, small enough to stay bounded
SCORE_BYTES = 32 << 20  # the binary scan's [queries, rows] distance block
HAMMING_TILE_BYTES = 1 << 20  # the [queries, rows] uint64 XOR tile of the binary scan stays in L2
HAMMING_FEW_QUERIES = 2  # up to this many queries, rows are scored in their own layout, a query at a time


# from this many queries on, a binary scan is one integer matrix product per block (SignProduct) instead of
# XOR + popcount per query and word
PRODUCT_MIN_QUERIES = 8
# up to this many queries an int8 scan is one integer matrix product per block against the queries' three 7-bit
# parts (Int8Product; 1, 8 and 24 queries on 1M x 384 measured 40%, 30% and 14% faster than widening tiles to
# float32); beyond, the float epilogue over [rows, parts x queries] makes three parts no faster (48 queries: even;
# 100: slower), and the scan takes one part per query: approximate scores, whose best APPROX_DEPTH(k) candidates
# per query are rescored with the decoded rows
PRODUCT_MAX_INT8_QUERIES = 24


class NonFiniteScore(ValueError):
    """A row scored NaN or infinity: a value of the row (or its scale, mean or norm) is not a finite number. Scores
    are checked block by block, so no ranking is ever built on them."""

    def __init__(self, row: int, value: float):
        super().__init__(f"row {row} scores {value}")
        self.row, self.value = row, value


def _check_finite(s: np.ndarray, ids: np.ndarray | int) -> None:
    """Raise NonFiniteScore for the first non-finite score of s [Q, B]; ids: the rows' ids [B] (or the first id)."""
    if s.dtype.kind != "f" or np.isfinite(s).all():
        return
    col = int(np.flatnonzero(~np.isfinite(s).all(0))[0])
    row = int(ids[col]) if isinstance(ids, np.ndarray) else ids + col
    raise NonFiniteScore(row, float(s[~np.isfinite(s[:, col]), col][0]))


def approx_depth(k: int) -> int:
    """Candidates per query of a one-part int8 scan rescored exactly: the one-part scores are within about 2^-6
    of each query's largest value per term, far less than the score gap between rank k and rank 4k on real
    embeddings."""
    return max(4 * k, 40)


def prepare_queries(q: np.ndarray, metric: str) -> np.ndarray:
    q = np.asarray(q, dtype=np.float32)
    if metric == "cosine":
        q = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
    return q


_prepare_queries = prepare_queries  # older name


def block_scores(q: np.ndarray, block: np.ndarray, metric: str, unit_rows: bool = False) -> np.ndarray:
    """Similarity (higher is better) of prepared queries q [Q, D] to float rows block [B, D]; l2 gives
    -||q - x||^2. `unit_rows`: the rows are known to be unit vectors (no norms computed)."""
    block = np.asarray(block, dtype=np.float32)
    # [rows, D] @ [D, Q], returned as its [Q, rows] transpose: measured 0.71 s against 0.80 s for q @ block.T on
    # 1M x 384 rows and 100 queries (OpenBLAS, 2 threads)
    s = (block @ q.T).T
    if metric == "cosine" and not unit_rows:
        norms = np.linalg.norm(block, axis=1)
        s /= np.maximum(norms, 1e-12)[None, :]
        s[:, ~np.isfinite(norms)] = np.nan  # a norm that overflows would score 0: a row of such values is refused
    elif metric == "l2":
        sq = 1.0 if unit_rows else np.einsum("ij,ij->i", block, block)[None, :]
        s = 2 * s - sq - (q * q).sum(1)[:, None]
    return s


def int8_scores(q: np.ndarray, codes: np.ndarray, scales: np.ndarray, metric: str, unit_rows: bool = False,
                mean: np.ndarray | None = None, sqnorms: np.ndarray | None = None) -> np.ndarray:
    """block_scores of the dequantized rows mean + codes * scales[:, None] (mean None: 0, the plain codes of older
    indexes), without a float32 copy of the block: int8 -> float32 tiles of about CACHE_BYTES, one product each;
    the scales multiply the scores.

    The mean costs no pass over the scores: each tile carries one more column, 1 / scale, against q . mean, so the
    product gives q . c + q . mean / scale and the scaling makes it q . (mean + c * scale). Cosine and l2 need the
    decoded rows' norms, |mean + c s|^2 = |mean|^2 + 2 s mean . c + s^2 |c|^2: mean . c is one more query row of
    the same product (a separate matrix-vector product per tile measured 9% of the product's time). `sqnorms`
    (the index's stored |mean + c s|^2 of each row, with a mean) spares both: for one query the extra row doubled
    the product."""
    Q, B, D = q.shape[0], codes.shape[0], codes.shape[1]
    sc = np.asarray(scales, dtype=np.float32)
    stored = sqnorms is not None and mean is not None and not unit_rows and metric != "dot"
    norms = None if unit_rows or metric == "dot" or stored else np.empty(B, dtype=np.float32)
    tile = max(64, CACHE_BYTES // (4 * max(1, D + (mean is not None))))
    qa = q
    if mean is not None:
        mu = np.asarray(mean, dtype=np.float32)
        qa = np.concatenate([q, (q @ mu)[:, None]], 1)  # [Q, D + 1]
        if norms is not None:
            qa = np.concatenate([qa, np.append(mu, np.float32(0))[None, :]])  # row Q: mean . c
        zero = sc == 0  # such rows decode to the mean itself (embtool writes no zero scales)
        inv = np.divide(np.float32(1), sc, out=np.zeros_like(sc), where=~zero)
        buf = np.empty((min(tile, B), D + 1), dtype=np.float32)  # one tile buffer for the block
    s_all = np.empty((qa.shape[0], B), dtype=np.float32)
    s = s_all[:Q]
    for t0 in range(0, B, tile):
        t1 = min(B, t0 + tile)
        if mean is None:
            f = c = np.asarray(codes[t0:t1], dtype=np.float32)
        else:
            f = buf[: t1 - t0]
            c = f[:, :D]
            c[...] = codes[t0:t1]
            f[:, D] = inv[t0:t1]
        s_all[:, t0:t1] = qa @ f.T
        if norms is not None:
            norms[t0:t1] = np.einsum("ij,ij->i", c, c)
    sq = np.asarray(sqnorms, dtype=np.float32) if stored else None  # the decoded rows' squared norms
    if norms is not None:
        if mean is None:
            sq = norms * sc * sc
        else:
            sc64, mc = sc.astype(np.float64), s_all[Q].astype(np.float64)
            sq = (float(mu.astype(np.float64) @ mu) + 2 * sc64 * mc + sc64 * sc64 * norms).astype(np.float32)
    if metric == "cosine":
        if norms is None and not stored:
            s *= sc[None, :]
        elif mean is None:
            # cos(q, c * scale) = q.c / |c|: the scale cancels
            s /= np.maximum(np.sqrt(norms), 1e-12)[None, :]
        else:
            s *= (sc / np.maximum(np.sqrt(np.maximum(sq, 0)), 1e-12))[None, :]
    elif metric == "dot":
        s *= sc[None, :]
    else:
        s *= sc[None, :]
        s *= 2
        s -= 1.0 if unit_rows else sq[None, :]
        s -= (q * q).sum(1)[:, None]
    if mean is not None and zero.any():
        s[:, zero] = block_scores(q, mu[None, :], metric, unit_rows)
    return s


# ---------------------------------------------------------------------------------------------
# binary: Hamming distance on packed sign bits

if hasattr(np, "bitwise_count"):  # numpy >= 2
    def _popcount(x: np.ndarray, out: np.ndarray) -> np.ndarray:
        return np.bitwise_count(x, out=out)
else:  # pragma: no cover - numpy < 2: count the bytes of each word with a table
    _BYTE_COUNTS = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)

    def _popcount(x: np.ndarray, out: np.ndarray) -> np.ndarray:
        c = _BYTE_COUNTS[x.view(np.uint8)].reshape(*x.shape, 8)
        return c.sum(-1, dtype=np.uint8, out=out)


def as_words(bits: np.ndarray) -> np.ndarray:
    """Packed bits [N, nbytes] uint8 -> [N, ceil(nbytes/8)] uint64 (zero-padded; zeros add no distance)."""
    bits = np.asarray(bits, dtype=np.uint8)
    n, nb = bits.shape
    if nb % 8 == 0 and bits.flags.c_contiguous:
        return bits.view(np.uint64)
    w = np.zeros((n, -(-nb // 8) * 8), dtype=np.uint8)
    w[:, :nb] = bits
    return w.view(np.uint64)


def _hamming_rows(qw: np.ndarray, rows: np.ndarray, out: np.ndarray) -> None:
    """out [Q, b] uint16 = Hamming distances of a few query words qw [Q, W] to rows [b, W] in their own layout (no
    transposed copy: for one query over 1M x 384 bits, 22 ms against 32 ms through _hamming_tile)."""
    for i in range(qw.shape[0]):
        c = _popcount(np.bitwise_xor(rows, qw[i]), np.empty(rows.shape, dtype=np.uint8))
        acc = out[i]
        np.copyto(acc, c[:, 0])
        for w in range(1, c.shape[1]):
            np.add(acc, c[:, w], out=acc)


def _hamming_tile(qw: np.ndarray, rows_t: np.ndarray, out: np.ndarray) -> None:
    """out [Q, b] uint16 = Hamming distances of query words qw [Q, W] to rows given word-major rows_t [W, b]."""
    Q, b = out.shape
    tmp = np.empty((Q, b), dtype=np.uint64)
    cnt = np.empty((Q, b), dtype=np.uint8)
    for w in range(qw.shape[1]):
        np.bitwise_xor(qw[:, w, None], rows_t[w][None, :], out=tmp)
        _popcount(tmp, cnt)
        if w == 0:
            np.copyto(out, cnt)
        else:
            np.add(out, cnt, out=out)


def hamming(q_bits: np.ndarray, bits: np.ndarray, threads: int = 1) -> np.ndarray:
    """Hamming distances [Q, B] (uint16) between packed query bits [Q, nbytes] and packed rows [B, nbytes].
    Work is cut into cache-sized tiles of rows; with threads > 1 tiles run in parallel (numpy releases the
    GIL inside its loops)."""
    qw = as_words(q_bits)
    rw = as_words(bits)
    Q, B, W = qw.shape[0], rw.shape[0], qw.shape[1]
    out = np.empty((Q, B), dtype=np.uint16)
    few = Q <= HAMMING_FEW_QUERIES
    tile = 65536 if few else max(256, min(4096, HAMMING_TILE_BYTES // max(1, Q * 8)))
    starts = list(range(0, B, tile))

    def one(t0: int) -> None:
        t1 = min(B, t0 + tile)
        part = np.empty((Q, t1 - t0), dtype=np.uint16)
        if few:
            _hamming_rows(qw, rw[t0:t1], part)
        else:
            _hamming_tile(qw, np.ascontiguousarray(rw[t0:t1].T), part)
        out[:, t0:t1] = part

    if threads > 1 and len(starts) > 1:
        with ThreadPoolExecutor(max_workers=threads) as ex:
            list(ex.map(one, starts))
    else:
        for t0 in starts:
            one(t0)
    return out


def binarize(x: np.ndarray, mean: np.ndarray | None = None, rotation: np.ndarray | None = None) -> np.ndarray:
    """Sign bits of (x - mean) @ rotation, packed 8 per byte (bit set = positive). Without mean and rotation
    this is the plain sign code of older indexes."""
    x = np.asarray(x, dtype=np.float32)
    if mean is not None:
        x = x - np.asarray(mean, dtype=np.float32)[None, :]
    if rotation is not None:
        x = x @ np.asarray(rotation, dtype=np.float32)
    return np.packbits(x > 0, axis=1)


def fit_rotation(sample: np.ndarray, mean: np.ndarray, iterations: int = 20, seed: int = 0) -> np.ndarray:
    """An orthogonal D×D rotation that makes sign bits lose less (ITQ, Gong & Lazebnik 2011): start from a
    seeded random rotation, then alternate B = sign(VR) and R = the orthogonal Procrustes solution of
    min ||B - VR||. `sample` [n, D] are rows of the corpus (centred here by `mean`)."""
    v = np.asarray(sample, dtype=np.float64) - np.asarray(mean, dtype=np.float64)[None, :]
    d = v.shape[1]
    rng = np.random.default_rng(seed)
    r, _ = np.linalg.qr(rng.standard_normal((d, d)))
    for _ in range(iterations):
        b = np.where(v @ r >= 0, 1.0, -1.0)
        u, _, wt = np.linalg.svd(v.T @ b)
        r = u @ wt
    return r.astype(np.float32)


def auto_rescore(n_rows: int, k: int, precision: str) -> int:
    """Default rescoring depth: how many candidates of an int8 or binary scan are rescored with better
    vectors. Binary codes need a depth that grows with the index: k * sqrt(N) (at least 10 k, at most 20,000;
    on 6,000 real e5-small paragraphs, 775 candidates for k = 10 give recall@10 0.97 against the float index,
    300 give 0.90); int8 needs only a few times k."""
    if precision == "binary":
        depth = int(np.ceil(k * np.sqrt(max(1, n_rows))))
        return min(n_rows, max(10 * k, min(depth, 20000)))
    return min(n_rows, max(4 * k, 40))


# ---------------------------------------------------------------------------------------------
# the running top-k

def _select(scores: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the k best (score desc, id asc) among candidates."""
    scores, ids, _ = _best_unsorted(scores, ids, k)
    o = np.lexsort((ids, -scores), axis=1)[:, :k]
    return np.take_along_axis(scores, o, 1), np.take_along_axis(ids, o, 1)


def _best_unsorted(scores: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row, the candidates scoring at least its k-th best score, in no order (every tie at the k-th score kept,
    so the row may keep more than k; narrower rows padded with -inf), and that k-th score (-inf with fewer than k)."""
    Q, C = scores.shape
    if C < k:
        return scores, ids, np.full(Q, -np.inf)
    if C == k:
        return scores, ids, scores.min(1).astype(np.float64)
    # argpartition may cut inside a run of equal scores; widen to keep every tie at the boundary
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    kth = np.take_along_axis(scores, part, 1).min(1)
    keep = scores >= kth[:, None]
    if keep.sum(1).max() > k:
        scores, ids = _gather(keep, scores, ids)
    else:
        scores = np.take_along_axis(scores, part, 1)
        ids = np.take_along_axis(ids, part, 1)
    return scores, ids, kth.astype(np.float64)


def _nonzero(keep: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """np.nonzero(keep) of a 2-D mask (row-major order) that skips its all-false stretches eight bytes at a time:
    after the first block of a scan only a few entries beat the running k-th score, and np.nonzero over the
    whole [queries, rows] mask measured 6 ms per 100 x 32,768 block, a third of a float search's time. A mask
    laid out column-major (the scores of a [rows, queries] product, transposed) is read in its own order."""
    if keep.flags.f_contiguous and not keep.flags.c_contiguous:
        c, r = _nonzero(keep.T)
        o = np.lexsort((c, r))
        return r[o], c[o]
    flat = np.ascontiguousarray(keep).reshape(-1)
    pad = (-flat.size) % 8
    if pad:
        flat = np.concatenate([flat, np.zeros(pad, dtype=bool)])
    words = np.flatnonzero(flat.view(np.uint64))
    j, b = np.nonzero(flat.reshape(-1, 8)[words])
    idx = words[j] * 8 + b
    return np.divmod(idx, keep.shape[1])


def _gather(keep: np.ndarray, scores: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The kept entries of each row, left-aligned and padded with -inf to the widest row."""
    Q = keep.shape[0]
    rows, cols = _nonzero(keep)
    cnt = np.bincount(rows, minlength=Q)
    width = max(1, int(cnt.max()) if rows.size else 1)
    slot = np.arange(rows.size) - np.r_[0, np.cumsum(cnt)[:-1]][rows]
    out_s = np.full((Q, width), -np.inf, dtype=np.float64 if scores.dtype.kind != "f" else scores.dtype)
    out_i = np.full((Q, width), np.iinfo(np.int64).max, dtype=np.int64)
    out_s[rows, slot] = scores[rows, cols]
    out_i[rows, slot] = ids[rows, cols] if ids.ndim == 2 else ids[cols]
    return out_s, out_i


class RunningTopK:
    """The best k (score desc, id asc) of rows pushed block by block in increasing id order: `result()`.

    Candidates are kept unsorted and merged (a partition, no sort) once those waiting reach k per query, so a large
    k (a binary scan's rescoring depth, 10,000 on 1M rows) costs a few partitions, not a sort per block (measured
    3.8 s of lexsort over 24 blocks for k = 10,000 and 100 queries). Between merges a row must beat the k-th score of
    the last merge: a stale threshold only lets more candidates wait, never drops one that belongs."""

    def __init__(self, n_queries: int, k: int):
        self.k = k
        self.s = np.full((n_queries, 0), -np.inf)
        self.i = np.zeros((n_queries, 0), dtype=np.int64)
        self.thr: np.ndarray | None = None  # per query, the k-th score of the last merge (None before one)
        self._waiting: list[tuple[np.ndarray, np.ndarray]] = []
        self._width = 0

    def push(self, s: np.ndarray, first_id: int) -> None:
        """Scores s [Q, B] of rows first_id .. first_id + B - 1 (ids larger than every id pushed before)."""
        Q, B = s.shape
        if self.k == 0:
            return
        ids = np.arange(first_id, first_id + B, dtype=np.int64)
        if self.thr is not None:
            # a later row ties with the k-th only at a larger id, so it must beat it strictly
            # compared in the block's own type (the k-th score is one of its type's values, so this is exact):
            # an int32 or float32 block against float64 thresholds measured 4x slower
            thr = self.thr
            if s.dtype.kind in "iu":
                thr = np.clip(thr, np.iinfo(s.dtype).min, np.iinfo(s.dtype).max)
            keep = s > thr.astype(s.dtype)[:, None]
            n = int(np.count_nonzero(keep))
            if n == 0:
                return
            if n <= 4 * Q * self.k:
                self._wait(*_gather(keep, s, ids))
                return
        cs, ci, _ = _best_unsorted(s, np.broadcast_to(ids, s.shape), self.k)
        self._wait(cs, ci)

    def _wait(self, cs: np.ndarray, ci: np.ndarray) -> None:
        self._waiting.append((cs.astype(np.float64), ci))
        self._width += cs.shape[1]
        if self.thr is None or self._width >= self.k:
            self._merge()

    def _merge(self) -> None:
        if not self._waiting:
            return
        s = np.concatenate([self.s] + [w[0] for w in self._waiting], 1)
        i = np.concatenate([self.i] + [w[1] for w in self._waiting], 1)
        self._waiting, self._width = [], 0
        self.s, self.i, self.thr = _best_unsorted(s, i, self.k)

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        """(scores [Q, k], ids [Q, k]): score desc, id asc."""
        self._merge()
        return _select(self.s, self.i, self.k)


# ---------------------------------------------------------------------------------------------

def default_block_rows(row_bytes: int) -> int:
    """Rows per block: FLOAT_BLOCK_BYTES of index data (at least 1,024 rows)."""
    return max(1024, FLOAT_BLOCK_BYTES // max(1, row_bytes))


def topk(
    queries: np.ndarray,
    n_rows: int,
    get_block: Callable[[int, int], np.ndarray],
    k: int,
    metric: str = "cosine",
    block_rows: int = 0,
    id_offset: int = 0,
    after_block: Callable[[int, int], None] | None = None,
    unit_rows: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k over float rows given block by block: (scores [Q, k'], ids [Q, k']) with k' = min(k, n_rows);
    l2 scores are squared distances. `after_block(r0, r1)` is called once rows r0..r1 are scored."""
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}")
    q = prepare_queries(queries, metric)

    def score(r0: int, r1: int) -> np.ndarray:
        return block_scores(q, get_block(r0, r1), metric, unit_rows)

    return _scan(q.shape[0], n_rows, score, k, metric, block_rows or default_block_rows(4 * q.shape[1]), id_offset, after_block)


def _scan(n_queries, n_rows, score, k, metric, block_rows, id_offset, after_block, before_block=None):
    run = RunningTopK(n_queries, min(k, n_rows))
    for r0 in range(0, n_rows, block_rows):
        r1 = min(n_rows, r0 + block_rows)
        if before_block is not None and r1 < n_rows:  # e.g. ask the OS to read the next block ahead
            before_block(r1, min(n_rows, r1 + block_rows))
        s = score(r0, r1)
        _check_finite(s, r0 + id_offset)
        if after_block is not None:  # e.g. let the memory-mapped rows go
            after_block(r0, r1)
        run.push(s, r0 + id_offset)
    s, i = run.result()
    s = s.astype(np.float32)
    if metric == "l2":
        s = np.maximum(-s, 0)
    return s, i


def topk_codes(
    queries: np.ndarray,
    codes: np.ndarray,
    k: int,
    metric: str = "cosine",
    precision: str = "float32",
    scales: np.ndarray | None = None,
    dim: int | None = None,
    unit_rows: bool = False,
    query_bits: np.ndarray | None = None,
    block_rows: int = 0,
    threads: int = 1,
    after_block: Callable[[int, int], None] | None = None,
    before_block: Callable[[int, int], None] | None = None,
    mean: np.ndarray | None = None,
    sqnorms: np.ndarray | None = None,
    sign_product: Callable[[np.ndarray], Callable[[np.ndarray], np.ndarray]] | None = None,
    int8_product: Callable[[np.ndarray, np.ndarray], Callable[..., np.ndarray]] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k of queries [Q, D] over stored rows `codes` (possibly memory-mapped) in their precision:
    float32/float16 [N, D]; int8 [N, D] with `scales` [N] (and `mean` [D] when the codes are of rows minus it:
    row i = mean + codes[i] * scales[i], and optionally `sqnorms` [N], their stored squared norms); binary [N, ceil(D/8)] packed sign bits, searched by
    Hamming distance of `query_bits` (the queries binarized as the rows were; default: their plain signs).

    Binary scores are the similarity of the sign codes: cosine/dot 1 - 2h/D, l2 4h/D (h = Hamming distance),
    which ranks exactly as h. `sign_product(q01)`, when given (the runtime's SignProduct), builds the kernel that
    scores 0/1 rows [b, D] against the queries' bits q01 [Q, D] as popcount(q) - h, [b, Q] int32: one integer matrix
    product instead of XOR + popcount, used from PRODUCT_MIN_QUERIES queries on. `unit_rows`: the index says its
    rows are unit vectors (cosine = dot). `int8_product(q, qm, n_parts=3)` (the runtime's Int8Product) builds the kernel
    that scores int8 codes [b, D] as (codes · q)·u + v·qm + w without widening them to float32, the queries taken in
    n_parts 7-bit parts; it serves centred codes (a mean) whose squared norms are stored (or the dot metric): three
    parts for up to PRODUCT_MAX_INT8_QUERIES queries, one part beyond (its best approx_depth(k) candidates per query
    rescored with the decoded rows)."""
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}")
    n = codes.shape[0]
    if precision == "binary":
        d = dim or codes.shape[1] * 8
        qb = query_bits if query_bits is not None else binarize(queries)
        nq = qb.shape[0]
        if sign_product is not None and nq >= PRODUCT_MIN_QUERIES:
            q01 = np.unpackbits(qb, axis=1)
            kernel = sign_product(q01)
            offset = q01.sum(1, dtype=np.int64)[:, None].astype(np.float64)  # popcount(q): h = popcount(q) - score
            # one product per block: the unpacked rows and the [rows, queries] scores within SCORE_BYTES
            br = block_rows or max(1024, SCORE_BYTES // (q01.shape[1] + 4 * nq))

            def score(r0: int, r1: int) -> np.ndarray:
                return kernel(np.unpackbits(codes[r0:r1], axis=1)).T
        else:
            offset = 0.0
            # rows are tiny: the [queries, rows] distance block, not the rows, bounds the block
            br = block_rows or min(default_block_rows(codes.shape[1]), max(4096, SCORE_BYTES // (4 * max(1, nq))))

            def score(r0: int, r1: int) -> np.ndarray:
                h = hamming(qb, codes[r0:r1], threads).astype(np.int32)
                return np.negative(h, out=h)

        s, i = _scan(nq, n, score, k, "dot", br, 0, after_block, before_block)
        h = offset - s.astype(np.float64)
        if metric == "l2":
            return (4 * h / d).astype(np.float32), i
        return (1 - 2 * h / d).astype(np.float32), i
    q = prepare_queries(queries, metric)
    unit = unit_rows and metric != "dot"
    if precision == "int8":
        # dequantized rows are unit vectors only up to rounding; their norms are cheap next to the product, and
        # measured on real e5 embeddings they matter (recall@10 0.977 without, 0.989 with; codes centred by the
        # corpus mean: 0.988 without, 0.991 with)
        unit = False
        if scales is None:
            raise ValueError("int8 rows need their scales")

        if int8_product is not None and mean is not None and (sqnorms is not None or metric == "dot"):
            if q.shape[0] <= PRODUCT_MAX_INT8_QUERIES:
                return _int8_product_topk(q, codes, scales, mean, sqnorms, k, metric, int8_product, block_rows,
                                          after_block, before_block)
            # one 7-bit part per query: approximate scores, then the best candidates rescored with the decoded rows
            _, cand = _int8_product_topk(q, codes, scales, mean, sqnorms, min(n, approx_depth(k)), metric,
                                         lambda q_, qm_: int8_product(q_, qm_, 1), block_rows, after_block,
                                         before_block)
            return rescore(q, cand, lambda ids: from_precision(codes[ids], scales[ids], "int8", codes.shape[1], mean),
                           metric, k)

        def score(r0: int, r1: int) -> np.ndarray:
            return int8_scores(q, codes[r0:r1], scales[r0:r1], metric, unit, mean,
                               None if sqnorms is None else sqnorms[r0:r1])
    else:
        def score(r0: int, r1: int) -> np.ndarray:
            block = codes[r0:r1]
            if block.dtype == np.float32:
                return block_scores(q, block, metric, unit)
            return _widened_scores(q, block, metric, unit)

    br = block_rows or default_block_rows(codes.dtype.itemsize * codes.shape[1])
    return _scan(q.shape[0], n, score, k, metric, br, 0, after_block, before_block)


def _int8_product_topk(q, codes, scales, mean, sqnorms, k, metric, int8_product, block_rows, after_block, before_block):
    """The int8 scan through the runtime's integer product: row i = mean + codes[i]·scales[i], so
    q · row = scales[i]·(q · codes[i]) + q · mean, and per metric (n = the stored norm, sq its square)
      dot: u = scale, v = 1, w = 0;  cosine: u = scale / n, v = 1 / n, w = 0;
      l2: u = 2 scale, v = 2, w = -sq, with q · mean - |q|^2 / 2 as the per-query term (-|q - row|^2)."""
    mu = np.asarray(mean, dtype=np.float32)
    qm = q @ mu
    if metric == "l2":
        qm = qm - 0.5 * np.einsum("ij,ij->i", q, q)
    kernel = int8_product(q, qm)
    n = codes.shape[0]

    def score(r0: int, r1: int) -> np.ndarray:
        sc = np.asarray(scales[r0:r1], dtype=np.float32)
        if metric == "dot":
            u, v, w = sc, np.ones_like(sc), np.zeros_like(sc)
        else:
            sq = np.asarray(sqnorms[r0:r1], dtype=np.float32)
            if metric == "cosine":
                inv = 1 / np.maximum(np.sqrt(np.maximum(sq, 0)), np.float32(1e-12))
                u, v, w = sc * inv, inv, np.zeros_like(sc)
            else:
                u, v, w = 2 * sc, np.full_like(sc, 2), -sq
        return kernel(codes[r0:r1], u, v, w).T

    br = block_rows or default_block_rows(codes.shape[1])
    return _scan(q.shape[0], n, score, k, metric, br, 0, after_block, before_block)


def _widened_scores(q: np.ndarray, block: np.ndarray, metric: str, unit_rows: bool) -> np.ndarray:
    """block_scores of float16 rows, widened to float32 one cache-sized tile at a time."""
    tile = max(64, CACHE_BYTES // (4 * max(1, block.shape[1])))
    return np.concatenate([block_scores(q, block[t:t + tile], metric, unit_rows) for t in range(0, block.shape[0], tile)], 1) \
        if block.shape[0] else np.zeros((q.shape[0], 0), np.float32)


RESCORE_BYTES = 32 << 20  # candidate rows gathered at once while rescoring
# rescoring reads the distinct candidate rows of all queries once, in id order, when they are at most this many
# times the candidates per query (each row is then scored against every query: cheap next to reading rows)
SWEEP_ROWS_PER_CANDIDATE = 512


def rescore(q: np.ndarray, cand: np.ndarray, rows: Callable[[np.ndarray], np.ndarray], metric: str, k: int,
            unit_rows: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Re-rank candidate ids cand [Q, C] (local row numbers, distinct per query) with better vectors:
    rows(sorted distinct ids) -> float32 [n, D]. Returns the best k by the exact metric (same tie rule), l2 as
    squared distances.

    Two ways, chosen by how much the queries' candidates overlap: when all queries together name few rows (at most
    SWEEP_ROWS_PER_CANDIDATE x C distinct ones), those rows are read once, in id order, a chunk at a time, and
    scored against every query; otherwise queries are taken a few at a time, their candidates' rows read once per
    chunk of queries."""
    qp = prepare_queries(q, metric)
    Q, C = cand.shape
    unit = unit_rows and metric != "dot"
    out_s = np.empty((Q, C), dtype=np.float32)
    uniq, inv = np.unique(cand, return_inverse=True)
    if uniq.size <= SWEEP_ROWS_PER_CANDIDATE * C:
        _rescore_sweep(qp, uniq, inv.reshape(-1), rows, metric, unit, out_s)
        return _best(out_s, cand, metric, k)
    # queries per product: as many as RESCORE_BYTES of candidate rows allow (one product per chunk measured faster
    # than a gather per query, though it scores every query of the chunk against the chunk's rows)
    step = max(1, RESCORE_BYTES // max(1, 4 * C * (qp.shape[1] + 1)))
    for q0 in range(0, Q, step):
        q1 = min(Q, q0 + step)
        uniq, inv = np.unique(cand[q0:q1], return_inverse=True)
        inv = inv.reshape(q1 - q0, C)
        R = np.asarray(rows(uniq), dtype=np.float32)
        full = block_scores(qp[q0:q1], R, metric, unit)  # [q, U]: one product for the chunk's rows
        out_s[q0:q1] = np.take_along_axis(full, inv, 1)
    return _best(out_s, cand, metric, k)


def _rescore_sweep(qp, uniq, inv, rows, metric, unit, out_s) -> None:
    """out_s [Q, C] = the scores of every (query, candidate) pair, cand.ravel() = uniq[inv]: the distinct rows are
    read once, in id order, RESCORE_BYTES at a time, and each chunk is scored against all queries."""
    Q, C = out_s.shape
    order = np.argsort(inv, kind="stable")  # the pairs by row
    by_row = inv[order]
    flat = out_s.reshape(-1)
    step = max(1, RESCORE_BYTES // (4 * (qp.shape[1] + Q)))
    for u0 in range(0, uniq.size, step):
        u1 = min(uniq.size, u0 + step)
        a, b = np.searchsorted(by_row, [u0, u1])
        full = block_scores(qp, np.asarray(rows(uniq[u0:u1]), dtype=np.float32), metric, unit)  # [Q, u1 - u0]
        pos = order[a:b]
        flat[pos] = full[pos // C, by_row[a:b] - u0]


def _best(out_s: np.ndarray, cand: np.ndarray, metric: str, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The best k of each query's rescored candidates (score desc, id asc); l2 as squared distances."""
    if not np.isfinite(out_s).all():
        r = int(np.flatnonzero(~np.isfinite(out_s).all(1))[0])
        _check_finite(out_s[r:r + 1], cand[r])
    o = np.lexsort((cand, -out_s), axis=1)[:, :k]
    s, i = np.take_along_axis(out_s, o, 1), np.take_along_axis(cand, o, 1)
    if metric == "l2":
        s = np.maximum(-s, 0)
    return s, i.astype(np.int64)


def merge(results: list[tuple[np.ndarray, np.ndarray, np.ndarray]], k: int, metric: str) -> tuple[np.ndarray, ...]:
    """Merge the top-k lists of several index files: `results` holds per file (scores [Q, k_f], ids [Q, k_f],
    positions [Q, k_f]), a position naming one row of all files (ids may repeat). Returns (scores, ids, positions)
    [Q, k]: best first (l2: smallest), ties by the smaller id, then the smaller position."""
    s, i, p = (np.concatenate([r[j] for r in results], 1) for j in range(3))
    o = np.lexsort((p, i, s if metric == "l2" else -s), axis=1)[:, :k]
    return tuple(np.take_along_axis(x, o, 1) for x in (s, i, p))
