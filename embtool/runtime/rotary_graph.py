"""Graphs of the rotary-position families: ModernBERT, NomicBERT, GTE "new", EmbeddingGemma (encoders) and Qwen3 (decoder).

The five share one layer shape — token embedding, rotary attention, a gated MLP — and differ in data: each is a
`Family` description of core/architectures.py (`builder="rotary"`: weight names, wiring, the config keys it reads and
their valid ranges), resolved against config.json into an `Arch` that one builder (`build_rotary`) reads; no PyTorch,
the same weight encodings as the BERT builder (plain, packed n-bit -> MatMulNBits / GatherBlockQuantized, OFA factors):

| family | norm | placement | attention | MLP | as in transformers |
|---|---|---|---|---|---|
| modernbert | LayerNorm (bias optional) | pre-norm (none before layer 0's attention), final norm | fused Wqkv; global layers and local layers (\\|i - j\\| <= local_attention/2), each with its own rotary theta | GeGLU `act(Wi[:I]) * Wi[I:]` | `ModernBertModel` |
| nomic_bert | LayerNorm | post-norm, norm after the embeddings | fused Wqkv, no biases | SwiGLU `fc2(act(fc12) * fc11)` | `NomicBertModel` (hub names) |
| gte | LayerNorm | post-norm, norm after the embeddings | fused qkv_proj with bias | `down(act(gate) * up)`, up_gate_proj = [up; gate] | `GteModel` (hub names) |
| gemma3_text | RMSNorm x (1 + w) | pre-norm plus a norm on each block's output, final norm; embeddings x sqrt(hidden) | q/k/v, q/k norm, grouped-query, sliding and global layers (own theta), bidirectional (EmbeddingGemma) or causal; scores x query_pre_attn_scalar^-1/2 | GeGLU (tanh) `down(act(gate) * up)` | `Gemma3TextModel` |
| qwen3 | RMSNorm | pre-norm, final norm | q/k/v, RMSNorm on each head of q and k, grouped-query, causal | SwiGLU `down(silu(gate) * up)` | `Qwen3Model` / `Qwen3ForCausalLM` |

Positions are `cumsum(attention_mask) - 1`, so a row may be padded on either side (rotary attention only
sees position differences); the attention mask is the key-padding mask combined with the family's structure
(causal, or the local window). The graph outputs `last_hidden_state`; pooling (mean, or the last real token
for Qwen3 through its sentence-transformers config) is the encoder's.

Operators: by default two of onnxruntime's fused CPU kernels, each checked against the standard-op subgraph it
replaces (tools/fused_ops.py): SimplifiedLayerNormalization for RMSNorm, and RotaryEmbedding (below). A third,
com.microsoft SkipSimplifiedLayerNormalization, is built behind a switch (off, see below): where a residual add is followed by the RMSNorm of its sum (the RMS families, Qwen3 and EmbeddingGemma: each layer's
attention residual then the MLP's pre-norm, the MLP residual then the next layer's input norm or the final norm; one
kernel gives the normed sum and, through its input_skip_bias_sum output, the sum itself for the next residual; the
other RMSNorms — the first layer's input norm, q/k norms, Gemma's post-norms of a block's output, which norm no sum —
stay SimplifiedLayerNormalization). com.microsoft RotaryEmbedding is used for
the rotation of q and k (heads [B, n, S, hd], non-interleaved, int64 positions clipped to >= 0 for padding, a
cos/sin cache [S, hd/2] per rotary theta computed from the batch's length, so any length the standard ops take
runs, as before). The Skip fusion is off (`FUSE_SKIP_RMSNORM = False`): against Add + SimplifiedLayerNormalization, the
default before it, onnxruntime 1.32's fused kernel measured 0.85x, 0.95x and 1.04x in three runs of
`tools/fused_ops.py --only "Add + SimplifiedLayerNormalization"`, so the graph keeps the two nodes; the switch builds
it (tests/test_arch.py keeps it checked).
`fused=False` (`export-onnx --portable`) keeps standard ONNX operators only: RMSNorm as seven ops after a plain Add,
rotary as x * cos + rotate_half(x) * sin with cos/sin tables [B, 1, S, hd] from float positions.
"""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper

from embtool.core.architectures import Arch
from embtool.core.model import Model
from embtool.runtime.bert_graph import (BuiltGraph, GraphBuilder, WeightSource, _activation, finish_graph,
                                        _embedding, _linear)

# residual add + RMSNorm of the sum as one com.microsoft SkipSimplifiedLayerNormalization (fused graphs, RMS families);
# False: a plain Add, then SimplifiedLayerNormalization (see the module docstring)
FUSE_SKIP_RMSNORM = False  # measured no faster than Add + SimplifiedLayerNormalization (0.85x, 0.95x, 1.04x in 3 runs)


# --------------------------------------------------------------------------------------------------
# blocks
# --------------------------------------------------------------------------------------------------

def _act(b: GraphBuilder, h: str, act: str) -> str:
    if act.lower() in ("silu", "swish"):
        return b.node("Mul", [h, b.node("Sigmoid", [h], "sig")], "silu")
    return _activation(b, h, act)


def _residual(b, w, a, f, x: str, out: str, L: str, post_norm: str | None, norm: str, tag: str,
              then: str | None = None) -> tuple[str, str | None]:
    """x + sublayer output, with the family's norms: the output's own post-norm (Gemma's sandwich norms) and,
    for post-norm families, the layer norm after the addition. `then` (pre-norm families): the weight base of the
    norm the next sublayer applies to this sum. Returns (the residual stream, its norm `then` or None); an RMS
    family's add and norm `then` are one SkipSimplifiedLayerNormalization in a fused graph (FUSE_SKIP_RMSNORM)."""
    assert then is None or f.pre_norm
    if post_norm:
        out = _norm(b, w, out, L + post_norm, a)
    if then is not None and f.rms and not b.portable and FUSE_SKIP_RMSNORM:
        # inputs input, skip, gamma (no bias); outputs output, mean and inv_std_var (training only: left out),
        # input_skip_bias_sum = x + out, the residual stream the next add starts from
        normed, total = b.tmp("rms"), b.tmp(tag)
        b.uses_ms = True
        b.nodes.append(helper.make_node("SkipSimplifiedLayerNormalization", [x, out, b.const(then + ".weight", _rms_scale(w, then, a))],
                                        [normed, "", "", total], domain="com.microsoft", epsilon=a.eps))
        return total, normed
    x = b.node("Add", [x, out], tag)
    if not f.pre_norm:
        return _norm(b, w, x, L + norm, a), None
    return x, (_norm(b, w, x, then, a) if then is not None else None)


def _rms_scale(w: WeightSource, base: str, a: Arch) -> np.ndarray:
    """An RMSNorm's weight as the kernels take it: Gemma's (1 + w) folded in."""
    return (w.get_f32(base + ".weight") + np.float32(a.family.rms_offset)).astype(np.float32)


def _norm(b: GraphBuilder, w: WeightSource, x: str, base: str, a: Arch) -> str:
    if a.family.rms and not b.portable:
        # onnxruntime's SimplifiedLayerNormalization computes the same x / sqrt(mean(x^2) + eps) * weight in one
        # kernel: measured 2.1x faster than the seven standard ops at [8, 256, 1024] (tools/fused_ops.py, docs/benchmarks.md)
        return b.node("SimplifiedLayerNormalization", [x, b.const(base + ".weight", _rms_scale(w, base, a))], "rms", axis=-1,
                      epsilon=a.eps)
    if a.family.rms:  # RMSNorm in float32 with standard operators (--portable): x / sqrt(mean(x^2) + eps) * weight
        ms = b.node("ReduceMean", [b.node("Mul", [x, x], "sq"), _k(b, "axes_last", np.array([-1], np.int64))], "ms", keepdims=1)
        inv = b.node("Reciprocal", [b.node("Sqrt", [b.node("Add", [ms, _k(b, "rms_eps", np.array(a.eps, np.float32))])])])
        return b.node("Mul", [b.node("Mul", [x, inv], "rmsn"), b.const(base + ".weight", _rms_scale(w, base, a))], "rms")
    g = b.const(base + ".weight", w.get_f32(base + ".weight"))
    inputs = [x, g] + ([b.const(base + ".bias", w.get_f32(base + ".bias"))] if w.has(base + ".bias") else [])
    return b.node("LayerNormalization", inputs, "ln", axis=-1, epsilon=a.eps)


def _k(b: GraphBuilder, name: str, arr: np.ndarray) -> str:
    """A constant made once per graph (several blocks share it by name)."""
    made = b.__dict__.setdefault("_shared_consts", set())
    if name not in made:
        made.add(name)
        b.const(name, arr)
    return name


def _split(b: GraphBuilder, x: str, sizes: list[int] | None) -> list[str]:
    """Split the last axis into `sizes` (None: two equal halves); returns every part."""
    n = 2 if sizes is None else len(sizes)
    outs = [b.tmp("part") for _ in range(n)]
    if sizes is None:
        b.nodes.append(helper.make_node("Split", [x], outs, axis=-1, num_outputs=2))
    else:
        name = "split_" + "_".join(map(str, sizes))
        b.nodes.append(helper.make_node("Split", [x, _k(b, name, np.array(sizes, np.int64))], outs, axis=-1))
    return outs


def _heads(b: GraphBuilder, x: str, n: int, hd: int) -> str:
    """[B, S, n*hd] -> [B, n, S, hd]"""
    r = b.node("Reshape", [x, _k(b, f"shape_heads_{n}_{hd}", np.array([0, 0, n, hd], np.int64))])
    return b.node("Transpose", [r], "heads", perm=[0, 2, 1, 3])


def _rotate(b: GraphBuilder, x: str, cos: str, sin: str, hd: int) -> str:
    """x * cos + rotate_half(x) * sin, rotate_half(x) = [-x2, x1] (transformers' non-interleaved rotary)."""
    x1, x2 = _split(b, x, None)
    rot = b.node("Concat", [b.node("Neg", [x2]), x1], "rot", axis=-1)
    return b.node("Add", [b.node("Mul", [x, cos]), b.node("Mul", [rot, sin])], "rope")


def _inv_freq(theta: float, hd: int) -> np.ndarray:
    """transformers' float32 inverse frequencies theta^(-2i/hd), i < hd/2."""
    return (1.0 / (np.float32(theta) ** (np.arange(0, hd, 2, dtype=np.float32) / np.float32(hd)))).astype(np.float32)


def _rope_tables(b: GraphBuilder, pos: str, theta: float, hd: int) -> tuple[str, str]:
    """cos, sin [B, 1, S, hd] for float positions [B, S] (as transformers: float32 inv_freq, freqs repeated twice)."""
    inv = _inv_freq(theta, hd)
    key = f"{theta:g}_{hd}"
    freqs = b.node("Mul", [b.node("Unsqueeze", [pos, _k(b, "ax_last", np.array([-1], np.int64))]),
                           _k(b, f"inv_freq_{key}", inv)], "freqs")
    emb = b.node("Unsqueeze", [b.node("Concat", [freqs, freqs], "emb", axis=-1), _k(b, "ax1", np.array([1], np.int64))])
    return b.node("Cos", [emb], f"cos_{key}"), b.node("Sin", [emb], f"sin_{key}")


def _rope_cache(b: GraphBuilder, r: str, theta: float, hd: int) -> tuple[str, str]:
    """RotaryEmbedding's cos_cache, sin_cache [S, hd/2] for the positions 0 .. S-1 of this batch (`r`, int64 Range):
    built per call from the batch's own length rather than stored for the model's longest input, so every position
    cumsum(mask) - 1 <= S - 1 has its row and the kernel's rule (cache rows >= sequence length) always holds; the
    same float32 products as `_rope_tables`, hence the same values."""
    key = f"{theta:g}_{hd}"
    rf = b.node("Unsqueeze", [b.node("Cast", [r], "rangef", to=TensorProto.FLOAT), _k(b, "ax_last", np.array([-1], np.int64))])
    freqs = b.node("Mul", [rf, _k(b, f"inv_freq_{key}", _inv_freq(theta, hd))], "freqs")  # [S, hd/2]
    return b.node("Cos", [freqs], f"cos_cache_{key}"), b.node("Sin", [freqs], f"sin_cache_{key}")


def _rotate_fused(b: GraphBuilder, x: str, pos_ids: str, cos_cache: str, sin_cache: str) -> str:
    """onnxruntime's RotaryEmbedding on heads [B, n, S, hd] (4-D: no num_heads attribute needed), non-interleaved
    (rotate_half, as transformers): the same x * cos + rotate_half(x) * sin as `_rotate` in one kernel, measured
    1.9x faster than the six standard ops at [8, 16, 256, 64] (tools/fused_ops.py, docs/benchmarks.md)."""
    return b.node("RotaryEmbedding", [x, pos_ids, cos_cache, sin_cache], "rope", domain="com.microsoft", interleaved=0)


def build_rotary(model: Model, a: Arch, fused: bool = True, feed_weights: frozenset[str] = frozenset(),
                 capture_linear_inputs: bool = False) -> BuiltGraph:
    """The graph of a rotary-family model (`a`: its architecture; see the module docstring); same contract as
    `graphs.build_encoder`."""
    f, p = a.family, a.prefix
    w = WeightSource(model)
    b = GraphBuilder(frozenset(feed_weights), portable=not fused)
    nh, kvh, hd, H = a.heads, a.kv_heads, a.head_dim, a.hidden
    groups = nh // kvh

    x = _embedding(b, w, "input_ids", p + f.token_table)
    if f.embed_scale:
        x = b.node("Mul", [x, _k(b, "embed_scale", np.array(H ** 0.5, np.float32))], "emb_scaled")
    if f.token_type and w.has(p + f.token_type):
        x = b.node("Add", [x, _k(b, "token_type_0", w.get_f32(p + f.token_type)[0])], "emb_tt")
    if f.emb_norm:
        x = _norm(b, w, x, p + f.emb_norm, a)

    # positions from the mask (left or right padding), and the additive attention mask [B, 1, S, S]
    maskb = b.node("Cast", ["attention_mask"], "maskb", to=TensorProto.BOOL)
    zero_i, one_i = _k(b, "zero_i", np.array(0, np.int64)), _k(b, "one_i", np.array(1, np.int64))
    if fused:  # RotaryEmbedding's position_ids: int64 [B, S] in [0, S), padding clipped to 0
        cum = b.node("CumSum", [b.node("Cast", [maskb], "maski", to=TensorProto.INT64), _k(b, "axis1", np.array(1, np.int64))], "cum")
        pos = b.node("Max", [b.node("Sub", [cum, one_i]), zero_i], "pos_ids")
    else:  # float positions for the standard-op cos/sin tables
        maskf = b.node("Cast", ["attention_mask"], "maskf", to=TensorProto.FLOAT)
        pos = b.node("Relu", [b.node("Sub", [b.node("CumSum", [maskf, _k(b, "axis1", np.array(1, np.int64))], "cum"),
                                             _k(b, "onef", np.array(1.0, np.float32))])], "pos")
    seq = b.node("Squeeze", [b.node("Shape", ["input_ids"], "seq1", start=1, end=2), _k(b, "axis0", np.array([0], np.int64))], "seq")
    r = b.node("Range", [zero_i, seq, one_i], "range")
    dist = b.node("Sub", [b.node("Unsqueeze", [r, _k(b, "ax0", np.array([0], np.int64))]),
                          b.node("Unsqueeze", [r, _k(b, "ax1b", np.array([1], np.int64))])], "dist")  # [i, j] = j - i
    keys_ok = b.node("Unsqueeze", [maskb, _k(b, "axes12", np.array([1, 2], np.int64))], "keys_ok")  # [B, 1, 1, S]
    neg = _k(b, "neg", np.array(np.finfo(np.float32).min, np.float32))
    zero = _k(b, "zerof", np.array(0.0, np.float32))

    def additive(window: int | None) -> str:
        ok = keys_ok
        if a.causal:
            ok = b.node("And", [ok, b.node("LessOrEqual", [dist, _k(b, "zero_d", np.array(0, np.int64))], "causal")], "ok")
        if window is not None:
            near = b.node("LessOrEqual", [b.node("Abs", [dist]), _k(b, f"window_{window}", np.array(window, np.int64))], "near")
            ok = b.node("And", [ok, near], "ok")
        add = b.node("Where", [ok, zero, neg], "addmask")  # [B, 1, S, S]
        return b.node("Unsqueeze", [add, _k(b, "ax2", np.array([2], np.int64))], "addmask5")  # [B, 1, 1, S, S]

    masks: dict[int | None, str] = {}
    tables: dict[float, tuple[str, str]] = {}
    scale = _k(b, "scale", np.array(a.scaling, np.float32))
    normed: str | None = None  # pre-norm families: the previous residual add's norm for what comes next (`_residual`)
    for i in range(a.layers):
        L = p + f.layers.format(i=i)
        window, theta = a.windows[i], a.thetas[i]
        if window not in masks:
            masks[window] = additive(window)
        if theta not in tables:  # one pair per rotary theta (ModernBERT, EmbeddingGemma: global and local)
            tables[theta] = _rope_cache(b, r, theta, hd) if fused else _rope_tables(b, pos, theta, hd)
        cos, sin = tables[theta]
        h = x
        if normed is not None:  # this layer's attention norm, made with the residual add before it
            h = normed
        elif f.pre_norm and w.has(L + f.attn_norm + ".weight"):  # ModernBERT layer 0 has no attention norm
            h = _norm(b, w, x, L + f.attn_norm, a)
        if f.qkv:
            q, k, v = _split(b, _linear(b, w, h, L + f.qkv), [nh * hd, kvh * hd, kvh * hd])
        else:
            q, k, v = (_linear(b, w, h, L + n) for n in (f.q, f.k, f.v))
        q, k, v = _heads(b, q, nh, hd), _heads(b, k, kvh, hd), _heads(b, v, kvh, hd)
        if f.qk_norm:
            q = _norm(b, w, q, L + f.qk_norm[0], a)
            k = _norm(b, w, k, L + f.qk_norm[1], a)
        if fused:
            q, k = _rotate_fused(b, q, pos, cos, sin), _rotate_fused(b, k, pos, cos, sin)
        else:
            q, k = _rotate(b, q, cos, sin, hd), _rotate(b, k, cos, sin, hd)
        # grouped-query attention: query head j uses key/value head j // groups
        q5 = b.node("Reshape", [q, _k(b, "shape_q5", np.array([0, kvh, groups, -1, hd], np.int64))], "q5")
        kT = b.node("Unsqueeze", [b.node("Transpose", [k], "kT", perm=[0, 1, 3, 2]), _k(b, "ax2", np.array([2], np.int64))])
        v5 = b.node("Unsqueeze", [v, _k(b, "ax2", np.array([2], np.int64))], "v5")
        sc = b.node("Mul", [b.node("MatMul", [q5, kT]), scale], "scaled")  # [B, kvh, g, S, S]
        pr = b.node("Softmax", [b.node("Add", [sc, masks[window]], "scores")], "probs", axis=-1)
        ctx = b.node("Reshape", [b.node("MatMul", [pr, v5]), _k(b, "shape_ctx4", np.array([0, nh, -1, hd], np.int64))], "ctx4")
        ctx = b.node("Reshape", [b.node("Transpose", [ctx], perm=[0, 2, 1, 3]),
                                 _k(b, "shape_ctx", np.array([0, 0, nh * hd], np.int64))], "ctx")
        x, h = _residual(b, w, a, f, x, _linear(b, w, ctx, L + f.o), L, f.post_attn_norm, f.attn_norm, "res1",
                         then=L + f.mlp_norm if f.pre_norm else None)
        h = h or x  # post-norm families: the normed sum itself
        if f.mlp_fused:
            first, second = _split(b, _linear(b, w, h, L + f.mlp_fused), None)
            g = b.node("Mul", [_act(b, first, a.act), second] if f.act_on_first else [first, _act(b, second, a.act)], "glu")
        else:
            g = b.node("Mul", [_act(b, _linear(b, w, h, L + f.mlp_gate), a.act), _linear(b, w, h, L + f.mlp_up)], "glu")
        # the next norm of this sum: the next layer's attention norm, or the final norm after the last layer
        nxt = p + f.layers.format(i=i + 1) + f.attn_norm if i + 1 < a.layers else (p + f.final_norm if f.final_norm else None)
        x, normed = _residual(b, w, a, f, x, _linear(b, w, g, L + f.mlp_out), L, f.post_mlp_norm, f.mlp_norm, "res2",
                              then=nxt if f.pre_norm and nxt and w.has(nxt + ".weight") else None)
    if f.final_norm:
        x = normed if normed is not None else _norm(b, w, x, p + f.final_norm, a)
    return finish_graph(b, x, H, f"embtool_{f.name}", capture_linear_inputs)
