"""Exact top-k nearest neighbours by blocked matrix multiplication.

Scores: cosine (queries and rows normalised), dot, l2 (reported as the squared distance, smaller is
better). Ties are broken by the smaller id, so results are deterministic and equal a brute-force
reference. Blocks come from any callable, so the index can be memory-mapped and larger than RAM.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

METRICS = ("cosine", "dot", "l2")


def _prepare_queries(q: np.ndarray, metric: str) -> np.ndarray:
    q = np.asarray(q, dtype=np.float32)
    if metric == "cosine":
        q = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
    return q


def block_scores(q: np.ndarray, block: np.ndarray, metric: str) -> np.ndarray:
    """Similarity (higher is better) of prepared queries q [Q, D] to rows block [B, D]."""
    s = q @ block.T
    if metric == "cosine":
        s /= np.maximum(np.linalg.norm(block, axis=1), 1e-12)[None, :]
    elif metric == "l2":
        s = 2 * s - (block * block).sum(1)[None, :] - (q * q).sum(1)[:, None]  # = -||q - x||^2
    return s


def _select(scores: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the k best (score desc, id asc) among candidates."""
    Q, C = scores.shape
    if C > k:
        # argpartition may cut inside a run of equal scores; widen to keep every tie at the boundary
        part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        kth = np.take_along_axis(scores, part, 1).min(1)
        keep = scores >= kth[:, None]
        cnt = keep.sum(1)
        if cnt.max() > k:
            # every candidate at or above the k-th score, padded to the widest row with -inf
            width = int(cnt.max())
            rows, cols = np.nonzero(keep)
            slot = np.arange(rows.size) - np.r_[0, np.cumsum(cnt)[:-1]][rows]
            order = np.zeros((Q, width), dtype=np.int64)
            order[rows, slot] = cols
            pad = np.arange(width)[None, :] >= cnt[:, None]
            scores = np.take_along_axis(scores, order, 1)
            scores[pad] = -np.inf
        else:
            order = part
            scores = np.take_along_axis(scores, order, 1)
        ids = np.take_along_axis(ids, order, 1)
    o = np.lexsort((ids, -scores), axis=1)[:, :k]
    return np.take_along_axis(scores, o, 1), np.take_along_axis(ids, o, 1)


def topk(
    queries: np.ndarray,
    n_rows: int,
    get_block: Callable[[int, int], np.ndarray],
    k: int,
    metric: str = "cosine",
    block_rows: int = 65536,
    id_offset: int = 0,
    after_block: Callable[[int, int], None] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(scores [Q, k'], ids [Q, k']) with k' = min(k, n_rows); l2 scores are squared distances.
    `after_block(r0, r1)` is called once rows r0..r1 are scored."""
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}")
    q = _prepare_queries(queries, metric)
    Q = q.shape[0]
    kk = min(k, n_rows)
    best_s = np.full((Q, 0), -np.inf, dtype=np.float32)
    best_i = np.zeros((Q, 0), dtype=np.int64)
    for r0 in range(0, n_rows, block_rows):
        r1 = min(n_rows, r0 + block_rows)
        s = block_scores(q, np.asarray(get_block(r0, r1), dtype=np.float32), metric).astype(np.float32, copy=False)
        if after_block is not None:  # e.g. let the memory-mapped rows go
            after_block(r0, r1)
        ids = np.broadcast_to(np.arange(r0, r1, dtype=np.int64) + id_offset, s.shape)
        cand_s, cand_i = _select(s, ids, kk)
        best_s, best_i = _select(np.concatenate([best_s, cand_s], 1), np.concatenate([best_i, cand_i], 1), kk)
    if metric == "l2":
        best_s = np.maximum(-best_s, 0)
    return best_s, best_i


def merge(results: list[tuple[np.ndarray, np.ndarray]], k: int, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """Merge top-k lists of several shards (ids already global)."""
    s = np.concatenate([r[0] for r in results], 1)
    i = np.concatenate([r[1] for r in results], 1)
    if metric == "l2":
        s2, i2 = _select(-s, i, k)
        return -s2, i2
    return _select(s, i, k)
