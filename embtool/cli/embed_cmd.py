"""`embtool embed`: sentence embeddings through onnxruntime."""

from __future__ import annotations

import sys

import click

from embtool import api
from embtool.api import BINARY_CODE, BINARY_CODES, FORMATS, POOLINGS, PRECISIONS
from embtool.cli.options import common_options, emit_summary, force_option, model_argument, progress_bar


class ShardType(click.ParamType):
    name = "I/N"

    def convert(self, value, param, ctx):
        try:
            i, n = (int(x) for x in str(value).split("/"))
        except ValueError:
            self.fail(f"{value!r} is not of the form I/N (e.g. 0/4)", param, ctx)
        if not (n >= 1 and 0 <= i < n):
            self.fail(f"shard {value!r}: need 0 <= I < N", param, ctx)
        return (i, n)


def embedding_options(f):
    """Options that decide what an embedding is; shared by embed and the fidelity checks."""
    f = click.option("--output-name", default=None, help="ONNX output that holds the embeddings, when ambiguous.")(f)
    f = click.option("--prefix", default="", help="Text put before every input, e.g. 'query: ' or 'passage: ' for e5.")(f)
    f = click.option("--prompt-name", default=None,
                     help="Put the model's prompt of this name (config_sentence_transformers.json: query, document, ...) "
                          "before every input (default: its default_prompt_name, if any).")(f)
    f = click.option("--dim", type=click.IntRange(min=1), default=None, help="Keep the first N dimensions (Matryoshka), then normalise.")(f)
    f = click.option("--normalize/--no-normalize", default=None, help="L2-normalise (default: from the sentence-transformers config).")(f)
    f = click.option("--pooling", type=click.Choice(["auto", *POOLINGS]), default="auto", show_default=True,
                     help="Token pooling; auto reads the sentence-transformers config (modes, Dense layers), else mean.")(f)
    f = click.option("--max-length", type=click.IntRange(min=2), default=None,
                     help="Truncate to this many tokens (default: the model's limit).")(f)
    f = click.option("--batch-size", type=click.IntRange(min=1), default=None,
                     help="Texts per onnxruntime call (default: about 1,024 padded tokens per call, at most 256 texts).")(f)
    return f


@click.command(name="embed")
@model_argument
@click.argument("texts", nargs=-1)
@click.option("-i", "--input", "inputs", multiple=True, help="File of texts, one per line (or JSONL with --field); '-' reads stdin. Repeatable.")
@click.option("--field", default=None, help="Read JSONL and take the text from this field.")
@click.option("-o", "--output", default=None, help="Output file: .npy, .safetensors (a search index), .parquet (id, text, embedding; a search index too), .jsonl, or word2vec .txt/.vec. Default: JSON lines on stdout.")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default=None, help="Output format (default: from the extension).")
@click.option("--precision", type=click.Choice(PRECISIONS), default="float32", show_default=True, help="Stored precision of the vectors (.npy/.safetensors).")
@click.option("--keep-float", is_flag=True, help="With int8/binary: also store float16 vectors so search can rescore.")
@click.option("--keep-int8", is_flag=True, help="With binary: also store int8 codes (1 byte per dimension) so search can rescore.")
@click.option("--binary-code", type=click.Choice(BINARY_CODES), default=BINARY_CODE, show_default=True,
              help="With binary .safetensors: bits of x (sign), of x minus the corpus mean (centred), or of the centred x "
                   "rotated to balance the bits (itq); mean and rotation are stored in the index and applied to queries.")
@click.option("--shard", type=ShardType(), default=None, help="Embed only text numbers j with j % N == I (ids stay global); search merges shards.")
@click.option("--ray", "ray_address", is_flag=False, flag_value="local", default=None, metavar="[ADDRESS]",
              help="Embed on Ray (the ray extra): alone, a local Ray that listens on 127.0.0.1 only and is gone afterwards; "
                   "'auto' or HOST:PORT joins a cluster. -o names a folder that receives one index shard per --shard-rows "
                   "texts (search reads them as one index).")
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True,
              help="With --ray: model actors (each holds one model and uses its share of the CPUs).")
@click.option("--shard-rows", type=click.IntRange(min=1), default=100_000, show_default=True,
              help="With --ray: texts per index shard written to the -o folder.")
@embedding_options
@force_option
@common_options
def command(model, texts, inputs, field, output, fmt, precision, keep_float, keep_int8, binary_code, shard, ray_address, workers,
            shard_rows, output_name, prompt_name, prefix, dim, normalize, pooling, max_length, batch_size, force, as_json, quiet,
            threads) -> None:
    """Embed texts with a model through onnxruntime (ONNX models as they are; safetensors BERT,
    RoBERTa/XLM-R and DistilBERT models through a graph built in memory, no PyTorch).

    Texts come from arguments, files (-i, repeatable) or stdin, one per line; they are streamed in
    chunks, tokenized in parallel, sorted by length into batches and written back in input order.

    \b
    Example:
      embtool embed all-MiniLM-L6-v2/ "a first sentence" "a second one"
      embtool embed e5-small/ -i docs.txt --prompt-name passage -o docs.safetensors
      cat words.txt | embtool embed e5-small/ -i - --format word2vec -o words.vec
    """
    if not texts and not inputs:
        if sys.stdin.isatty():
            raise click.UsageError("no texts: give them as arguments, with -i FILE, or on stdin")
        inputs = ("-",)
    if output == "-":  # stdout, as -i - is stdin
        output = None
    if as_json and output is None:
        raise click.UsageError("--json prints a summary on stdout; give -o FILE so the vectors go elsewhere")
    say = (lambda msg: None) if quiet else (lambda msg: click.echo(f"note: {msg}", err=True))
    with progress_bar(quiet, desc="embed") as bar:
        res = api.embed(model, output, texts=texts, inputs=inputs, text_field=field, fmt=fmt, precision=precision,
                        keep_float=keep_float, keep_int8=keep_int8, binary_code=binary_code, shard=shard, ray=ray_address,
                        workers=workers, shard_rows=shard_rows, force=force, threads=threads, progress=bar, say=say,
                        output_name=output_name, prompt_name=prompt_name, prefix=prefix, dim=dim, normalize=normalize,
                        pooling=pooling, max_length=max_length, batch_size=batch_size)
    if output is None:
        return
    if ray_address is not None:
        emit_summary(res.summary, as_json, quiet, lambda s: f"embedded {s['texts']} texts on Ray ({s['workers']} workers) -> "
                     f"{s['output']}/ ({s['shards']} {s['format']} shards) in {s['seconds']} s ({s['texts_per_second']} texts/s)")
        return
    emit_summary(res.summary, as_json, quiet, lambda s: f"embedded {s['texts']} texts ({s['dim']} dims, {s['tokens']} tokens) "
                 f"-> {s['output']} [{s['format']}, {s['precision']}] in {s['seconds']} s ({s['texts_per_second']} texts/s)")
