"""Calibration statistics: the Gram matrix XᵀX of every Linear's input over calibration tokens."""

from __future__ import annotations

import numpy as np

from embtool.core.model import Model


def gram_matrices(model: Model, weights: list[str], texts: list[str], threads: int = 0, max_length: int = 128,
                  batch_size: int = 16) -> tuple[dict[str, np.ndarray], int]:
    """({`X.weight`: XᵀX [in, in] float64}, number of tokens) over the real (unpadded) tokens of `texts`."""
    from embtool.runtime.graphs import build_encoder
    from embtool.runtime.encoder import EmbedSettings, Encoder, default_max_length, graph_session

    built = build_encoder(model, capture_linear_inputs=True)
    wanted = {w: built.linear_inputs[w] for w in weights if w in built.linear_inputs}
    enc = Encoder(model, EmbedSettings(max_length=min(max_length, default_max_length(model))), session=graph_session(built, threads))
    outs = sorted(set(wanted.values()))
    acc: dict[str, np.ndarray] = {}
    seqs = enc.tokenize(texts)
    order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i]))
    n_tok = 0
    for b0 in range(0, len(order), batch_size):
        ids, mask = enc.padded([seqs[i] for i in order[b0 : b0 + batch_size]])
        valid = mask.reshape(-1) > 0
        n_tok += int(valid.sum())
        for name, x in zip(outs, enc.run_outputs(outs, ids, mask)):
            X = x.reshape(-1, x.shape[-1])[valid].astype(np.float64)
            acc[name] = acc.get(name, 0) + X.T @ X
    return {w: acc[x] for w, x in wanted.items()}, n_tok
