"""Graphs of the rotary-position families: ModernBERT, NomicBERT, GTE "new", EmbeddingGemma (encoders) and Qwen3 (decoder).

The five share one layer shape — token embedding, rotary attention, a gated MLP — and differ in data, so each
is a `Family` description read by one builder (`build_rotary`); no PyTorch, the same weight encodings as the
BERT builder (plain, packed n-bit -> MatMulNBits / GatherBlockQuantized, OFA factors):

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
replaces (tools/experiments/fused_ops.py): SimplifiedLayerNormalization for RMSNorm, and RotaryEmbedding (below). A third,
com.microsoft SkipSimplifiedLayerNormalization, is built behind a switch (off, see below): where a residual add is followed by the RMSNorm of its sum (the RMS families, Qwen3 and EmbeddingGemma: each layer's
attention residual then the MLP's pre-norm, the MLP residual then the next layer's input norm or the final norm; one
kernel gives the normed sum and, through its input_skip_bias_sum output, the sum itself for the next residual; the
other RMSNorms — the first layer's input norm, q/k norms, Gemma's post-norms of a block's output, which norm no sum —
stay SimplifiedLayerNormalization). com.microsoft RotaryEmbedding is used for
the rotation of q and k (heads [B, n, S, hd], non-interleaved, int64 positions clipped to >= 0 for padding, a
cos/sin cache [S, hd/2] per rotary theta computed from the batch's length, so any length the standard ops take
runs, as before). The Skip fusion is off (`FUSE_SKIP_RMSNORM = False`): against Add + SimplifiedLayerNormalization, the
default before it, onnxruntime 1.32's fused kernel measured 0.85x, 0.95x and 1.04x in three runs of
`tools/experiments/fused_ops.py --only "Add + SimplifiedLayerNormalization"`, so the graph keeps the two nodes; the switch builds
it (tests/test_arch.py keeps it checked).
`fused=False` (`export-onnx --portable`) keeps standard ONNX operators only: RMSNorm as seven ops after a plain Add,
rotary as x * cos + rotate_half(x) * sin with cos/sin tables [B, 1, S, hd] from float positions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from onnx import TensorProto, helper

from embtool.core.errors import CorruptFile, Unsupported
from embtool.core.model import Model
from embtool.runtime.bert_graph import (BuiltGraph, GraphBuilder, WeightSource, _activation, finish_graph,
                                        _embedding, _linear)

# residual add + RMSNorm of the sum as one com.microsoft SkipSimplifiedLayerNormalization (fused graphs, RMS families);
# False: a plain Add, then SimplifiedLayerNormalization (see the module docstring)
FUSE_SKIP_RMSNORM = False  # measured no faster than Add + SimplifiedLayerNormalization (0.85x, 0.95x, 1.04x in 3 runs)


@dataclass(frozen=True)
class Family:
    """Where a family keeps its weights (relative to the model prefix) and how its layers are wired."""

    model_type: str
    embedding: str  # token table base name
    layers: str  # layer prefix, with {i}
    attn_norm: str
    mlp_norm: str
    o: str
    mlp_out: str
    qkv: str | None = None  # fused [q; k; v] projection, or separate q / k / v below
    q: str = ""
    k: str = ""
    v: str = ""
    qk_norm: tuple[str, str] | None = None  # RMSNorm of each query / key head (Qwen3)
    mlp_fused: str | None = None  # fused gated MLP input [first; second]
    mlp_gate: str = ""  # separate gate and up projections
    mlp_up: str = ""
    act_on_first: bool = True  # fused MLP: act(first half) * second half, else first * act(second)
    emb_norm: str | None = None
    token_type: str | None = None
    final_norm: str | None = None
    pre_norm: bool = True
    rms: bool = False
    rms_offset: float = 0.0  # Gemma's RMSNorm scales by (offset + weight)
    causal: bool = False
    post_attn_norm: str | None = None  # Gemma's sandwich norms: on the attention / MLP output, before the residual
    post_mlp_norm: str | None = None
    embed_scale: bool = False  # Gemma: token embeddings times sqrt(hidden)


MODERNBERT = Family("modernbert", "embeddings.tok_embeddings", "layers.{i}.", "attn_norm", "mlp_norm", "attn.Wo", "mlp.Wo",
                    qkv="attn.Wqkv", mlp_fused="mlp.Wi", act_on_first=True, emb_norm="embeddings.norm",
                    final_norm="final_norm")
NOMIC = Family("nomic_bert", "embeddings.word_embeddings", "encoder.layers.{i}.", "norm1", "norm2", "attn.out_proj", "mlp.fc2",
               qkv="attn.Wqkv", mlp_gate="mlp.fc12", mlp_up="mlp.fc11", emb_norm="emb_ln",
               token_type="embeddings.token_type_embeddings.weight", pre_norm=False)
GTE = Family("gte", "embeddings.word_embeddings", "encoder.layer.{i}.", "attn_ln", "mlp_ln", "attention.o_proj", "mlp.down_proj",
             qkv="attention.qkv_proj", mlp_fused="mlp.up_gate_proj", act_on_first=False, emb_norm="embeddings.LayerNorm",
             token_type="embeddings.token_type_embeddings.weight", pre_norm=False)
QWEN3 = Family("qwen3", "embed_tokens", "layers.{i}.", "input_layernorm", "post_attention_layernorm", "self_attn.o_proj",
               "mlp.down_proj", q="self_attn.q_proj", k="self_attn.k_proj", v="self_attn.v_proj",
               qk_norm=("self_attn.q_norm", "self_attn.k_norm"), mlp_gate="mlp.gate_proj", mlp_up="mlp.up_proj",
               final_norm="norm", rms=True, causal=True)
GEMMA3 = Family("gemma3_text", "embed_tokens", "layers.{i}.", "input_layernorm", "pre_feedforward_layernorm", "self_attn.o_proj",
                "mlp.down_proj", q="self_attn.q_proj", k="self_attn.k_proj", v="self_attn.v_proj",
                qk_norm=("self_attn.q_norm", "self_attn.k_norm"), mlp_gate="mlp.gate_proj", mlp_up="mlp.up_proj",
                final_norm="norm", rms=True, rms_offset=1.0, causal=True, post_attn_norm="post_attention_layernorm",
                post_mlp_norm="post_feedforward_layernorm", embed_scale=True)
FAMILIES = {f.model_type: f for f in (MODERNBERT, NOMIC, GTE, QWEN3, GEMMA3)}
FAMILIES["new"] = GTE  # Alibaba's remote-code model_type for the same weights (gte-*-v1.5, gte-multilingual)


@dataclass
class RotaryArch:
    family: Family
    prefix: str
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    eps: float
    act: str
    thetas: list[float]  # per layer
    windows: list[int | None]  # per layer: None = global attention, w = keys with |i - j| <= w
    causal: bool = False
    scaling: float = 0.0  # attention scores times this (1/sqrt(head_dim) unless the config says otherwise)


def _cfg(cfg: dict, *keys, default=None):
    for k in keys:
        if cfg.get(k) is not None:
            return cfg[k]
    return default


def _theta(cfg: dict, layer_type: str | None, where: str, default: float) -> float:
    rp = cfg.get("rope_parameters") or {}
    if layer_type and isinstance(rp.get(layer_type), dict):
        rp = rp[layer_type]
    scaling = cfg.get("rope_scaling")
    rope_type = (rp.get("rope_type") or rp.get("type") or "default") if isinstance(rp, dict) else "default"
    if scaling or rope_type != "default":
        raise Unsupported(f"{where}: rotary scaling {scaling or rope_type!r} is not supported (plain rotary only)")
    if isinstance(rp, dict) and rp.get("rope_theta") is not None:
        return float(rp["rope_theta"])
    return float(default)


def detect_rotary(model: Model) -> RotaryArch:
    """Read config.json of a rotary family; refuse what the builder does not reproduce, up front."""
    cfg, where = model.config, model.root / "config.json"
    mt = str(cfg.get("model_type", "")).lower()
    fam = FAMILIES[mt]
    ws = model.weights
    assert ws is not None
    anchor = next((k for k in ws.keys() for s in (".weight", ".qweight", ".factor_F", ".factor_F.qweight")
                   if k.endswith(fam.embedding + s) and (k == fam.embedding + s or k.endswith("." + fam.embedding + s))), None)
    if anchor is None:
        raise CorruptFile(f"{model.root}: no {fam.embedding} tensor in the weights of this {mt} model")
    prefix = anchor[: anchor.rindex(fam.embedding)]
    hidden = _cfg(cfg, "hidden_size", "n_embd")
    layers = _cfg(cfg, "num_hidden_layers", "n_layer")
    heads = _cfg(cfg, "num_attention_heads", "n_head")
    if not all(isinstance(x, int) and x > 0 for x in (hidden, layers, heads)):
        raise CorruptFile(f"{where}: config.json sizes are missing or wrong (hidden {hidden}, heads {heads}, layers {layers})")
    kv_heads = int(_cfg(cfg, "num_key_value_heads", default=heads))
    head_dim = int(_cfg(cfg, "head_dim", default=hidden // heads))
    if mt != "qwen3" and head_dim * heads != hidden:
        raise CorruptFile(f"{where}: hidden size {hidden} is not heads {heads} x head_dim {head_dim}")
    if kv_heads <= 0 or heads % kv_heads or head_dim % 2:
        raise CorruptFile(f"{where}: {heads} attention heads cannot share {kv_heads} key/value heads of size {head_dim}")
    if mt == "nomic_bert":  # the hub's own config keys (n_embd, rotary_emb_base, ...) read as well
        if float(cfg.get("rotary_emb_fraction", 1.0)) != 1.0 or cfg.get("rotary_emb_interleaved"):
            raise Unsupported(f"{where}: partial or interleaved rotary embeddings are not supported")
        if cfg.get("prenorm") or cfg.get("causal"):
            raise Unsupported(f"{where}: NomicBERT with prenorm or causal attention is not supported")
    if mt in ("gte", "new"):  # the remote-code "new" config: only its plain rotary, LayerNorm form
        if cfg.get("logn_attention_scale") or str(cfg.get("layer_norm_type", "layer_norm")) != "layer_norm" \
                or str(cfg.get("position_embedding_type", "rope")) != "rope":
            raise Unsupported(f"{where}: GTE with logn attention scaling, {cfg.get('layer_norm_type')} or "
                              f"{cfg.get('position_embedding_type')} positions is not supported")
    windows: list[int | None] = [None] * layers
    causal, scaling = fam.causal, 1.0 / math.sqrt(head_dim)
    if mt == "gemma3_text":  # EmbeddingGemma: Gemma 3 with bidirectional attention
        if cfg.get("attn_logit_softcapping") is not None:
            raise Unsupported(f"{where}: attention logit soft-capping is not supported")
        causal = not cfg.get("use_bidirectional_attention", False)
        pattern = int(cfg.get("sliding_window_pattern", 6))
        types = cfg.get("layer_types") or ["sliding_attention" if (i + 1) % pattern else "full_attention" for i in range(layers)]
        if len(types) != layers or not set(types) <= {"full_attention", "sliding_attention"}:
            raise CorruptFile(f"{where}: layer_types does not list full/sliding attention for {layers} layers")
        sw = int(cfg.get("sliding_window") or 4096)
        # transformers: causal layers see keys i - sw < j <= i; bidirectional ones |i - j| < sw // 2 + 1 (config.json
        # stores the bidirectional window doubled)
        w = sw // 2 if not causal else sw - 1
        windows = [w if t == "sliding_attention" else None for t in types]
        g = _theta(cfg, "full_attention", str(where), cfg.get("rope_theta", 1000000.0))
        loc = _theta(cfg, "sliding_attention", str(where), cfg.get("rope_local_base_freq", 10000.0))
        thetas = [g if w is None else loc for w in windows]
        scaling = float(cfg.get("query_pre_attn_scalar", 256)) ** -0.5
        eps, act = float(cfg.get("rms_norm_eps", 1e-6)), str(_cfg(cfg, "hidden_activation", "hidden_act", default="gelu_pytorch_tanh"))
    elif mt == "modernbert":
        types = cfg.get("layer_types") or ["sliding_attention" if i % int(cfg.get("global_attn_every_n_layers", 3))
                                           else "full_attention" for i in range(layers)]
        if len(types) != layers or not set(types) <= {"full_attention", "sliding_attention"}:
            raise CorruptFile(f"{where}: layer_types does not list full/sliding attention for {layers} layers")
        half = int(cfg.get("local_attention", 128)) // 2
        windows = [half if t == "sliding_attention" else None for t in types]
        g = _theta(cfg, "full_attention", str(where), cfg.get("global_rope_theta", 160000.0))
        loc = _theta(cfg, "sliding_attention", str(where), cfg.get("local_rope_theta", 10000.0))
        thetas = [g if w is None else loc for w in windows]
        eps, act = float(cfg.get("norm_eps", 1e-5)), str(cfg.get("hidden_activation", "gelu"))
    else:
        theta = _theta(cfg, None, str(where), _cfg(cfg, "rope_theta", "rotary_emb_base", default=10000.0))
        thetas = [theta] * layers
        if mt == "qwen3":
            if cfg.get("use_sliding_window") or any(t != "full_attention" for t in cfg.get("layer_types") or []):
                raise Unsupported(f"{where}: Qwen3 sliding-window layers are not supported")
            eps = float(cfg.get("rms_norm_eps", 1e-6))
        else:
            eps = float(_cfg(cfg, "layer_norm_eps", "layer_norm_epsilon", default=1e-12))
        act = str(_cfg(cfg, "hidden_act", "activation_function", default="silu"))
        act = "silu" if act == "swiglu" else "gelu" if act == "geglu" else act
    return RotaryArch(fam, prefix, hidden, layers, heads, kv_heads, head_dim, eps, act, thetas, windows, causal, scaling)


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


def _rms_scale(w: WeightSource, base: str, a: RotaryArch) -> np.ndarray:
    """An RMSNorm's weight as the kernels take it: Gemma's (1 + w) folded in."""
    return (w.get_f32(base + ".weight") + np.float32(a.family.rms_offset)).astype(np.float32)


def _norm(b: GraphBuilder, w: WeightSource, x: str, base: str, a: RotaryArch) -> str:
    if a.family.rms and not b.portable:
        # onnxruntime's SimplifiedLayerNormalization computes the same x / sqrt(mean(x^2) + eps) * weight in one
        # kernel: measured 2.1x faster than the seven standard ops at [8, 256, 1024] (tools/experiments/fused_ops.py, docs/benchmarks.md)
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
    1.9x faster than the six standard ops at [8, 16, 256, 64] (tools/experiments/fused_ops.py, docs/benchmarks.md)."""
    return b.node("RotaryEmbedding", [x, pos_ids, cos_cache, sin_cache], "rope", domain="com.microsoft", interleaved=0)


def build_rotary(model: Model, fused: bool = True, feed_weights: frozenset[str] = frozenset(),
                 capture_linear_inputs: bool = False) -> BuiltGraph:
    """The graph of a rotary-family model (see the module docstring); same contract as `build_encoder`."""
    a = detect_rotary(model)
    f, p = a.family, a.prefix
    w = WeightSource(model)
    b = GraphBuilder(frozenset(feed_weights), portable=not fused)
    nh, kvh, hd, H = a.heads, a.kv_heads, a.head_dim, a.hidden
    groups = nh // kvh

    x = _embedding(b, w, "input_ids", p + f.embedding)
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
    return finish_graph(b, x, H, f"embtool_{f.model_type}", capture_linear_inputs)
