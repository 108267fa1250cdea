"""Shard scoring on Ray (`search --ray`): each index file scored in a Ray task next to the file."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import ray

from embtool.ray.cluster import session


def search_files(score_file: Callable, paths: list[str], queries: np.ndarray, req,
                 threads: int = 1) -> list[tuple[np.ndarray, np.ndarray]]:
    """(scores, local rows) of the exact top-k of each index file, each computed in a Ray task exactly as the local
    search computes it, so the caller's merge gives the same hits.

    score_file: what a task runs, `score_file(path, queries, req, threads)` (embtool.jobs.search.search_file).
    paths: index files, at the same path on every node.
    queries: [q, dim] float32 query vectors.
    req: the SearchRequest (k, metric, rescoring; `req.ray` is the address for `embtool.ray.session`).
    threads: threads per task.
    """
    with session(req.ray):
        remote = ray.remote(num_cpus=1, max_retries=3)(score_file)
        q_ref = ray.put(np.ascontiguousarray(queries, dtype=np.float32))
        return ray.get([remote.remote(str(Path(p).resolve()), q_ref, req, threads) for p in paths])
