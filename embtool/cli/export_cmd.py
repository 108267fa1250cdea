"""`embtool export-onnx`: write a safetensors BERT-family model as an ONNX model folder."""

from __future__ import annotations

import time

import click

from embtool.cli.options import common_options, emit_summary, force_option, human_bytes, model_argument, output_option
from embtool.core.errors import InputError
from embtool.core.model import open_model
from embtool.core.model_out import copy_unchanged
from embtool.core.onnx_out import save_onnx
from embtool.core.writer import OutputFolder, provenance


@click.command(name="export-onnx")
@model_argument
@output_option()
@click.option("--portable", is_flag=True, help="Standard ONNX operators only (no com.microsoft fused attention), for runtimes other than onnxruntime.")
@force_option
@common_options
def command(model: str, output: str, portable: bool, force: bool, as_json: bool, quiet: bool, threads: int) -> None:
    """Export a safetensors model (BERT, RoBERTa/XLM-R, DistilBERT; plain, quantized or factorized)
    to an ONNX model folder that onnxruntime runs as is (inputs input_ids, attention_mask; output
    last_hidden_state). Tokenizer and sentence-transformers files are copied alongside.

    \b
    Example:
      embtool export-onnx all-MiniLM-L6-v2/ -o all-MiniLM-L6-v2-onnx/
      embtool export-onnx all-MiniLM-L6-v2/ --portable -o minilm-standard-ops/
    """
    from embtool.runtime.bert_graph import build_encoder

    t0 = time.perf_counter()
    m = open_model(model)
    if m.format != "safetensors":
        raise InputError(f"{model} is already an ONNX model")
    built = build_encoder(m, fused=not portable)
    onnx_model = built.to_model(embed_feeds=True)
    with OutputFolder(output, force, inputs=[m.root]) as out:
        copy_unchanged(m, out)
        prov = provenance("export-onnx", {"model": model, "portable": portable}, {"model": m.fingerprint()})
        path = save_onnx(onnx_model, out, prov)
        out.write_json("embtool.json", {**m.embtool_meta(), **prov})
        size = sum(p.stat().st_size for p in out.path.glob("model.onnx*"))
    summary = {"model": str(model), "output": output, "file": path.name, "bytes_before": m.weight_bytes(), "bytes_after": size,
               "written": True, "seconds": round(time.perf_counter() - t0, 2)}
    emit_summary(summary, as_json, quiet, lambda s: f"exported {model} -> {output}/model.onnx ({human_bytes(s['bytes_after'])}) in {s['seconds']} s")
