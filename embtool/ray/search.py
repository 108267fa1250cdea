"""Shard scoring on Ray (`search --ray`): each index file scored in a Ray task next to the file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import ray

from embtool.ray.cluster import session


def search_files(paths: list[str], queries: np.ndarray, req, threads: int = 1) -> list[tuple[np.ndarray, np.ndarray]]:
    """(scores, local rows) of the exact top-k of each index file, each computed in a Ray task exactly as the local
    search computes it, so the caller's merge gives the same hits.

    paths: index files, at the same path on every node.
    queries: [q, dim] float32 query vectors.
    req: the SearchRequest (k, metric, rescoring; `req.ray` is the address for `embtool.ray.session`).
    threads: threads per task.
    """
    from embtool.jobs.search import search_file

    with session(req.ray):
        remote = ray.remote(num_cpus=1, max_retries=3)(search_file)
        q_ref = ray.put(np.ascontiguousarray(queries, dtype=np.float32))
        return ray.get([remote.remote(str(Path(p).resolve()), q_ref, req, threads) for p in paths])
