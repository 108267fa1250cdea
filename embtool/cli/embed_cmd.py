"""`embtool embed`: sentence embeddings through onnxruntime."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import click

from embtool.algorithms.pooling import ALL_POOLINGS, PRECISIONS
from embtool.cli.options import common_options, emit_summary, force_option, model_argument
from embtool.core.embeddings_io import BINARY_CODE, BINARY_CODES, FORMATS, EmbeddingSink, format_for, not_embeddings_file
from embtool.core.errors import InputError
from embtool.core.model import open_model
from embtool.core.texts import iter_texts
from embtool.core.writer import OutputFile


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
    f = click.option("--pooling", type=click.Choice(["auto", *ALL_POOLINGS]), default="auto", show_default=True,
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
              help="Embed on Ray (the ray extra): alone, a local Ray on this machine; 'auto' or an address joins a cluster. "
                   "-o names a folder that receives one index shard per --shard-rows texts (search reads them as one index).")
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
    from embtool.runtime.encoder import EmbedSettings, Encoder, progress_bar, run_embed

    if not texts and not inputs:
        if sys.stdin.isatty():
            raise click.UsageError("no texts: give them as arguments, with -i FILE, or on stdin")
        inputs = ("-",)
    if keep_float and precision not in ("int8", "binary"):
        raise click.UsageError("--keep-float goes with --precision int8 or binary")
    if keep_int8 and precision != "binary":
        raise click.UsageError("--keep-int8 goes with --precision binary")
    if output == "-":  # stdout, as -i - is stdin
        output = None
    if ray_address is not None:
        return _embed_on_ray(model, texts, inputs, field, output, fmt, precision, shard, ray_address, workers, shard_rows,
                             dict(output_name=output_name, prompt_name=prompt_name, prefix=prefix, dim=dim, normalize=normalize,
                                  pooling=pooling, max_length=max_length, batch_size=batch_size),
                             threads, force, as_json, quiet)
    fmt = format_for(output, fmt)
    if output is None and fmt != "jsonl":
        raise click.UsageError(f"--format {fmt} needs -o FILE")
    if output is None and precision not in ("float32", "float16"):
        raise click.UsageError("--precision int8/binary needs -o FILE (.npy or .safetensors)")
    if prompt_name is not None and prefix:
        raise click.UsageError("give --prefix or --prompt-name, not both")
    if as_json and output is None:
        raise click.UsageError("--json prints a summary on stdout; give -o FILE so the vectors go elsewhere")
    t0 = time.perf_counter()
    m = open_model(model, need_tokenizer=True)
    settings = EmbedSettings(pooling=pooling, normalize=normalize, dim=dim, prefix=prefix, prompt_name=prompt_name, max_length=max_length,
                             batch_size=batch_size, threads=threads, output_name=output_name)
    enc = Encoder(m, settings)
    if not enc.prefix and m.st.prompt_texts() and not quiet:
        click.echo(f"note: this model has prompts ({', '.join(sorted(m.st.prompts))}) and none was applied; "
                   "it is usually used with one: --prompt-name NAME", err=True)
    sink = EmbeddingSink(fmt, precision, keep_float, stream=sys.stdout if output is None else None, keep_int8=keep_int8,
                         binary_code=binary_code)
    try:
        bar = progress_bar(quiet, desc="embed")
        source = iter_texts(texts, inputs, field)
        if output is None:
            ids = run_embed(enc, source, sink, bar, shard)
        else:
            with OutputFile(output, force, inputs=[m.root, *[Path(i) for i in inputs if i != "-"]],
                            replaceable=lambda p: not_embeddings_file(p, fmt)) as tmp:
                ids = run_embed(enc, source, sink, bar, shard)
                if sink.count == 0:
                    raise InputError("no texts to embed (the input is empty)")
                meta = {"model": str(Path(model).resolve()), "model_fingerprint": m.fingerprint(), "pooling": enc.pooling,
                        "normalize": str(enc.normalize).lower(), "prefix": enc.prefix,
                        "prompt_name": enc.prompt_name or "", "max_length": str(enc.max_length),
                        "shard": f"{shard[0]}/{shard[1]}" if shard else ""}
                tok = m.tokenizer.path if m.tokenizer is not None else None
                if tok is not None and tok.parent.resolve() != m.root.resolve():  # given with --tokenizer: search needs it too
                    meta["tokenizer"] = str(tok.resolve())
                if fmt in ("safetensors", "parquet"):
                    import numpy as np

                    sink.extra = {"ids": np.asarray(ids, dtype=np.int64)}
                sink.finish(tmp, meta)
        bar.close()
    finally:
        sink.close()
    if sink.count == 0:
        raise InputError("no texts to embed (the input is empty)")
    dt = time.perf_counter() - t0
    st = enc.stats
    summary = {"model": str(model), "texts": sink.count, "dim": sink.dim, "tokens": st.tokens, "truncated": st.truncated,
               "max_length": enc.max_length, "pooling": enc.pooling, "normalize": enc.normalize,
               "prompt_name": enc.prompt_name, "prefix": enc.prefix,
               "output": output or "-", "written": output is not None, "format": fmt, "precision": precision, "seconds": round(dt, 3),
               "texts_per_second": round(sink.count / dt, 1) if dt > 0 else None}
    if st.truncated and not quiet:
        click.echo(f"note: {st.truncated} text(s) longer than {enc.max_length} tokens were truncated", err=True)
    if output is not None:
        emit_summary(summary, as_json, quiet, lambda s: f"embedded {s['texts']} texts ({s['dim']} dims, {s['tokens']} tokens) "
                     f"-> {s['output']} [{s['format']}, {s['precision']}] in {s['seconds']} s ({s['texts_per_second']} texts/s)")


def _embed_on_ray(model, texts, inputs, field, output, fmt, precision, shard, address, workers, shard_rows, options, threads,
                  force, as_json, quiet) -> None:
    """embed --ray: the texts are numbered in input order, embedded by Ray actors, written as index shards."""
    from embtool.distributed import embed_to_folder

    if output is None:
        raise click.UsageError("--ray needs -o FOLDER (it receives one index shard per --shard-rows texts)")
    if shard is not None:
        raise click.UsageError("--ray splits the work itself; --shard is for running separate processes")
    if precision not in ("float32", "float16"):
        raise click.UsageError("--ray writes float32 or float16 shards")
    fmt = fmt or "safetensors"
    if fmt not in ("safetensors", "parquet"):
        raise click.UsageError("--ray writes .safetensors or .parquet shards (--format)")
    t0 = time.perf_counter()
    m = open_model(model, need_tokenizer=True)
    opts = {k: v for k, v in options.items() if v not in (None, "")}
    meta = {"model": str(Path(model).resolve()), "model_fingerprint": m.fingerprint()}
    summary = embed_to_folder(iter_texts(texts, inputs, field), m.root, output, address=address, workers=workers,
                              threads=threads or None, shard_rows=shard_rows, fmt=fmt, precision=precision, force=force,
                              inputs=[Path(i) for i in inputs if i != "-"], metadata=meta, **opts)
    dt = time.perf_counter() - t0
    summary.update({"model": str(model), "seconds": round(dt, 3), "texts_per_second": round(summary["texts"] / dt, 1)})
    emit_summary(summary, as_json, quiet, lambda s: f"embedded {s['texts']} texts on Ray ({s['workers']} workers) -> "
                 f"{s['output']}/ ({s['shards']} {s['format']} shards) in {s['seconds']} s ({s['texts_per_second']} texts/s)")
