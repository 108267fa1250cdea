"""`embtool export-onnx`: a safetensors model as an ONNX model folder onnxruntime runs as it is."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from embtool.core.errors import InputError
from embtool.core.formats.record import provenance, write_model_record
from embtool.core.model import open_model
from embtool.core.model_out import copy_unchanged
from embtool.core.onnx_out import save_onnx
from embtool.core.writer import OutputFolder
from embtool.jobs.fidelity import ConvertRequest, check_conversion


@dataclass
class ExportRequest(ConvertRequest):
    portable: bool = False  # standard ONNX operators only (no com.microsoft kernels)


def run_export(req: ExportRequest) -> dict[str, Any]:
    """The graph embtool builds in memory, with its weights, written as model.onnx (external data beyond 2 GB),
    the tokenizer and sentence-transformers files copied; checked to embed as the input does."""
    from embtool.runtime.graphs import build_encoder

    t0 = time.perf_counter()
    m = open_model(req.model)
    if m.format != "safetensors":
        raise InputError(f"{req.model} is already an ONNX model")
    onnx_model = build_encoder(m, fused=not req.portable).to_model(embed_feeds=True)
    summary: dict[str, Any] = {"model": str(req.model), "output": req.output, "bytes_before": m.weight_bytes()}
    with OutputFolder(req.output, req.force, inputs=[m.root]) as out:
        copy_unchanged(m, out)
        prov = provenance("export-onnx", {"portable": req.portable}, m)
        path = save_onnx(onnx_model, out, prov)
        del onnx_model
        write_model_record(out, m, prov, summary)
        summary["file"] = path.name
        summary["bytes_after"] = sum(p.stat().st_size for p in out.path.glob("model.onnx*"))
        check_conversion(m, out, req, summary)
    summary["seconds"] = round(time.perf_counter() - t0, 2)
    return summary
