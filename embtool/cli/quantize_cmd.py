"""`embtool quantize`: Q-BERT-style group-wise quantization (uniform or Hessian-aware mixed precision)."""

from __future__ import annotations

import click

from embtool import api
from embtool.cli.options import (InputPath, bytes_line, common_options, emit_summary, eval_line, eval_options, force_option,
                                 human_bytes, model_argument, parse_size, progress_bar, table)


class BitsList(click.ParamType):
    name = "BITS"

    def convert(self, value, param, ctx):
        if isinstance(value, list):
            return value
        try:
            bits = sorted({int(x) for x in str(value).split(",") if x.strip()})
        except ValueError:
            self.fail(f"{value!r}: give bit widths like 4 or 2,4,8", param, ctx)
        bad = [b for b in bits if b not in (2, 3, 4, 8)]
        if bad or not bits:
            self.fail(f"{value!r}: supported bit widths are 2, 3, 4, 8", param, ctx)
        return bits


class Size(click.ParamType):
    name = "SIZE"

    def convert(self, value, param, ctx):
        try:
            n = parse_size(str(value))
        except ValueError:
            self.fail(f"{value!r}: give a size like 15MB, 1.5GB or 2000000", param, ctx)
        if n <= 0:
            self.fail("size must be positive", param, ctx)
        return n


def render(s: dict) -> str:
    lines = []
    if "mixed_precision" in s:
        mp = s["mixed_precision"]
        rows = [[r["tensor"], "-" if r["omega"] is None else f"{r['omega']:.3g}", f"{r['bits']}{' sym' if r.get('symmetric') else ''}", f"{r['rel_error']:.2e}",
                 f"{r['predicted_damage']:.3g}", human_bytes(r["bytes"])] for r in mp["per_tensor"]]
        lines.append(table(rows, ["tensor", "Ω (tr H / n)", "bits", "rel. error", "damage", "bytes"]))
        lines.append(f"budget {human_bytes(mp['budget_bytes'])}: chosen {human_bytes(mp['chosen_bytes'])}, "
                     f"predicted damage {mp['predicted_damage']:.4g}; {mp['probes']} probes x {mp['calib_texts']} calibration texts "
                     f"in {mp['seconds']} s ({mp.get('sensitivity', 'hessian')} damage)")
        u = mp.get("uniform_check")
        if u:
            lines.append(f"check        uniform {u['bits']} bits{' (symmetric)' if u.get('symmetric') else ''} loses {u['uniform_loss']:.3g}, the mixed plan {u['mixed_loss']:.3g} "
                         f"on the calibration texts: kept the {u['chose']} one")
        if s.get("bytes_before") is None:
            return "\n".join(lines + ["sensitivity only: nothing written"])
    lines.append(bytes_line(s['bytes_before'], s['bytes_after']))
    if s.get("embedding"):
        e = s["embedding"]
        lines.append(f"embedding    {e['bits']} bits: {human_bytes(e['bytes_before'])} -> {human_bytes(e['bytes_after'])}")
    li = s["linear"]
    if li["bytes_before"]:
        lines.append(f"linear       {human_bytes(li['bytes_before'])} -> {human_bytes(li['bytes_after'])}")
    lines.append(f"weights      {s['tensors']} tensors, {s['quantized_weights']:,} weights at {s['bits_per_weight']:.2f} bits each "
                 f"(scales and zero points included), group {s['group_size']}, {'symmetric' if s['symmetric'] else 'asymmetric'}, {s['method']}")
    if "eval" in s:
        lines.append(eval_line(s["eval"]))
    lines.append(f"wrote        {s['output']} [{s['format']}] ({s['seconds']} s)")
    return "\n".join(lines)


@click.command(name="quantize")
@model_argument
@click.option("--bits", type=BitsList(), default="4", show_default=True,
              help="Bit width (2, 3, 4, 8), or several (e.g. 2,4,8) to choose from per tensor with --target-bits/--max-size.")
@click.option("--group-size", type=click.IntRange(min=8), default=32, show_default=True,
              help="Consecutive values along the input axis sharing one scale; must divide every quantized dimension.")
@click.option("--symmetric/--asymmetric", default=False, show_default=True, help="Symmetric groups store no zero point.")
@click.option("--method", type=click.Choice(["auto", "rtn", "gptq"]), default="auto", show_default=True,
              help="Linear layers: GPTQ error compensation from calibration inputs (--calib, else a built-in sample of the "
                   "repo's corpora), or round-to-nearest (rtn: no data). auto: gptq when the model has a tokenizer "
                   "(an ONNX input: rtn).")
@click.option("--include", default=None, help="Quantize only tensors whose name matches this regex.")
@click.option("--exclude", default=None, help="Do not quantize tensors whose name matches this regex.")
@click.option("--embeddings-only", is_flag=True, help="Quantize only the token-embedding table.")
@click.option("--format", "fmt", type=click.Choice(["safetensors", "onnx"]), default="safetensors", show_default=True,
              help="safetensors (embtool's packed format) or ONNX with MatMulNBits/GatherBlockQuantized.")
@click.option("--portable", is_flag=True, help="ONNX output (--format onnx, or an ONNX input): standard operators only (opset-21 blocked DequantizeLinear "
              "of uint4/uint8 codes), for runtimes without onnxruntime's contrib kernels.")
@click.option("--target-bits", type=click.FloatRange(1, 16), default=None, help="Mixed precision: average bits per quantized weight (scales included).")
@click.option("--max-size", type=Size(), default=None, help="Mixed precision: the size of the weights file (every tensor and the file's header; "
              "for an ONNX input the .onnx file), e.g. 15MB.")
@click.option("--calib", type=InputPath(), default=None,
              help="Calibration texts (one a line) for GPTQ and the sensitivities (default: built-in multilingual samples).")
@click.option("--sensitivity", type=click.Choice(["measured", "hessian"]), default="measured", show_default=True,
              help="Mixed precision: damage of each width = the measured loss of the pooled embedding with that tensor "
                   "quantized (measured), or Ω·‖ΔW‖² from Hutchinson trace estimates (hessian).")
@click.option("--probes", type=click.IntRange(min=1), default=2, show_default=True, help="Hutchinson probes per tensor (--sensitivity hessian).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the Rademacher probes.")
@click.option("--sensitivity-only", is_flag=True, help="Only compute and print the per-tensor sensitivities (with --json: for CI).")
@eval_options()
@click.option("-o", "--output", default=None, help="Output model folder.")
@force_option
@common_options
def command(model, bits, group_size, symmetric, method, include, exclude, embeddings_only, fmt, portable, target_bits, max_size, calib, sensitivity, probes,
            seed, sensitivity_only, evaluation, output, force, as_json, quiet, threads) -> None:
    """Group-wise low-bit quantization (Q-BERT): every linear weight and the token-embedding table are
    cut into groups of --group-size values along their input axis, each with an fp16 scale (and zero
    point), with a per-group clipping search; linear layers use GPTQ error compensation from calibration
    text (--calib, else a built-in sample; --method rtn needs no data). Position/type embeddings, LayerNorm
    and biases stay float. The output runs in onnxruntime (MatMulNBits, GatherBlockQuantized).

    With several --bits and --target-bits or --max-size, bits are chosen per tensor (mixed precision):
    the damage of each width is the measured loss of the pooled embedding on calibration text with that
    tensor quantized (or Ω·‖Q(W) − W‖², Ω from Hutchinson probes, with --sensitivity hessian), the bits
    minimise the total under the budget, and the plan is kept only if it loses less than the uniform
    width that fits the same budget.

    An ONNX input is quantized in its own graph (each MatMul weight and the token-embedding Gather),
    uniform, mixed precision or GPTQ alike: its weights are fed to the graph as inputs to measure them.

    \b
    Example:
      embtool quantize all-MiniLM-L6-v2/ --bits 4 --group-size 32 -o minilm-q4/ --eval heldout.txt
      embtool quantize all-MiniLM-L6-v2/ --bits 2,4,8 --target-bits 3 --calib calib.txt -o minilm-mixed/
      embtool quantize e5-small-fr/ --bits 8 --embeddings-only --format onnx -o e5-fr-q8-onnx/
      embtool quantize model-onnx/ --bits 4 --portable -o model-q4-dq/     # an ONNX input, standard ops out
      embtool quantize model-onnx/ --bits 2,4,8 --max-size 20MB -o model-mixed-onnx/
    """
    mixed = target_bits is not None or max_size is not None
    if target_bits is not None and max_size is not None:
        raise click.UsageError("give --target-bits or --max-size, not both")
    if len(bits) > 1 and not mixed and not sensitivity_only:
        raise click.UsageError("several --bits need --target-bits or --max-size")
    if not sensitivity_only and not output:
        raise click.UsageError("give -o OUTPUT (or --sensitivity-only)")
    with progress_bar(quiet, unit="probe", desc="sensitivity") as bar:
        res = api.quantize(model, output, bits=bits, group_size=group_size, symmetric=symmetric, method=method, include=include,
                           exclude=exclude, embeddings_only=embeddings_only, fmt=fmt, portable=portable, **evaluation, force=force,
                           threads=threads, target_bits=target_bits, max_size=max_size, calib=calib, sensitivity=sensitivity,
                           probes=probes, seed=seed, sensitivity_only=sensitivity_only, progress=bar, check=False,
                           say=(lambda msg: None) if quiet else (lambda msg: click.echo(f"note: {msg}", err=True)))
    emit_summary(res.summary, as_json, quiet, render)


@click.command(name="dequantize")
@model_argument
@click.option("-o", "--output", required=True, help="Output model folder (float32 safetensors).")
@eval_options()
@force_option
@common_options
def dequantize_command(model, output, evaluation, force, as_json, quiet, threads) -> None:
    """Turn an embtool-quantized safetensors model back into a plain float32 model (the dequantized
    values, not the original ones) for tools that only read float weights. The output is checked to
    embed as the quantized model does (min cosine 0.9999 on the built-in sample unless a gate is given).

    \b
    Example:
      embtool dequantize minilm-q4/ -o minilm-q4-float/
    """
    s = api.dequantize(model, output, **evaluation, force=force, threads=threads, check=False).summary
    emit_summary(s, as_json, quiet, lambda s: f"dequantized {s['tensors']} tensors: {human_bytes(s['bytes_before'])} -> "
                 f"{human_bytes(s['bytes_after'])} -> {s['output']} ({s['seconds']} s)")
