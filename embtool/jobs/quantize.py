"""quantize: group-wise n-bit quantization of linear weights and the token-embedding table.

Output (safetensors, embtool's packed format; see README "Quantized format"): for a tensor `X.weight`
[rows, K] the file holds `X.qweight` (uint8 [rows, ceil(K*bits/8)], codes packed low bits first),
`X.scales` (float16 [rows, K/group]) and, when asymmetric, `X.qzeros` (zero points, packed the same
way: uint8 [rows, ceil(K/group*bits/8)]);
the quantization record (embtool.core.qrecord) records bits, group size and shape per tensor. This is
onnxruntime's MatMulNBits / GatherBlockQuantized layout, so embtool's runtime feeds the codes to
those kernels without a dequantized copy.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from embtool.algorithms import quantize as QA
from embtool.core.errors import InputError, Unsupported
from embtool.core.formats.record import provenance, write_model_record
from embtool.core.model import NOT_LINEAR, Model, find_vocab_tensors, open_model, weight_view
from embtool.core.qrecord import has_record, read_record, record_metadata
from embtool.core.model_out import (copy_unchanged, metadata_json, updated_config, write_configs, write_derived_model,
                                    write_weights)
from embtool.core.threads import cpu_threads
from embtool.core.writer import OutputFolder
from embtool.jobs.fidelity import ConvertRequest, OutputRequest, check_conversion, check_runnable, evaluate_output

METHODS = ("auto", "rtn", "gptq")
GPTQ_TEXTS = 256  # calibration lines read for GPTQ's input statistics


@dataclass
class QuantRequest(OutputRequest):
    model: str
    output: str | None
    bits: list[int] = field(default_factory=lambda: [4])
    group_size: int = 32
    symmetric: bool = False
    method: str = "auto"  # "auto" (gptq when the model has a tokenizer, else rtn) | "rtn" | "gptq" (linear layers;
    # the embedding table is always round-to-nearest). GPTQ's statistics come from --calib, else the built-in sample
    gptq_sequential: bool = True  # GPTQ stage by stage on the partly quantized model, fitted to the float model's
    # outputs (jobs/calibrate.sequential_gptq); False: every layer's inputs from one pass of the float model.
    # Mixed precision plans on the one pass, then quantizes the plan (each tensor at its width) sequentially.
    include: str | None = None
    exclude: str | None = None
    embeddings_only: bool = False
    fmt: str = "safetensors"
    portable: bool = False  # ONNX output with standard operators only (DequantizeLinear)
    # mixed precision (see jobs/mixed.py)
    target_bits: float | None = None
    max_size: int | None = None
    calib: str | None = None
    probes: int = 2
    sensitivity: str = "measured"  # "measured" (loss of the pooled embedding per tensor and width) | "hessian"
    seed: int = 0
    sensitivity_only: bool = False
    plan: dict[str, int] | None = None  # explicit bits per tensor (API only: used by the benchmarks' baselines)


def qbase(name: str) -> str:
    return name[: -len(".weight")] if name.endswith(".weight") else name


def select_tensors(m: Model, req: QuantRequest) -> tuple[list[str], str | None]:
    """Names of the float matrices to quantize, and which one is the token-embedding table."""
    if m.format == "onnx":
        return select_onnx_tensors(m, req)
    ws = m.weights
    assert ws is not None
    if any(k.endswith(".qweight") for k in ws.keys()) or has_record(ws.metadata):
        raise InputError(f"{m.root} is already quantized (embtool packed weights); quantize the float model instead, "
                         "or `embtool dequantize` it first")
    vt = find_vocab_tensors(m)
    emb = vt[0].name if vt and vt[0].role.startswith("input embedding") else None
    if emb is not None and ws.info(emb).dtype not in ("F32", "F16", "BF16"):
        raise InputError(f"{emb} is stored as {ws.info(emb).dtype}, not float: the model is already quantized")
    names = []
    for k in ws.keys():
        info = ws.info(k)
        if len(info.shape) != 2 or info.dtype not in ("F32", "F16", "BF16"):
            continue
        if k == emb:
            names.append(k)
        elif not req.embeddings_only and k.endswith(".weight") and not NOT_LINEAR.search(k) and "embeddings" not in k.split(".")[-2:][0]:
            names.append(k)
    if req.include:
        names = [k for k in names if re.search(req.include, k)]
    if req.exclude:
        names = [k for k in names if not re.search(req.exclude, k)]
    if not names:
        raise InputError("no tensor to quantize (check --include/--exclude/--embeddings-only)")
    for k in names:
        K = ws.info(k).shape[1]
        if K % req.group_size:
            raise InputError(f"{k}: input dimension {K} is not a multiple of --group-size {req.group_size} "
                             "(embtool does not pad groups; choose a group size that divides it)")
    return names, emb


def quantized_tensors(m: Model, plan: dict[str, int], group_size: int, symmetric: bool, grams: dict | None = None,
                      done: dict | None = None, workers: int = 1) -> tuple[dict, dict, list]:
    """(tensors for the output file, quantization record, per-tensor rows). `done`: tensors already
    quantized (by the mixed-precision planner, or by sequential GPTQ) at their planned bits; `workers`: threads
    of round-to-nearest."""
    grams = grams or {}
    done = done or {}
    ws = m.weights
    out: dict[str, np.ndarray] = {}
    record: dict[str, Any] = {}
    rows = []
    for k in ws.keys():
        if k not in plan:
            out[k] = ws.get(k)
            continue
        q, row = quantize_one(ws, k, plan[k], group_size, symmetric, grams.get(k), done, workers)
        bits = plan[k]
        base = qbase(k)
        out[base + ".qweight"] = QA.pack(q.codes, bits)
        out[base + ".scales"] = q.scales
        if q.zeros is not None:
            out[base + ".qzeros"] = QA.pack(q.zeros, bits)
        record[base] = {"bits": bits, "group_size": q.group_size, "shape": row["shape"], "symmetric": q.zeros is None,
                        "method": "gptq" if k in grams else "rtn"}
        rows.append(row)
    return out, record, rows


def quantize_one(ws, k: str, bits: int, group_size: int, symmetric: bool, gram=None, done: dict | None = None,
                 workers: int = 1) -> tuple[QA.QTensor, dict]:
    """(QTensor, per-tensor row) of the weight `k` of `ws` (a WeightStore or OnnxWeights) at `bits`: as `done` has it
    (quantized by the mixed-precision planner or by sequential GPTQ), else quantized here (GPTQ when `gram` is given)."""
    W = ws.get(k)
    q = done[k] if done and k in done else QA.quantize_matrix(W, bits, group_size, symmetric, gram, workers)
    return q, {"tensor": k, "bits": bits, "shape": list(W.shape), "bytes_before": ws.info(k).nbytes, "bytes_after": q.nbytes,
               "rel_error": QA.quant_error(W, q) / max(float((np.asarray(W, np.float64) ** 2).sum()), 1e-30)}


def size_summary(rows: list[dict], emb: str | None, t0: float) -> dict[str, Any]:
    """The summary's byte and width counts of the quantized tensors (`rows` of quantize_one)."""
    n_q = sum(int(np.prod(r["shape"])) for r in rows)
    return {"tensors": len(rows), "quantized_weights": n_q,
            "bits_per_weight": 8 * sum(r["bytes_after"] for r in rows) / max(n_q, 1),
            "embedding": next(({"bits": r["bits"], "bytes_before": r["bytes_before"], "bytes_after": r["bytes_after"]}
                               for r in rows if r["tensor"] == emb), None),
            "linear": {"bytes_before": sum(r["bytes_before"] for r in rows if r["tensor"] != emb),
                       "bytes_after": sum(r["bytes_after"] for r in rows if r["tensor"] != emb)},
            "per_tensor": rows, "seconds": round(time.perf_counter() - t0, 2)}


def symmetric_flag(symmetric: list[bool], requested: bool) -> bool | str:
    """What a quantized folder says of its zero points: true or false when every tensor agrees, else "mixed"
    (a mixed-precision plan may choose per tensor)."""
    flags = set(symmetric)
    return flags.pop() if len(flags) == 1 else ("mixed" if flags else requested)


def run_quantize(req: QuantRequest, progress=None, say=lambda msg: None) -> dict[str, Any]:
    t0 = time.perf_counter()
    for b in req.bits:
        if b not in QA.BITS:
            raise InputError(f"--bits {b} is not supported (supported: {', '.join(map(str, QA.BITS))})")
    if req.fmt == "onnx" and any(b not in QA.RUNNABLE_BITS for b in req.bits):
        say("3-bit codes run in onnxruntime as 4-bit codes; the ONNX file stores them as 4-bit")
    if req.method not in METHODS:
        raise InputError(f"unknown --method {req.method!r} (choose {', '.join(METHODS)})")
    m = open_model(req.model, need_tokenizer=bool(req.eval_file or req.calib or req.target_bits or req.max_size
                                                  or req.method == "gptq"))
    if req.portable and req.fmt != "onnx" and m.format != "onnx":
        raise InputError("--portable describes an ONNX output: add --format onnx")
    if req.output and not req.sensitivity_only:  # an existing output is refused before any calibration work
        from pathlib import Path

        from embtool.core.writer import check_output

        check_output(Path(req.output), req.force, [m.root])
    notes: list[str] = []
    checkable = req.sensitivity_only or check_runnable(m, req, notes)
    onnx_in = m.format == "onnx"
    names, emb = select_tensors(m, req)
    ws = weight_view(m)
    if req.target_bits is not None or req.max_size is not None:
        from embtool.jobs.mixed import mixed_budget

        mixed_budget(m, names, req, emb)  # an infeasible budget fails before any calibration work
    grams = None
    method = req.method
    if method == "auto":  # use calibration text when there is any: the user's, else the built-in sample
        # (an ONNX input: round-to-nearest unless --method gptq; its file need not say how many positions it takes)
        method = "gptq" if checkable and not onnx_in and m.tokenizer is not None and any(k != emb for k in names) else "rtn"
    mixed_run = req.target_bits is not None or req.max_size is not None or req.sensitivity_only
    if onnx_in and (method == "gptq" or mixed_run):
        other = next((k for k in names if ws.info(k).dtype != "F32"), None)
        if other is not None:
            raise Unsupported(f"{other} is stored as {ws.info(other).dtype}: GPTQ and mixed precision of an ONNX input need "
                              "float32 weights; quantize it with one --bits and --method rtn")
    # the bits of every tensor when no mixed-precision planner chooses them: the given plan, else the one width
    fixed_plan = None
    if req.plan is not None:
        fixed_plan = {k: int(req.plan.get(k, req.bits[0])) for k in names}
    elif not mixed_run:
        if len(req.bits) != 1:
            raise InputError("several --bits need --target-bits or --max-size (mixed precision)")
        fixed_plan = {k: req.bits[0] for k in names}
    sequential = method == "gptq" and req.gptq_sequential
    seq_done: dict = {}
    if method == "gptq":
        from embtool.core.calibration import calibration_texts
        from embtool.jobs.calibrate import gram_matrices, sequential_gptq

        texts = calibration_texts(req.calib, limit=GPTQ_TEXTS, builtin="corpus")
        source = "--calib" if req.calib else "the built-in calibration sample"
        if sequential and not mixed_run:
            seq_done, n_tok, n_stages = sequential_gptq(m, fixed_plan, emb, texts, req.group_size, req.symmetric, req.threads,
                                                        progress=progress)
            grams = {k: None for k in seq_done if k != emb}  # records these layers as GPTQ
            say(f"gptq: {len(grams)} linear layers quantized in {n_stages} sequential stages, on {n_tok} tokens of {source}")
        else:
            grams, n_tok = gram_matrices(m, [k for k in names if k != emb], texts, req.threads)
            say(f"gptq: input statistics of {len(grams)} linear layers from {n_tok} tokens of {source}")
    elif req.calib and not mixed_run:
        say("--calib is not used by --method rtn")
    summary: dict[str, Any] = {"model": req.model, "output": req.output, "group_size": req.group_size,
                               "symmetric": req.symmetric, "method": method, "format": "onnx" if onnx_in else req.fmt}
    if method == "gptq":
        summary["gptq_sequential"] = sequential
    if notes:
        summary["notes"] = notes
    if fixed_plan is not None:
        plan, done = fixed_plan, seq_done
    else:
        from embtool.jobs.mixed import plan_mixed

        plan, mixed, done = plan_mixed(m, names, emb, req, progress, say, grams)
        summary["mixed_precision"] = mixed
        if req.sensitivity_only:
            summary["seconds"] = round(time.perf_counter() - t0, 2)
            return summary
        if sequential:  # the plan's widths, quantized stage by stage on the partly quantized model
            grams = dict.fromkeys(grams or {})  # the one-pass statistics are done with (the record names GPTQ layers)
            options = {k: (plan[k], q.group_size, q.zeros is None) for k, q in done.items()}
            seq_done, n_tok, n_stages = sequential_gptq(m, plan, emb, texts, req.group_size, req.symmetric, req.threads,
                                                        progress=progress, options=options, table=done.get(emb))
            done = {**done, **seq_done}
            say(f"gptq: the plan's {sum(1 for k in seq_done if k != emb)} linear layers quantized in {n_stages} "
                f"sequential stages, on {n_tok} tokens of {source}")
    summary["tensor_bytes_before"] = sum(ws.info(k).nbytes for k in ws.keys())
    if onnx_in:
        return _write_onnx(m, req, plan, grams or {}, done, summary, emb, t0)
    tensors, record, rows = quantized_tensors(m, plan, req.group_size, req.symmetric, grams, done, cpu_threads(req.threads))
    sym = symmetric_flag([bool(v["symmetric"]) for v in record.values()], req.symmetric)
    prov = provenance("quantize", req, m, extra={"quantization": {"group_size": req.group_size, "symmetric": sym,
                                                                  "bits": sorted({r["bits"] for r in rows})}})
    meta = {**record_metadata(record), "embtool": metadata_json(prov)}
    cfg = updated_config(m, extra={"quantization_config": {"quant_method": "embtool-groupwise", "group_size": req.group_size,
                                                            "symmetric": sym,
                                                            "bits": {k: v["bits"] for k, v in record.items()}}}) if m.config else None
    with OutputFolder(req.output, req.force, inputs=[m.root]) as out:
        copy_unchanged(m, out, changed=["config.json"])
        write_weights(m, out, tensors, meta)
        write_configs(m, out, cfg)
        write_model_record(out, m, prov, summary)
        new = open_model(out.path, need_tokenizer=False)
        if req.fmt == "onnx":
            from embtool.core.onnx_out import save_onnx
            from embtool.runtime.graphs import build_encoder

            save_onnx(build_encoder(new, fused=not req.portable).to_model(embed_feeds=True), out, prov)
            (out.path / "model.safetensors").unlink()
            new = open_model(out.path, need_tokenizer=False)
            if req.max_size is not None and new.weight_bytes() > req.max_size:  # planned on the graph's bytes
                raise InputError(_over_max_size(new.weight_bytes(), req.max_size))
        summary["bytes_before"] = m.weight_bytes()
        summary["bytes_after"] = new.weight_bytes()
        if checkable:
            evaluate_output(m, out, req, summary)
    summary.update(size_summary(rows, emb, t0))
    return summary


def _over_max_size(size: int, limit: int) -> str:
    return (f"the quantized ONNX model takes {size:,} bytes, {size - limit:,} over --max-size {limit:,}: the plan's "
            "estimate of the graph's bytes fell short (please report it); nothing written")


def run_dequantize(req: ConvertRequest) -> dict[str, Any]:
    """embtool's packed n-bit weights back to float32 `X.weight` tensors (for tools that read only float);
    checked to embed as the quantized model does (`check_conversion`)."""
    t0 = time.perf_counter()
    model, output = req.model, req.output
    m = open_model(model)
    ws = m.weights
    if ws is None:
        raise Unsupported("dequantize reads embtool's quantized safetensors models; this is an ONNX model")
    if not has_record(ws.metadata):
        raise InputError(f"{model} is not an embtool-quantized model (no quantization record)")
    record = read_record(ws.metadata, model)
    tensors: dict[str, np.ndarray] = {}
    skip = set()
    for base, info in record.items():
        bits, g = int(info["bits"]), int(info["group_size"])
        rows, K = info["shape"]
        codes = QA.unpack(ws.get(base + ".qweight"), bits, K)
        zeros = QA.unpack(ws.get(base + ".qzeros"), bits, K // g) if base + ".qzeros" in ws else None
        name = base if base.endswith("factor_F") else base + ".weight"
        tensors[name] = QA.dequantize(codes, ws.get(base + ".scales"), zeros, bits, g)
        skip.update({base + ".qweight", base + ".scales", base + ".qzeros"})
    for k in ws.keys():
        if k not in skip:
            tensors[k] = ws.get(k)
    prov = provenance("dequantize", {}, m)
    summary: dict[str, Any] = {"model": model, "output": output, "tensors": len(record), "bytes_before": m.weight_bytes()}
    summary["bytes_after"] = write_derived_model(m, output, req.force, tensors, prov, drop="quantization", keep_input_metadata=False,
                                                 check=lambda out: check_conversion(m, out, req, summary), summary=summary)
    summary["seconds"] = round(time.perf_counter() - t0, 2)
    return summary


QUANTIZED_OPS = ("MatMulNBits", "GatherBlockQuantized", "MatMulInteger", "DynamicQuantizeLinear")


def select_onnx_tensors(m: Model, req: QuantRequest) -> tuple[list[str], str | None]:
    """The initializers of an ONNX model to quantize, in graph order, and the token table's name: the B of every MatMul
    that is a plain 2-D float initializer read by that node alone, and the table of the `input_ids` Gather. A weight
    several nodes read stays float (a note says so). Checked up front, before any calibration work."""
    from onnx import TensorProto

    from embtool.core.model import log, onnx_embedding_gather

    floats = (TensorProto.FLOAT, TensorProto.FLOAT16)
    g_ = m.onnx_model.graph
    inits = {t.name: t for t in g_.initializer}
    gather, sources = onnx_embedding_gather(g_)
    if gather is not None and any(t.data_type not in floats for t in sources):
        raise InputError(f"{m.root} is already quantized (its embedding table is stored as integers)")
    if any(n.op_type in QUANTIZED_OPS for n in g_.node):
        raise InputError(f"{m.root} is already quantized (it has quantized operators)")
    used: dict[str, int] = {}
    for n in g_.node:
        for i in n.input:
            used[i] = used.get(i, 0) + 1
    emb = gather.input[0] if gather is not None and len(sources) == 1 and sources[0].name == gather.input[0] else None
    wanted = lambda k: (req.include is None or re.search(req.include, k)) and not (req.exclude and re.search(req.exclude, k))  # noqa: E731
    names: list[str] = []
    shared: list[str] = []
    for n in g_.node:
        if n is gather and emb is not None and wanted(emb):
            k = emb
        elif n.op_type == "MatMul" and len(n.input) == 2 and n.input[1] in inits and len(inits[n.input[1]].dims) == 2 \
                and inits[n.input[1]].data_type in floats and not req.embeddings_only and wanted(n.input[1]):
            k = n.input[1]
        else:
            continue
        if used.get(k) != 1:
            shared += [k] if k not in shared else []
        elif k not in names:
            names.append(k)
    some = f"{len(shared)}: {', '.join(shared[:3])}{', ...' if len(shared) > 3 else ''}"
    if not names:
        why = (f"every float weight it could quantize is read by several nodes ({some}); embtool quantizes a weight "
               "that one MatMul or the token Gather reads" if shared else
               "none matches --include/--exclude/--embeddings-only" if req.include or req.exclude or req.embeddings_only else
               "no MatMul reads a 2-D float initializer and no Gather of input_ids reads one")
        raise InputError(f"{m.root}: no tensor to quantize: {why}")
    if shared:
        log.info(f"weights read by several nodes stay float ({some}): embtool quantizes a weight that one MatMul or the "
                 "token Gather reads")
    if any(b == 3 for b in req.bits) and not req.portable:
        raise InputError("3-bit codes in an ONNX output need --portable (onnxruntime's kernels take 2, 4 or 8 bits)")
    half = next((k for k in names if inits[k].data_type != TensorProto.FLOAT), None)
    if half is not None:
        # the quantized operators take float32 scales and give float32 rows: a float16 graph would not load
        raise Unsupported(f"{half} is stored as float16: embtool quantizes float32 ONNX graphs (export the model in "
                          "float32, or quantize its safetensors weights and write ONNX with --format onnx)")
    opset = max((o.version for o in m.onnx_model.opset_import if o.domain in ("", "ai.onnx")), default=0)
    if req.portable and opset < 21:
        raise Unsupported(f"--portable writes opset-21 blocked DequantizeLinear, and this graph is opset {opset} (its "
                          "operators are not rewritten to a newer opset): quantize it without --portable")
    for k in names:
        dims = list(inits[k].dims)
        K = dims[1] if k == emb else dims[0]
        if K % req.group_size:
            raise InputError(f"{k}: input dimension {K} is not a multiple of --group-size {req.group_size} "
                             "(embtool does not pad groups; choose a group size that divides it)")
    return names, emb


def quantize_onnx_graph(m: Model, qts: dict[str, QA.QTensor], portable: bool):
    """Rewrite an ONNX model in place with the quantized weights `qts` ({initializer: QTensor}, a MatMul's B in Linear
    orientation [N, K]; see select_onnx_tensors): each such MatMul becomes MatMulNBits (or blocked DequantizeLinear +
    MatMul with `portable`), the token-embedding Gather GatherBlockQuantized (or DequantizeLinear + Gather), each at its
    own bits, group size and zero points."""
    from onnx import TensorProto, helper, numpy_helper

    g_ = m.onnx_model.graph
    new_inits: list = []

    def dq_nodes(q, name: str) -> tuple[list, str]:
        bits, g = q.bits, q.group_size
        zeros = q.zeros if q.zeros is not None else np.full(q.scales.shape, 2 ** (bits - 1), np.uint8)
        # ONNX packs UINT4 over the flattened tensor (an odd number of groups a row shares a byte with the next row)
        dt, enc = (TensorProto.UINT8, lambda a: a) if bits == 8 else (TensorProto.UINT4, lambda a: QA.pack(a.reshape(1, -1), 4))
        new_inits.append(helper.make_tensor(name + ".codes", dt, list(q.codes.shape), enc(q.codes).tobytes(), raw=True))
        new_inits.append(helper.make_tensor(name + ".zero_points", dt, list(zeros.shape), enc(zeros).tobytes(), raw=True))
        new_inits.append(numpy_helper.from_array(q.scales.astype(np.float32), name + ".scales_f32"))
        return [helper.make_node("DequantizeLinear", [name + ".codes", name + ".scales_f32", name + ".zero_points"],
                                 [name + ".dq"], axis=1, block_size=g)], name + ".dq"

    out_nodes = []
    for n in g_.node:
        k = n.input[0] if n.op_type == "Gather" else n.input[1] if n.op_type == "MatMul" and len(n.input) == 2 else None
        q = qts.get(k)
        if q is None:
            out_nodes.append(n)
        elif n.op_type == "MatMul":
            bits, g = q.bits, q.group_size
            if portable:
                dq, wname = dq_nodes(q, k)
                out_nodes += dq + [helper.make_node("Transpose", [wname], [wname + "T"], perm=[1, 0]),
                                   helper.make_node("MatMul", [n.input[0], wname + "T"], list(n.output), name=n.name)]
            else:
                N, K = q.codes.shape
                new_inits.append(numpy_helper.from_array(QA.pack(q.codes, bits).reshape(N, K // g, g * bits // 8), k + ".B"))
                new_inits.append(numpy_helper.from_array(q.scales.astype(np.float32).reshape(-1), k + ".scales_f32"))
                ins = [n.input[0], k + ".B", k + ".scales_f32"]
                if q.zeros is not None:
                    new_inits.append(numpy_helper.from_array(QA.pack(q.zeros, bits).reshape(-1), k + ".zp"))
                    ins.append(k + ".zp")
                out_nodes.append(helper.make_node("MatMulNBits", ins, list(n.output), name=n.name, domain="com.microsoft",
                                                  K=K, N=N, bits=bits, block_size=g))
        elif portable:
            dq, wname = dq_nodes(q, k)
            out_nodes += dq + [helper.make_node("Gather", [wname, n.input[1]], list(n.output), name=n.name)]
        else:
            ins = [k + ".qweight", n.input[1], k + ".scales"]
            new_inits.append(numpy_helper.from_array(QA.pack(q.codes, q.bits), k + ".qweight"))
            new_inits.append(numpy_helper.from_array(q.scales, k + ".scales"))  # fp16, as stored
            if q.zeros is not None:
                new_inits.append(numpy_helper.from_array(QA.pack(q.zeros, q.bits), k + ".zp"))
                ins.append(k + ".zp")
            out_nodes.append(helper.make_node("GatherBlockQuantized", ins, [n.output[0] + ".f16"], name=n.name,
                                              domain="com.microsoft", bits=q.bits, block_size=q.group_size, gather_axis=0,
                                              quantize_axis=1))
            out_nodes.append(helper.make_node("Cast", [n.output[0] + ".f16"], list(n.output), name=n.name + ".f32",
                                              to=TensorProto.FLOAT))
    keep = [t for t in g_.initializer if t.name not in qts]
    del g_.initializer[:]
    g_.initializer.extend(keep + new_inits)
    inputs = [i for i in g_.input if i.name not in qts]  # an IR < 4 graph also lists its initializers as inputs
    del g_.input[:]
    g_.input.extend(inputs)
    del g_.node[:]
    g_.node.extend(out_nodes)
    if not portable and not any(o.domain == "com.microsoft" for o in m.onnx_model.opset_import):
        m.onnx_model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    for o in m.onnx_model.opset_import:
        if o.domain in ("", "ai.onnx") and o.version < 21 and portable:
            o.version = 21
    return m.onnx_model


def _write_onnx(m: Model, req: QuantRequest, plan: dict[str, int], grams: dict, done: dict, summary: dict[str, Any],
                emb: str | None, t0: float) -> dict[str, Any]:
    """An ONNX input's output: its own graph with the planned weights rewritten (quantize_onnx_graph)."""
    from embtool.core.onnx_out import save_onnx

    ws = weight_view(m)
    qts, rows = {}, []
    for k in ws.keys():
        if k in plan:
            qts[k], row = quantize_one(ws, k, plan[k], req.group_size, req.symmetric, grams.get(k), done,
                                       cpu_threads(req.threads))
            rows.append(row)
    sym = symmetric_flag([q.zeros is None for q in qts.values()], req.symmetric)
    graph = quantize_onnx_graph(m, qts, req.portable)
    qts.clear()
    prov = provenance("quantize", req, m, extra={"quantization": {"group_size": req.group_size, "symmetric": sym,
                                                                  "bits": sorted({r["bits"] for r in rows}), "portable": req.portable}})
    with OutputFolder(req.output, req.force, inputs=[m.root]) as out:
        copy_unchanged(m, out)
        save_onnx(graph, out, prov, rel=str(m.weight_path.relative_to(m.root)))
        write_model_record(out, m, prov, summary)
        new = open_model(out.path)
        if req.max_size is not None and new.weight_bytes() > req.max_size:
            raise InputError(_over_max_size(new.weight_bytes(), req.max_size))
        summary.update(bytes_before=m.weight_bytes(), bytes_after=new.weight_bytes())
        orig = open_model(req.model, need_tokenizer=bool(req.eval_file))  # the input graph object was rewritten in place
        evaluate_output(orig, out, req, summary)
    summary.update(size_summary(rows, emb, t0))
    return summary
