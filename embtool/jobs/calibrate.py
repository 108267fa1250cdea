"""Calibration statistics: the Gram matrix XᵀX of every Linear's input over calibration tokens."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort

from embtool.core.model import Model


def gram_matrices(model: Model, weights: list[str], texts: list[str], threads: int = 0, max_length: int = 128,
                  batch_size: int = 16) -> tuple[dict[str, np.ndarray], int]:
    """({`X.weight`: XᵀX [in, in] float64}, number of tokens) over the real (unpadded) tokens of `texts`."""
    from embtool.runtime.bert_graph import build_encoder
    from embtool.runtime.encoder import EmbedSettings, Encoder, session_options

    built = build_encoder(model, capture_linear_inputs=True)
    sess = ort.InferenceSession(built.to_model(embed_feeds=False).SerializeToString(), session_options(threads),
                                providers=["CPUExecutionProvider"])
    feeds = {k: ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(v)) for k, v in built.feeds.items()}
    from embtool.runtime.encoder import default_max_length

    enc = Encoder(model, EmbedSettings(max_length=min(max_length, default_max_length(model))), session=(sess, feeds))
    wanted = {w: built.linear_inputs[w] for w in weights if w in built.linear_inputs}
    outs = sorted(set(wanted.values()))
    acc: dict[str, np.ndarray] = {}
    seqs = enc.tokenize(texts)
    order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i]))
    n_tok = 0
    for b0 in range(0, len(order), batch_size):
        idx = order[b0 : b0 + batch_size]
        L = max(len(seqs[i]) for i in idx)
        ids = np.full((len(idx), L), enc._pad_id(), np.int64)
        mask = np.zeros((len(idx), L), np.int64)
        for r, i in enumerate(idx):
            ids[r, : len(seqs[i])] = seqs[i]
            mask[r, : len(seqs[i])] = 1
        run_feeds = dict(feeds)
        run_feeds["input_ids"] = ort.OrtValue.ortvalue_from_numpy(ids)
        run_feeds["attention_mask"] = ort.OrtValue.ortvalue_from_numpy(mask)
        res = sess.run_with_ort_values(outs, run_feeds)
        valid = mask.reshape(-1) > 0
        n_tok += int(valid.sum())
        for name, ov in zip(outs, res):
            x = ov.numpy()
            X = x.reshape(-1, x.shape[-1])[valid].astype(np.float64)
            acc[name] = acc.get(name, 0) + X.T @ X
    return {w: acc[x] for w, x in wanted.items()}, n_tok
