"""The graph builders' one entry point: a safetensors model -> its ONNX encoder graph, built in memory.

Every family is a description in core/architectures.py; `detect_arch` resolves it against the model's config.json
and weights, and the family's `builder` picks the blocks: `bert_graph` (learned positions: BERT, RoBERTa, XLM-R,
CamemBERT, DistilBERT, MPNet) or `rotary_graph` on bert_graph's pieces (ModernBERT, NomicBERT, GTE, Qwen3,
EmbeddingGemma). `fed_encoder` gives the graph with chosen weights fed as graph inputs (for calibration) for a
safetensors model and, from its own graph, for an ONNX model.
"""

from __future__ import annotations

import numpy as np

from embtool.core.architectures import SUPPORTED, Arch, model_type
from embtool.core.errors import Unsupported
from embtool.core.model import Model, model_arch
from embtool.runtime.bert_graph import BuiltGraph, build_bert
from embtool.runtime.rotary_graph import build_rotary

BUILDERS = {"bert": build_bert, "rotary": build_rotary}  # a family's `builder` -> the function that emits its graph


def detect_arch(model: Model) -> Arch:
    """The architecture the builder will use (core/architectures.py); Unsupported / CorruptFile when it cannot build
    the model."""
    arch = model_arch(model)
    if arch is None:
        mt, where = model_type(model.config), model.root / "config.json"
        if not mt:
            raise Unsupported(f"{where}: no model_type (a string) says the architecture; supported: {', '.join(SUPPORTED)}")
        raise Unsupported(f"{where}: architecture (model_type) {mt!r} is not supported for safetensors models "
                          f"(supported: {', '.join(SUPPORTED)}); export it to ONNX and give embtool the .onnx")
    if arch.unsupported:
        raise Unsupported(arch.unsupported)
    return arch


def build_encoder(model: Model, fused: bool = True, feed_weights: frozenset[str] = frozenset(),
                  capture_linear_inputs: bool = False) -> BuiltGraph:
    """The encoder graph: inputs input_ids, attention_mask [batch, seq] int64; output last_hidden_state
    [batch, seq, hidden] float32 (see bert_graph.build_bert for the options)."""
    a = detect_arch(model)
    return BUILDERS[a.family.builder](model, a, fused, feed_weights, capture_linear_inputs)


def onnx_fed_graph(model: Model, weights: frozenset[str], capture_linear_inputs: bool = False) -> BuiltGraph:
    """An ONNX model's own graph with the initializers `weights` turned into graph inputs, fed from writable copies
    (`BuiltGraph.feeds`, as stored: a MatMul's B [in, out]). `linear_inputs` maps the B of every MatMul to its input A;
    capture_linear_inputs also outputs those inputs (for calibration statistics)."""
    import onnx
    from onnx import helper, numpy_helper

    src = model.onnx_model
    g = onnx.GraphProto()
    g.CopyFrom(src.graph)
    keep, feeds = [], {}
    for t in g.initializer:
        if t.name in weights:
            feeds[t.name] = np.array(numpy_helper.to_array(t), copy=True)
        else:
            keep.append(t)
    del g.initializer[:]
    g.initializer.extend(keep)
    # an IR < 4 graph (or one exported with keep_initializers_as_inputs) also lists its initializers as inputs:
    # those left as initializers are constants here, not inputs a runner must feed
    consts = {t.name for t in keep}
    data = [i for i in g.input if i.name not in consts]
    del g.input[:]
    g.input.extend(data)
    declared = {i.name for i in g.input}
    g.input.extend(helper.make_tensor_value_info(k, helper.np_dtype_to_tensor_dtype(a.dtype), list(a.shape))
                   for k, a in feeds.items() if k not in declared)
    matrices = {t.name for t in keep if len(t.dims) == 2} | {k for k, a in feeds.items() if a.ndim == 2}
    linear_inputs = {n.input[1]: n.input[0] for n in g.node if n.op_type == "MatMul" and len(n.input) == 2 and n.input[1] in matrices}
    if capture_linear_inputs:
        outs = {o.name for o in g.output}
        g.output.extend(onnx.ValueInfoProto(name=x) for x in sorted(set(linear_inputs.values())) if x not in outs)
    return BuiltGraph(g, feeds, tuple(src.opset_import), linear_inputs)


def fed_encoder(model: Model, weights: frozenset[str] | set[str], capture_linear_inputs: bool = False) -> tuple[BuiltGraph, dict[str, str]]:
    """The encoder graph with the float weights `weights` (named as quantize names them) fed as graph inputs, so that
    one session runs with changed copies of them (sensitivity probes, sequential GPTQ), and {weight: its feed} for
    those the graph reads. A fed Linear weight is its transpose [in, out] (safetensors: `X.weight` fed as
    `X.weight_T`; ONNX: a MatMul's own B), the token table is fed as it is (under its own name)."""
    weights = frozenset(weights)
    if model.format == "onnx":
        built = onnx_fed_graph(model, weights, capture_linear_inputs)
        return built, {w: w for w in weights if w in built.feeds}
    built = build_encoder(model, feed_weights=weights, capture_linear_inputs=capture_linear_inputs)
    fed = {w: w[: -len(".weight")] + ".weight_T" for w in weights if w.endswith(".weight")}
    fed = {w: f for w, f in fed.items() if f in built.feeds}
    return built, {**fed, **{w: w for w in weights if w in built.feeds}}
