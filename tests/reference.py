"""An independent numpy implementation of the BERT-family forward pass, for checking the ONNX builder.

Written from the architecture (Devlin et al.; RoBERTa position ids as in Hugging Face's
create_position_ids_from_input_ids), one text at a time, with no padding at all.
"""

from __future__ import annotations

import math

import numpy as np


def _ln(x, g, b, eps):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * g + b


def _gelu(x):
    from math import erf

    return 0.5 * x * (1 + np.vectorize(erf)(x / math.sqrt(2)))


def forward(weights: dict, config: dict, ids: list[int]) -> np.ndarray:
    """Token vectors [len(ids), hidden] (float64) for one unpadded sequence."""
    mt = config["model_type"]
    W = {k: np.asarray(v, dtype=np.float64) for k, v in weights.items()}
    ids = np.asarray(ids)
    n = len(ids)
    if mt == "distilbert":
        H, L, nh, eps = config["dim"], config["n_layers"], config["n_heads"], 1e-12
        lay = "transformer.layer.{i}."
        names = dict(q="attention.q_lin", k="attention.k_lin", v="attention.v_lin", o="attention.out_lin",
                     ln1="sa_layer_norm", fi="ffn.lin1", fo="ffn.lin2", ln2="output_layer_norm")
    else:
        H, L, nh, eps = config["hidden_size"], config["num_hidden_layers"], config["num_attention_heads"], config["layer_norm_eps"]
        lay = "encoder.layer.{i}."
        names = dict(q="attention.self.query", k="attention.self.key", v="attention.self.value", o="attention.output.dense",
                     ln1="attention.output.LayerNorm", fi="intermediate.dense", fo="output.dense", ln2="output.LayerNorm")
    x = W["embeddings.word_embeddings.weight"][ids]
    if mt in ("roberta", "xlm-roberta", "camembert"):
        pad = config["pad_token_id"]
        pos = np.arange(n) + pad + 1
    else:
        pos = np.arange(n)
    x = x + W["embeddings.position_embeddings.weight"][pos]
    if "embeddings.token_type_embeddings.weight" in W:
        x = x + W["embeddings.token_type_embeddings.weight"][0]
    x = _ln(x, W["embeddings.LayerNorm.weight"], W["embeddings.LayerNorm.bias"], eps)
    hd = H // nh

    def lin(v, base):
        return v @ W[base + ".weight"].T + W[base + ".bias"]

    for i in range(L):
        p = lay.format(i=i)
        q = lin(x, p + names["q"]).reshape(n, nh, hd).transpose(1, 0, 2)
        k = lin(x, p + names["k"]).reshape(n, nh, hd).transpose(1, 0, 2)
        v = lin(x, p + names["v"]).reshape(n, nh, hd).transpose(1, 0, 2)
        s = q @ k.transpose(0, 2, 1) / math.sqrt(hd)
        s = np.exp(s - s.max(-1, keepdims=True))
        s /= s.sum(-1, keepdims=True)
        ctx = (s @ v).transpose(1, 0, 2).reshape(n, H)
        x = _ln(x + lin(ctx, p + names["o"]), W[p + names["ln1"] + ".weight"], W[p + names["ln1"] + ".bias"], eps)
        h = _gelu(lin(x, p + names["fi"]))
        x = _ln(x + lin(h, p + names["fo"]), W[p + names["ln2"] + ".weight"], W[p + names["ln2"] + ".bias"], eps)
    return x


def sentence(weights, config, ids, pooling="mean", normalize=True) -> np.ndarray:
    t = forward(weights, config, ids)
    v = t.mean(0) if pooling == "mean" else t[0]
    return v / np.linalg.norm(v) if normalize else v
