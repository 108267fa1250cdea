"""Build the ONNX graph of a BERT-like encoder from its architecture (core/architectures.py) and safetensors weights,
and the blocks every builder shares (weight sources, Linear layers, the token embedding, the graph's tail).

No PyTorch: the graph is written with `onnx.helper` and run by onnxruntime. The families built here are those whose
description says `builder="bert"`: learned positions (from 0, or from padding_idx + 1 for RoBERTa / XLM-R /
CamemBERT / MPNet), optional token types, LayerNorm after each residual add, a plain MLP, and for MPNet
(all-mpnet-base-v2) a relative position bias shared by every layer, bucketed as transformers'
`MPNetEncoder.relative_position_bucket`. BERT (all-MiniLM, bge, e5), RoBERTa / XLM-R / CamemBERT, DistilBERT, MPNet.

Large vocabulary-bound tensors are not copied into the graph: they are declared as graph inputs
and fed at run time as OrtValues that wrap the memory-mapped safetensors data (zero copy), see
`BuiltGraph.feeds`. `BuiltGraph.to_model()` turns them into ordinary initializers for export.

The weight source is abstract (`WeightSource`): a tensor may be stored as plain float, as
embtool's packed n-bit groups (emitted as MatMulNBits / GatherBlockQuantized) or as OFA
factors F·P (emitted as Gather(F) + MatMul(P)).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from embtool.core.architectures import FACTOR_F, FACTOR_P, Arch
from embtool.core.errors import CorruptFile, Unsupported
from embtool.core.model import Model

OPSET = 21
MS_OPSET = 1
FUSE_QKV_BIAS = True  # the attention kernel adds the q, k, v biases (switch kept for measuring)


class WeightSource:
    """Resolves weight names to arrays; also knows embtool's quantized/factorized encodings."""

    def __init__(self, model: Model):
        from embtool.core.qrecord import read_record

        self.ws = model.weights
        assert self.ws is not None
        self.qmeta: dict = read_record(self.ws.metadata, str(model.root))

    def has(self, name: str) -> bool:
        return name in self.ws

    def get(self, name: str) -> np.ndarray:
        if name not in self.ws:
            raise CorruptFile(f"weight {name!r} is missing from the model")
        return self.ws.get(name)

    def get_f32(self, name: str) -> np.ndarray:
        a = self.get(name)
        return a if a.dtype == np.float32 else a.astype(np.float32)

    def ln(self, base: str) -> tuple[np.ndarray, np.ndarray]:
        if self.has(base + ".weight"):
            return self.get_f32(base + ".weight"), self.get_f32(base + ".bias")
        return self.get_f32(base + ".gamma"), self.get_f32(base + ".beta")


@dataclass
class BuiltGraph:
    graph: onnx.GraphProto
    feeds: dict[str, np.ndarray] = field(default_factory=dict)  # graph inputs that carry weights
    opsets: tuple = ()
    linear_inputs: dict[str, str] = field(default_factory=dict)  # `X.weight` -> its input tensor

    def to_model(self, embed_feeds: bool = True) -> onnx.ModelProto:
        g = onnx.GraphProto()
        g.CopyFrom(self.graph)
        if embed_feeds:
            keep = [i for i in g.input if i.name not in self.feeds]
            del g.input[:]
            g.input.extend(keep)
            for name, arr in self.feeds.items():
                g.initializer.append(numpy_helper.from_array(np.ascontiguousarray(arr), name))
        m = helper.make_model(g, opset_imports=list(self.opsets), producer_name="embtool")
        m.ir_version = 10
        return m


class GraphBuilder:
    """Emits nodes; one instance builds one graph."""

    def __init__(self, feed_weights: frozenset[str] = frozenset(), portable: bool = False) -> None:
        self.portable = portable  # standard ONNX operators only (no com.microsoft kernels)
        self.feed_weights = feed_weights  # weight names to pass as graph inputs (sensitivity probes)
        self.linear_inputs: dict[str, str] = {}  # Linear base name -> name of its input tensor
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.feeds: dict[str, np.ndarray] = {}
        self.feed_infos: list[onnx.ValueInfoProto] = []
        self._n = 0
        self.uses_ms = False

    def tmp(self, hint: str) -> str:
        self._n += 1
        return f"{hint}_{self._n}"

    def node(self, op: str, inputs: list[str], hint: str | None = None, domain: str = "", n_out: int = 1, **attrs) -> str:
        outs = [self.tmp(hint or op) for _ in range(n_out)]
        if domain == "com.microsoft":
            self.uses_ms = True
        self.nodes.append(helper.make_node(op, inputs, outs, domain=domain or None, **attrs))
        return outs[0]

    def const(self, name: str, arr: np.ndarray) -> str:
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(arr), name))
        return name

    def feed(self, name: str, arr: np.ndarray) -> str:
        """A weight passed at run time (zero copy) instead of embedded in the graph."""
        self.feeds[name] = arr
        elem = helper.np_dtype_to_tensor_dtype(arr.dtype)
        self.feed_infos.append(helper.make_tensor_value_info(name, elem, list(arr.shape)))
        return name


Emitter = Callable[[GraphBuilder, WeightSource, str, str], str]


def _bias(w: WeightSource, base: str, n: int) -> np.ndarray:
    """The bias of Linear `base` (zeros when it has none)."""
    return w.get_f32(base + ".bias") if w.has(base + ".bias") else np.zeros(n, np.float32)


def _linear(b: GraphBuilder, w: WeightSource, x: str, base: str, with_bias: bool = True) -> str:
    """x @ W^T + bias for a HF Linear `base` (weight [out, in]); quantized weights use MatMulNBits. with_bias=False:
    x @ W^T only (a fused consumer adds the bias)."""
    b.linear_inputs[base] = x
    if w.has(base + ".qweight"):
        from embtool.runtime import qops

        if b.portable:
            wt = b.node("Transpose", [qops.emit_dequantize_linear(b, w, base)], "wT", perm=[1, 0])
            y = b.node("MatMul", [x, wt], "mm")
        else:
            y = qops.emit_matmul_nbits(b, w, x, base)
    elif w.has(base + ".weight"):
        wt = np.ascontiguousarray(w.get_f32(base + ".weight").T)
        put = b.feed if base + ".weight" in b.feed_weights else b.const
        y = b.node("MatMul", [x, put(base + ".weight_T", wt)], "mm")
    else:
        raise CorruptFile(f"weight {base}.weight is missing from the model")
    if with_bias and w.has(base + ".bias"):
        y = b.node("Add", [y, b.const(base + ".bias", w.get_f32(base + ".bias"))], "add")
    return y


def _embedding(b: GraphBuilder, w: WeightSource, ids: str, base: str) -> str:
    """Token embedding lookup: plain Gather, quantized GatherBlockQuantized, or OFA Gather(F)·P."""
    if w.has(base + ".qweight"):
        from embtool.runtime import qops

        if b.portable:
            return b.node("Gather", [qops.emit_dequantize_linear(b, w, base), ids], "gather_E")
        return qops.emit_gather_block_quantized(b, w, ids, base)
    F = f"{base}.{FACTOR_F}"
    if w.has(F) or w.has(F + ".qweight"):
        if w.has(F + ".qweight") and b.portable:
            from embtool.runtime import qops

            rows = b.node("Gather", [qops.emit_dequantize_linear(b, w, F), ids], "gather_F")
        elif w.has(F + ".qweight"):
            from embtool.runtime import qops

            rows = qops.emit_gather_block_quantized(b, w, ids, F)
        else:
            rows = b.node("Gather", [b.feed(F, w.get(F)), ids], "gather_F")
            if w.get(F).dtype != np.float32:
                rows = b.node("Cast", [rows], "castF", to=TensorProto.FLOAT)
        P = w.get_f32(f"{base}.{FACTOR_P}")
        return b.node("MatMul", [rows, b.const(f"{base}.{FACTOR_P}", P)], "mm_P")
    E = w.get(base + ".weight")
    y = b.node("Gather", [b.feed(base + ".weight", E), ids], "gather_E")
    if E.dtype != np.float32:
        y = b.node("Cast", [y], "castE", to=TensorProto.FLOAT)
    return y


def build_bert(model: Model, a: Arch, fused: bool = True, feed_weights: frozenset[str] = frozenset(),
               capture_linear_inputs: bool = False) -> BuiltGraph:
    """The encoder graph of a BERT-like family (`a`: its architecture, core/architectures.py): inputs input_ids,
    attention_mask [batch, seq] int64;
    output last_hidden_state [batch, seq, hidden] float32.

    fused=True uses onnxruntime's com.microsoft kernels (MultiHeadAttention; MatMulNBits and
    GatherBlockQuantized for quantized weights); fused=False writes standard ONNX ops only
    (`--portable`: quantized weights become opset-21 blocked DequantizeLinear).
    feed_weights: Linear weights (names `X.weight`) to declare as graph inputs `X.weight_T`
    (transposed), so that one session can run with perturbed copies of them.
    capture_linear_inputs: also output every Linear's input (for calibration statistics);
    `BuiltGraph.linear_inputs` maps `X.weight` to the output name."""
    w = WeightSource(model)
    b = GraphBuilder(frozenset(feed_weights), portable=not fused)
    p, f = a.prefix, a.family
    H, nh, hd = a.hidden, a.heads, a.head_dim

    # embeddings
    x = _embedding(b, w, "input_ids", p + f.token_table)
    pos_table = w.get_f32(p + f.position_table)
    if f.positions == "absolute-padded":
        pad = b.const("pad_id", np.array(a.pad_id, dtype=np.int64))
        notpad = b.node("Cast", [b.node("Not", [b.node("Equal", ["input_ids", pad])])], "notpad", to=TensorProto.INT64)
        cum = b.node("CumSum", [notpad, b.const("axis1", np.array(1, dtype=np.int64))], "cumsum")
        pos_ids = b.node("Add", [b.node("Mul", [cum, notpad]), pad], "pos_ids")
        pos = b.node("Gather", [b.const("position_embeddings", pos_table), pos_ids], "pos")
    else:
        seq = b.node("Shape", ["input_ids"], "seqlen", start=1, end=2)
        pos = b.node("Slice", [b.const("position_embeddings", pos_table), b.const("zero1", np.array([0], np.int64)), seq,
                               b.const("axes0", np.array([0], np.int64))], "pos")
    x = b.node("Add", [x, pos], "emb")
    if f.token_type and w.has(p + f.token_type):
        tt = w.get_f32(p + f.token_type)[0]
        x = b.node("Add", [x, b.const("token_type_0", tt)], "emb_tt")
    g, bb = w.ln(p + f.emb_norm)
    x = b.node("LayerNormalization", [x, b.const("emb_ln.w", g), b.const("emb_ln.b", bb)], "emb_ln", axis=-1, epsilon=a.eps)

    pos_bias = _relative_position_bias(b, w, p + f.relative_bias, len(pos_table)) if f.relative_bias else None
    if fused:
        # onnxruntime's fused attention kernel; the key padding mask is the raw 0/1 mask as int32
        mask32 = b.node("Cast", ["attention_mask"], "mask32", to=TensorProto.INT32)
    else:
        # additive attention mask [batch, 1, 1, seq]
        maskf = b.node("Cast", ["attention_mask"], "maskf", to=TensorProto.FLOAT)
        neg = b.node("Mul", [b.node("Sub", [b.const("one", np.array(1.0, np.float32)), maskf]),
                             b.const("neg", np.array(np.finfo(np.float32).min, np.float32))], "negmask")
        addmask = b.node("Unsqueeze", [neg, b.const("axes12", np.array([1, 2], np.int64))], "addmask")
        shp_heads = b.const("shape_heads", np.array([0, 0, nh, hd], np.int64))
        shp_hidden = b.const("shape_hidden", np.array([0, 0, H], np.int64))
        scale = b.const("scale", np.array(1.0 / math.sqrt(hd), np.float32))
    for i in range(a.layers):
        L = p + f.layers.format(i=i)
        if fused:
            # with FUSE_QKV_BIAS the q, k, v biases are added inside the attention kernel (its packed [3H] bias
            # input), not by three Adds over [tokens, hidden]: same values, all-MiniLM embed 1.04x (CPU time,
            # 1 thread, medians of 5)
            q, k, v = (_linear(b, w, x, L + name, with_bias=not FUSE_QKV_BIAS) for name in (f.q, f.k, f.v))
            qkv_bias = b.const(L + "qkv.bias", np.concatenate([_bias(w, L + name, H) for name in (f.q, f.k, f.v)])) \
                if FUSE_QKV_BIAS else ""
            ctx = b.node("MultiHeadAttention", [q, k, v, qkv_bias, mask32, *([pos_bias] if pos_bias else [])], "mha",
                         domain="com.microsoft", num_heads=nh)
        else:
            q = b.node("Transpose", [b.node("Reshape", [_linear(b, w, x, L + f.q), shp_heads])], "q", perm=[0, 2, 1, 3])
            k = b.node("Transpose", [b.node("Reshape", [_linear(b, w, x, L + f.k), shp_heads])], "k", perm=[0, 2, 3, 1])
            v = b.node("Transpose", [b.node("Reshape", [_linear(b, w, x, L + f.v), shp_heads])], "v", perm=[0, 2, 1, 3])
            sc = b.node("Mul", [b.node("MatMul", [q, k]), scale], "scaled")
            if pos_bias:
                sc = b.node("Add", [sc, pos_bias], "biased")
            sc = b.node("Add", [sc, addmask], "scores")
            pr = b.node("Softmax", [sc], "probs", axis=-1)
            ctx = b.node("Reshape", [b.node("Transpose", [b.node("MatMul", [pr, v])], perm=[0, 2, 1, 3]), shp_hidden], "ctx")
        x = _residual_norm(b, w, a, x, ctx, L + f.o, L + f.attn_norm)
        h = _linear(b, w, x, L + f.mlp_in)
        h = _activation(b, h, a.act)
        x = _residual_norm(b, w, a, x, h, L + f.mlp_out, L + f.mlp_norm)
    return finish_graph(b, x, H, "embtool_encoder", capture_linear_inputs)


def _residual_norm(b: GraphBuilder, w: WeightSource, a: Arch, x: str, h: str, linear: str, norm: str) -> str:
    """LayerNorm(x + h @ W^T + bias): the sublayer's output projection and the residual step. (onnxruntime's
    SkipLayerNormalization, which fuses the bias, the residual and the norm, measured 0.87x on all-MiniLM: not used.)"""
    g, bb = w.ln(norm)
    y = _linear(b, w, h, linear)
    return b.node("LayerNormalization", [b.node("Add", [x, y]), b.const(norm + ".w", g), b.const(norm + ".b", bb)],
                  "ln", axis=-1, epsilon=a.eps)


def finish_graph(b: "GraphBuilder", x: str, hidden: int, name: str, capture_linear_inputs: bool = False) -> "BuiltGraph":
    """The common tail of every builder: `x` becomes the `last_hidden_state` output [batch, sequence, hidden] of a
    graph with inputs input_ids and attention_mask (plus the fed weights), and the opsets the nodes use."""
    b.nodes.append(helper.make_node("Identity", [x], ["last_hidden_state"]))
    inputs = [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "sequence"]),
              helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "sequence"])]
    outputs = [helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, ["batch", "sequence", hidden])]
    if capture_linear_inputs:
        for x_name in sorted(set(b.linear_inputs.values())):
            outputs.append(helper.make_tensor_value_info(x_name, TensorProto.FLOAT, None))
    graph = helper.make_graph(b.nodes, name, inputs + b.feed_infos, outputs, b.inits)
    opsets = [helper.make_opsetid("", OPSET)]
    if b.uses_ms:
        opsets.append(helper.make_opsetid("com.microsoft", MS_OPSET))
    return BuiltGraph(graph, b.feeds, tuple(opsets), {k + ".weight": v for k, v in b.linear_inputs.items()})


def relative_position_buckets(relative: np.ndarray, num_buckets: int = 32, max_distance: int = 128) -> np.ndarray:
    """transformers' `MPNetEncoder.relative_position_bucket` (T5-style, bidirectional), in float32 like torch."""
    n = -relative.astype(np.int64)
    num_buckets //= 2
    ret = (n < 0).astype(np.int64) * num_buckets
    n = np.abs(n)
    max_exact = num_buckets // 2
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.log(n.astype(np.float32) / np.float32(max_exact)) / np.float32(math.log(max_distance / max_exact))
    large = max_exact + np.trunc(np.where(n < max_exact, 0, ratio * np.float32(num_buckets - max_exact))).astype(np.int64)
    large = np.minimum(large, num_buckets - 1)
    return ret + np.where(n < max_exact, n, large)


def _relative_position_bias(b: GraphBuilder, w: WeightSource, name: str, max_positions: int) -> str:
    """[1, heads, seq, seq]: table[bucket(j - i)] for query i and key j (MPNet's `compute_position_bias`:
    plain 0..seq-1 positions, the same bias in every layer). The bias of every relative distance the
    model can see is gathered once from the table; the [seq, seq] distances index it at run time."""
    table = w.get_f32(name)  # [buckets, heads]
    P = int(max_positions)
    rel = np.arange(-(P - 1), P, dtype=np.int64)
    per_distance = b.node("Gather", [b.const(name, table), b.const("rel_buckets", relative_position_buckets(rel, table.shape[0]))],
                          "bias_by_distance")  # [2P-1, heads]
    seq = b.node("Squeeze", [b.node("Shape", ["input_ids"], "seq1", start=1, end=2), b.const("axis0", np.array([0], np.int64))], "seq")
    r = b.node("Range", [b.const("zero", np.array(0, np.int64)), seq, b.const("one_i", np.array(1, np.int64))], "range")
    dist = b.node("Sub", [b.node("Unsqueeze", [r, b.const("ax0", np.array([0], np.int64))]),
                          b.node("Unsqueeze", [r, b.const("ax1", np.array([1], np.int64))])], "dist")  # [i, j] = j - i
    idx = b.node("Add", [dist, b.const("dist_offset", np.array(P - 1, np.int64))], "dist_idx")
    bias = b.node("Transpose", [b.node("Gather", [per_distance, idx], "bias_sst")], "bias_hss", perm=[2, 0, 1])
    return b.node("Unsqueeze", [bias, b.const("ax0b", np.array([0], np.int64))], "pos_bias")


def _activation(b: GraphBuilder, h: str, act: str) -> str:
    act = act.lower()
    if act == "gelu":
        return b.node("Gelu", [h], "gelu")
    if act in ("gelu_new", "gelu_pytorch_tanh", "gelu_fast"):
        return b.node("Gelu", [h], "gelu", approximate="tanh")
    if act == "relu":
        return b.node("Relu", [h], "relu")
    raise Unsupported(f"activation {act!r} is not supported (gelu, gelu_new, relu)")
