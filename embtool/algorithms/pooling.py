"""Sentence pooling of token vectors, normalisation, Matryoshka truncation, storage precisions."""

from __future__ import annotations

import numpy as np

POOLINGS = ("mean", "cls", "last", "max")
PRECISIONS = ("float32", "float16", "int8", "binary")


def pool(tokens: np.ndarray, mask: np.ndarray, mode: str) -> np.ndarray:
    """tokens [B, S, H] float, mask [B, S] (1 = real token) -> [B, H] float32."""
    m = mask.astype(np.float32)
    if mode == "mean":
        s = np.einsum("bsh,bs->bh", tokens, m, dtype=np.float32)
        return s / np.maximum(m.sum(1, keepdims=True), 1e-9)
    if mode == "cls":
        return np.ascontiguousarray(tokens[:, 0, :], dtype=np.float32)
    if mode == "last":
        last = np.maximum(mask.astype(np.int64).sum(1) - 1, 0)
        return np.ascontiguousarray(tokens[np.arange(tokens.shape[0]), last, :], dtype=np.float32)
    if mode == "max":
        t = np.where(m[:, :, None] > 0, tokens, -np.inf)
        return t.max(1).astype(np.float32)
    raise ValueError(f"unknown pooling {mode!r}")


def normalize(x: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(n, 1e-12)).astype(np.float32)


def truncate_dim(x: np.ndarray, dim: int | None) -> np.ndarray:
    return x if dim is None else np.ascontiguousarray(x[:, :dim])


def to_precision(x: np.ndarray, precision: str) -> tuple[np.ndarray, np.ndarray | None]:
    """Convert float32 rows to a storage precision. Returns (codes, per-row scale or None).

    int8: symmetric per row, scale = max|x| / 127.  binary: sign bits packed 8 per byte (x > 0).
    """
    if precision == "float32":
        return x.astype(np.float32, copy=False), None
    if precision == "float16":
        return x.astype(np.float16), None
    if precision == "int8":
        scale = np.abs(x).max(1) / 127.0
        scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
        return np.clip(np.rint(x / scale[:, None]), -127, 127).astype(np.int8), scale
    if precision == "binary":
        return np.packbits(x > 0, axis=1), None
    raise ValueError(f"unknown precision {precision!r}")


def from_precision(codes: np.ndarray, scale: np.ndarray | None, precision: str, dim: int) -> np.ndarray:
    """Approximate float32 rows back from stored codes (binary -> ±1/sqrt(dim))."""
    if precision in ("float32", "float16"):
        return np.asarray(codes, dtype=np.float32)  # no copy when already float32
    if precision == "int8":
        return codes.astype(np.float32) * scale[:, None]
    if precision == "binary":
        bits = np.unpackbits(codes, axis=1, count=dim).astype(np.float32)
        return (bits * 2 - 1) / np.sqrt(dim)
    raise ValueError(f"unknown precision {precision!r}")
