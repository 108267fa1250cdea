"""`embtool factorize` / `embtool defactorize`: OFA's low-rank embedding table."""

from __future__ import annotations

import click

from embtool import api
from embtool.cli.options import (InputPath, bytes_line, common_options, emit_summary, eval_line, eval_options, force_option,
                                 human_bytes, model_argument)


def render(s: dict) -> str:
    lines = [f"rank         {s['rank']} of {s['hidden']} (energy kept {100 * s['energy']:.3f}%, relative Frobenius error {s['rel_frobenius_error']:.4f})"]
    if s.get("corpus_weighted"):
        w = s["corpus_weighted"]
        lines.append(f"corpus       {w['corpus_lines']:,} lines, {w['corpus_tokens']:,} tokens on {w['rows_used']:,} rows; weighted by "
                     f"frequency: energy kept {100 * w['energy']:.3f}%, relative error {w['rel_error']:.4f}")
    lines += [f"embedding    {s['embedding_parameters_before']:,} -> {s['embedding_parameters_after']:,} parameters "
              f"({100 * s['embedding_parameters_after'] / s['embedding_parameters_before']:.1f}%)",
              bytes_line(s["bytes_before"], s["bytes_after"])]
    if "eval" in s:
        lines.append(eval_line(s["eval"]))
    lines += [f"note         {n}" for n in s["notes"]]
    lines.append(f"wrote        {s['output']} [{s['format']}] (factorized in {s['factorize_seconds']} s, {s['seconds']} s in all)")
    return "\n".join(lines)


@click.command(name="factorize")
@model_argument
@click.option("--rank", type=int, default=None, help="Rank k of the factorization (1 <= k < hidden size).")
@click.option("--energy", type=click.FloatRange(0, 1, min_open=True), default=None, help="Smallest rank keeping this share of the spectrum's energy.")
@click.option("--max-error", type=click.FloatRange(0, 1, min_open=True), default=None, help="Smallest rank with relative Frobenius error at most this.")
@click.option("-c", "--corpus", multiple=True, type=InputPath(allow_dash=True),
              help="Texts of the language(s) the model will embed, one per line ('-' = stdin); repeatable. Each row is "
                   "weighted by its token's frequency in them (+1), so the rows this text uses keep their precision.")
@click.option("--field", default=None, help="Read JSONL corpora and take the text from this field.")
@click.option("--prefix", "prefixes", multiple=True,
              help="Count the corpus as the model sees it, after this prefix (e.g. 'passage: '); default: the text alone "
                   "and after each of the model's prompts.")
@click.option("--format", "fmt", type=click.Choice(["safetensors", "onnx"]), default="safetensors", show_default=True,
              help="Output format for safetensors input (an ONNX input stays ONNX).")
@eval_options()
@click.option("-o", "--output", required=True, help="Output model folder.")
@force_option
@common_options
def command(model, rank, energy, max_error, corpus, field, prefixes, fmt, evaluation, output, force, as_json, quiet, threads) -> None:
    """OFA factorization of the token-embedding table: E (V×D) ≈ F (V×k) · P (k×D), the best rank-k
    approximation (eigendecomposition of EᵀE, equal to the truncated SVD). Safetensors output stores
    `…word_embeddings.factor_F` and `…factor_P` (and `embtool_factorization` in config.json); ONNX
    output replaces Gather(E) by MatMul(Gather(F), P). trim-vocab then trims F, quantize quantizes F
    (P stays float), and `embtool defactorize` restores a plain E = F·P.

    With --corpus the basis comes from Eᵀ·diag(w)·E, w = each token's count in the corpus + 1: the
    rank-k table that loses least on the rows that text looks up (--energy and --max-error then
    count that weighted energy; the summary reports both).

    \b
    Example:
      embtool factorize e5-small/ --rank 128 -o e5-f128/ --eval heldout.txt --eval-prefix "passage: "
      embtool factorize minilm/ --energy 0.95 --format onnx -o minilm-f-onnx/
      embtool factorize e5-fr/ --rank 128 -c fr-corpus.txt -o e5-fr-f128/
    """
    if sum(x is not None for x in (rank, energy, max_error)) != 1:
        raise click.UsageError("give exactly one of --rank, --energy, --max-error")
    if (field or prefixes) and not corpus:
        raise click.UsageError("--field and --prefix describe a --corpus: give -c FILE")
    res = api.factorize(model, output, rank=rank, energy=energy, max_error=max_error, fmt=fmt, corpus=list(corpus),
                        text_field=field, prefixes=list(prefixes) or None, **evaluation, force=force, threads=threads, check=False)
    emit_summary(res.summary, as_json, quiet, render)


@click.command(name="defactorize")
@model_argument
@click.option("-o", "--output", required=True, help="Output model folder.")
@eval_options()
@force_option
@common_options
def defactorize_command(model, output, evaluation, force, as_json, quiet, threads) -> None:
    """Turn a factorized model back into a plain token-embedding matrix E = F·P, for tools that need it.
    The output is checked to embed as the factorized model does (min cosine 0.9999 on the built-in
    sample unless a gate is given).

    \b
    Example:
      embtool defactorize e5-f128/ -o e5-f128-dense/
    """
    s = api.defactorize(model, output, **evaluation, force=force, threads=threads, check=False).summary
    emit_summary(s, as_json, quiet, lambda s: f"E = F·P: {human_bytes(s['bytes_before'])} -> {human_bytes(s['bytes_after'])} -> {s['output']} ({s['seconds']} s)")
