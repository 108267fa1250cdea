"""Sentence pooling of token vectors, normalisation, Matryoshka truncation, storage precisions."""

from __future__ import annotations

import numpy as np

POOLINGS = ("mean", "cls", "last", "max")
ALL_POOLINGS = (*POOLINGS, "weightedmean", "mean_sqrt_len")  # the last two: sentence-transformers' other modes
PRECISIONS = ("float32", "float16", "int8", "binary")
ACTIVATIONS = ("identity", "tanh", "relu", "gelu", "sigmoid", "silu")


def pooling_modes(mode: str) -> tuple[str, ...]:
    """'cls+mean' -> ('cls', 'mean'): several modes are concatenated, as sentence-transformers does."""
    modes = tuple(m.strip() for m in str(mode).split("+"))
    for m in modes:
        if m not in ALL_POOLINGS:
            raise ValueError(f"unknown pooling {m!r} ({', '.join(ALL_POOLINGS)})")
    return modes


def exclude_prompt(mask: np.ndarray, prompt_length: int) -> np.ndarray:
    """The mask without the first `prompt_length` real tokens of each row (sentence-transformers'
    `include_prompt=False`; rows may be left-padded)."""
    m = np.array(mask, copy=True)
    first = np.argmax(m.astype(np.int32), axis=1)
    pos = np.arange(m.shape[1])[None, :]
    m[pos < (first + prompt_length)[:, None]] = 0
    return m


def pool(tokens: np.ndarray, mask: np.ndarray, mode: str, prompt_length: int = 0) -> np.ndarray:
    """tokens [B, S, H] float, mask [B, S] (1 = real token) -> [B, H * len(modes)] float32.

    Modes as in sentence-transformers' Pooling: mean, cls (first real token), last (last real token),
    max, weightedmean (token i weighted by its position i+1), mean_sqrt_len (sum / sqrt(count));
    'a+b' concatenates. prompt_length > 0 leaves the first tokens (the prompt) out."""
    original = mask
    if prompt_length:
        mask = exclude_prompt(mask, prompt_length)
    m = mask.astype(np.float32)
    out = []
    mean_sum = None
    for mode in pooling_modes(mode):
        if mode in ("mean", "mean_sqrt_len"):
            if mean_sum is None:
                mean_sum = np.einsum("bsh,bs->bh", tokens, m, dtype=np.float32)
                count = np.maximum(m.sum(1, keepdims=True), 1e-9)
            out.append(mean_sum / (count if mode == "mean" else np.sqrt(count)))
        elif mode == "cls":
            first = np.argmax(mask.astype(np.int32), axis=1)
            out.append(np.asarray(tokens[np.arange(tokens.shape[0]), first, :], dtype=np.float32))
        elif mode == "last":
            S = mask.shape[1]
            flipped = mask[:, ::-1]
            idx = np.argmax(flipped, axis=1)
            idx = np.where(flipped.max(1) == 0, S - 1, idx)
            rows = np.arange(tokens.shape[0])
            last = S - idx - 1
            out.append((tokens[rows, last, :] * m[rows, last][:, None]).astype(np.float32))
        elif mode == "max":
            t = np.where(m[:, :, None] > 0, tokens, -np.inf)
            out.append(t.max(1).astype(np.float32))
        elif mode == "weightedmean":
            pad = np.argmax(original.astype(np.int32), axis=1)  # left padding shifts the weights
            w = (m * (np.arange(1, mask.shape[1] + 1, dtype=np.float32)[None, :] - pad[:, None])).astype(np.float32)
            s = np.einsum("bsh,bs->bh", tokens, w, dtype=np.float32)
            out.append(s / np.maximum(w.sum(1, keepdims=True), 1e-9))
    res = out[0] if len(out) == 1 else np.concatenate(out, axis=1)
    return np.ascontiguousarray(res, dtype=np.float32)


def activation(x: np.ndarray, name: str) -> np.ndarray:
    if name == "identity":
        return x
    if name == "tanh":
        return np.tanh(x)
    if name == "relu":
        return np.maximum(x, 0)
    if name == "sigmoid":
        return 1 / (1 + np.exp(-x))
    if name == "silu":
        return x / (1 + np.exp(-x))
    if name == "gelu":  # exact (erf) GELU, torch.nn.GELU's default
        from math import erf, sqrt

        return x * 0.5 * (1 + np.vectorize(erf, otypes=[np.float32])(x / sqrt(2)))
    raise ValueError(f"unknown activation {name!r} ({', '.join(ACTIVATIONS)})")


def dense(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None, act: str,
          residual: np.ndarray | None = None, use_residual: bool = False) -> np.ndarray:
    """A sentence-transformers Dense layer: act(x W^T + b), plus x (or x R^T) with use_residual."""
    y = x @ weight.T
    if bias is not None:
        y = y + bias
    y = activation(y, act)
    if use_residual:
        y = y + (x if residual is None else x @ residual.T)
    return y.astype(np.float32, copy=False)


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


def from_precision(codes: np.ndarray, scale: np.ndarray | None, precision: str, dim: int,
                   mean: np.ndarray | None = None) -> np.ndarray:
    """Approximate float32 rows back from stored codes (binary -> ±1/sqrt(dim)). int8 codes of centred rows
    (x - mean, see embeddings_io's int8_mean) get `mean` added back."""
    if precision in ("float32", "float16"):
        return np.asarray(codes, dtype=np.float32)  # no copy when already float32
    if precision == "int8":
        rows = np.asarray(codes, dtype=np.float32) * np.asarray(scale, dtype=np.float32)[:, None]
        if mean is not None:
            rows += np.asarray(mean, dtype=np.float32)[None, :]
        return rows
    if precision == "binary":
        bits = np.unpackbits(codes, axis=1, count=dim).astype(np.float32)
        return (bits * 2 - 1) / np.sqrt(dim)
    raise ValueError(f"unknown precision {precision!r}")
