"""`embtool export-onnx`: write a safetensors model as an ONNX model folder."""

from __future__ import annotations

import click

from embtool import api
from embtool.cli.options import common_options, emit_summary, eval_options, force_option, human_bytes, model_argument, output_option


@click.command(name="export-onnx")
@model_argument
@output_option()
@click.option("--portable", is_flag=True, help="Standard ONNX operators only (no com.microsoft fused attention), for runtimes other than onnxruntime.")
@eval_options()
@force_option
@common_options
def command(model: str, output: str, portable: bool, evaluation: dict, force: bool, as_json: bool, quiet: bool, threads: int) -> None:
    """Export a safetensors model (every architecture of README "Architectures"; plain, quantized or
    factorized) to an ONNX model folder that onnxruntime runs as is (inputs input_ids, attention_mask;
    output last_hidden_state). Tokenizer and sentence-transformers files are copied alongside. The
    export is checked to embed as the input does (min cosine 0.9999 on the built-in sample unless a
    gate is given), so a graph that went wrong is refused, not written.

    \b
    Example:
      embtool export-onnx all-MiniLM-L6-v2/ -o all-MiniLM-L6-v2-onnx/
      embtool export-onnx all-MiniLM-L6-v2/ --portable -o minilm-standard-ops/
    """
    s = api.export_onnx(model, output, portable=portable, **evaluation, force=force, threads=threads, check=False).summary
    emit_summary(s, as_json, quiet, lambda s: f"exported {model} -> {output}/model.onnx ({human_bytes(s['bytes_after'])}) in {s['seconds']} s"
                 + (f"; checked: min cosine {s['eval']['cosine_min']:.6f} on {s['eval']['texts']} texts" if s.get("eval") else ""))
