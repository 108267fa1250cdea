"""Fidelity of a shrunk model: embeddings of the same texts, original vs new."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from embtool.algorithms.search import topk
from embtool.core.model import Model


@dataclass(kw_only=True)
class OutputRequest:
    """Fields every model-writing job shares: the --eval check, --force, --threads."""

    eval_file: str | None = None
    eval_limit: int = 1000
    eval_prefix: str = ""
    min_cosine: float | None = None
    min_cosine_min: float | None = None
    min_recall: float | None = None
    force: bool = False
    threads: int = 0


def neighbour_agreement(a: np.ndarray, b: np.ndarray, k: int = 10) -> float:
    """Mean overlap of the k nearest neighbours (self excluded) of each text among the texts, a vs b."""
    n = a.shape[0]
    k = min(k, n - 1)
    if k < 1:
        return 1.0
    _, ia = topk(a, n, lambda r0, r1: a[r0:r1], k + 1)
    _, ib = topk(b, n, lambda r0, r1: b[r0:r1], k + 1)
    overlap = [len(set(x[x != i][:k]) & set(y[y != i][:k])) / k for i, (x, y) in enumerate(zip(ia, ib))]
    return float(np.mean(overlap))


def compare(a: np.ndarray, b: np.ndarray) -> dict[str, Any]:
    cos = np.sum(a * b, 1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)
    return {"texts": int(a.shape[0]), "cosine_mean": float(cos.mean()), "cosine_min": float(cos.min()),
            "recall@10": neighbour_agreement(a, b, 10)}


def embed_both(orig: Model, new: Model, texts: list[str], threads: int = 0, prefix: str = "") -> tuple[np.ndarray, np.ndarray]:
    from embtool.runtime.encoder import EmbedSettings, Encoder

    s = EmbedSettings(threads=threads, prefix=prefix)
    return Encoder(orig, s).embed(texts), Encoder(new, s).embed(texts)


GATES = (("min_cosine", "cosine_mean", "held-out mean cosine"),
         ("min_cosine_min", "cosine_min", "held-out min cosine"),
         ("min_recall", "recall@10", "held-out recall@10"))


def gate(summary: dict[str, Any], req, out=None) -> bool:
    """Apply the --min-cosine / --min-cosine-min / --min-recall gates of `req` to summary["eval"].

    Records summary["gate"] (each threshold, the failures and their message) and summary["passed"]; on a
    failure the output folder `out` is discarded, so nothing is written (summary["written"] is false)."""
    ev = summary["eval"]
    g: dict[str, Any] = {}
    failed = []
    for opt, key, what in GATES:
        limit = getattr(req, opt, None)
        if limit is None:
            continue
        g[opt] = limit
        if not ev[key] >= limit:
            failed.append(f"{what} {ev[key]:.4f} is below --{opt.replace('_', '-')} {limit}")
    g["failed"] = failed
    summary["gate"] = g
    summary["passed"] = summary["written"] = not failed
    if failed:
        g["message"] = "; ".join(failed) + "; nothing written"
        if out is not None:
            out.discard()
    return not failed


def evaluate_output(orig: Model, out, req, summary: dict[str, Any]) -> dict[str, Any]:
    """The --eval check of a shrinking command: the output `out` (an OutputFolder, still in its temporary
    folder) against the input on held-out texts, into summary["eval"]; then the gates (`gate`): below a
    threshold the output is discarded."""
    from embtool.core.errors import InputError
    from embtool.core.model import open_model
    from embtool.core.texts import read_lines

    texts = read_lines(req.eval_file, req.eval_limit)
    if len(texts) < 2:
        raise InputError(f"{req.eval_file}: need at least 2 texts to evaluate on")
    summary["eval"] = compare(*embed_both(orig, open_model(out.path, need_tokenizer=True), texts, req.threads,
                                          req.eval_prefix))
    gate(summary, req, out)
    return summary["eval"]
