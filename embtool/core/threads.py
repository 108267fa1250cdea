"""How many threads a command may use: one rule for onnxruntime sessions and numpy work."""

from __future__ import annotations

import os


def resolve_threads(threads: int) -> int:
    """--threads N when given (N > 0), else $OMP_NUM_THREADS when it is a positive number (as numpy's BLAS
    and other OpenMP programs honour it), else 0: onnxruntime's default (all cores)."""
    if threads and int(threads) > 0:
        return int(threads)
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    return int(env) if env.isdigit() and int(env) > 0 else 0


def cpu_threads(threads: int = 0) -> int:
    """`resolve_threads`, with 0 made concrete: the CPUs this process may run on."""
    n = resolve_threads(threads)
    if n:
        return n
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
