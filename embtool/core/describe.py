"""What `inspect` reports: format, architecture, tokenizer, vocabulary-bound vs other parameters."""

from __future__ import annotations

from typing import Any

import numpy as np

from embtool.core.errors import CorruptFile
from embtool.core.formats import record
from embtool.core.qrecord import KEY, has_record, read_record, record_metadata
from embtool.core.model import Model, architecture, find_vocab_tensors, num_layers, onnx_initializer_stats


def describe(model: Model) -> dict[str, Any]:
    vocab = find_vocab_tensors(model)
    vocab_names = {v.name for v in vocab}
    if model.format == "safetensors":
        ws = model.weights
        assert ws is not None
        numel = {k: ws.info(k).numel for k in ws.keys()}
        _logical_weights(ws, numel)
        params = sum(numel.values())
        nbytes = sum(ws.info(k).nbytes for k in ws.keys())
        vparams = sum(numel[k] for k in vocab_names)
        vbytes = sum(ws.info(k).nbytes for k in vocab_names)
        dtypes: dict[str, int] = {}
        for k in ws.keys():
            dtypes[ws.info(k).dtype] = dtypes.get(ws.info(k).dtype, 0) + ws.info(k).numel
        layers = num_layers(ws.keys())
        meta = ws.metadata
    else:
        params, nbytes = onnx_initializer_stats(model)
        vparams = sum(int(np.prod(v.shape)) for v in vocab)
        vbytes = sum(v.nbytes for v in vocab)
        dtypes = {}
        for t in model.onnx_model.graph.initializer:
            from onnx import helper

            name = helper.tensor_dtype_to_np_dtype(t.data_type).name
            dtypes[name] = dtypes.get(name, 0) + (int(np.prod(t.dims)) if t.dims else 1)
        layers = model.config.get("num_hidden_layers", 0) or _onnx_layers(model.onnx_model.graph)
        meta = {p.key: p.value for p in model.onnx_model.metadata_props}
        ops = {}
        for n in model.onnx_model.graph.node:
            ops[n.op_type] = ops.get(n.op_type, 0) + 1
    et = record.read(model.root)
    state = {"quantized": _quant_state(model, meta, et), "factorized": _factor_state(model, meta, et)}
    tok = model.tokenizer
    out: dict[str, Any] = {
        "path": str(model.root),
        "source": model.source.as_dict() if model.source is not None else None,  # a Hub id: id, revision, commit
        "format": model.format,
        "layout": model.layout.name,
        "weight_files": [str(p.relative_to(model.root)) if p.is_relative_to(model.root) else str(p) for p in model.weight_files()],
        "architecture": (architecture(model) if model.config or model.format != "onnx"
                         else "transformer encoder (read from the ONNX graph)"),
        "model_type": model.config.get("model_type"),
        "hidden_size": (model.config.get("hidden_size") or model.config.get("dim")
                        or (_onnx_hidden(model.onnx_model.graph, vocab) if model.format == "onnx" else None)),
        "layers": layers,
        "config_vocab_size": model.config.get("vocab_size"),
        "tokenizer": None if tok is None else {
            "type": tok.model_type,
            "vocab_size": tok.vocab_size(),
            "special_tokens": tok.special_tokens(),
        },
        "embedding_rows": vocab[0].shape[0] if vocab else None,
        "vocab_tensors": [{"name": v.name, "role": v.role, "shape": list(v.shape), "dtype": v.dtype, "bytes": v.nbytes}
                          for v in vocab],
        "parameters": {"total": params, "vocabulary": vparams, "rest": params - vparams,
                       "vocabulary_share": round(vparams / params, 4) if params else 0.0},
        "bytes": {"weights_file": model.weight_bytes(), "tensors": nbytes, "vocabulary": vbytes, "rest": nbytes - vbytes},
        "dtypes": dtypes,
        "pooling": model.st.pooling,
        "normalize": model.st.normalize,
        "state": state,
        "provenance": record.chain(et),
    }
    if model.format == "onnx":
        out["onnx_ops"] = dict(sorted(ops.items(), key=lambda kv: -kv[1]))
    return out


ATTENTION_OPS = ("Attention", "MultiHeadAttention", "GroupQueryAttention", "PackedAttention")
NORM_OPS = ("LayerNormalization", "SkipLayerNormalization", "SimplifiedLayerNormalization",
            "EmbedLayerNormalization", "SkipSimplifiedLayerNormalization")


def _onnx_layers(graph) -> int:
    """Transformer layers of an ONNX graph: its attention nodes (fused), else its Softmax nodes (one per
    layer in an unfused export)."""
    ops = [n.op_type for n in graph.node]
    fused = sum(op in ATTENTION_OPS for op in ops)
    return fused or ops.count("Softmax")


def _onnx_hidden(graph, vocab) -> int | None:
    """Hidden size of an ONNX graph: the length of its first layer norm's scale, else the embedding
    table's width (a plain Gather table), else the last axis of a 3-D output."""
    inits = {t.name: t for t in graph.initializer}
    for n in graph.node:
        if n.op_type in NORM_OPS:
            for name in n.input[1:]:
                t = inits.get(name)
                if t is not None and len(t.dims) == 1 and t.dims[0] > 1:
                    return int(t.dims[0])
    if vocab and len(vocab[0].shape) == 2 and vocab[0].dtype in ("float32", "float16", "F32", "F16"):
        return int(vocab[0].shape[1])
    for o in graph.output:
        dims = o.type.tensor_type.shape.dim
        if len(dims) == 3 and dims[2].dim_value:
            return int(dims[2].dim_value)
    return None


def _quant_state(model: Model, meta: dict, et: dict) -> Any:
    q = et.get("quantization") or (has_record(meta) and {"scheme": record_metadata(read_record(meta, str(model.root)))[KEY]})
    if q:
        return q
    if model.format == "onnx":
        ops = {n.op_type for n in model.onnx_model.graph.node}
        found = sorted(ops & {"MatMulNBits", "GatherBlockQuantized", "DequantizeLinear", "MatMulInteger",
                              "DynamicQuantizeLinear", "QLinearMatMul"})
        inits = model.onnx_model.graph.initializer
        int8 = sum(1 for t in inits if t.data_type in (2, 3) and len(t.dims) == 2)
        if found or int8:
            return {"ops": found, "integer_matrices": int8}
    return None


def _factor_state(model: Model, meta: dict, et: dict) -> Any:
    if et.get("factorization"):
        return et["factorization"]
    if isinstance(model.config.get("embtool_factorization"), dict):
        return model.config["embtool_factorization"]
    if model.format == "safetensors" and model.weights is not None:
        F = [k for k in model.weights.keys() if k.endswith("factor_F")]
        if F:
            return {"rank": model.weights.info(F[0]).shape[1]}
    return None


def _logical_weights(ws, numel: dict[str, int]) -> None:
    """Quantized tensors count as the weights they encode (rows x K), not as packed bytes and scales."""
    try:
        rec = read_record(ws.metadata)
    except CorruptFile:
        return
    for base, info in rec.items():
        if base + ".qweight" in numel and isinstance(info.get("shape"), list):
            numel[base + ".qweight"] = int(np.prod(info["shape"]))
            for aux in (".scales", ".qzeros"):
                if base + aux in numel:
                    numel[base + aux] = 0
