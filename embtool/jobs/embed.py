"""`embtool embed` to a file: texts streamed from arguments, files or stdin, embedded, written by the one
embeddings writer (.npy, .safetensors index, .parquet, JSON lines, word2vec) atomically."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Callable

import numpy as np

from embtool.core.embeddings_io import BINARY_CODE, EmbeddingSink, format_for, not_embeddings_file
from embtool.core.errors import BadUsage, InputError
from embtool.core.formats.index import IndexSource
from embtool.core.model import open_model
from embtool.core.texts import iter_texts
from embtool.core.writer import OutputFile


@dataclass
class EmbedRequest:
    model: str  # a path, or a ModelRef (a path with --tokenizer / --onnx-file)
    output: str | None = None  # None: JSON lines on `stream`
    texts: list[str] = field(default_factory=list)
    inputs: list[str] = field(default_factory=list)  # files of texts, one per line; "-" is stdin
    text_field: str | None = None  # JSONL input: take the text from this field
    fmt: str | None = None
    precision: str = "float32"
    keep_float: bool = False
    keep_int8: bool = False
    binary_code: str = BINARY_CODE
    shard: tuple[int, int] | None = None  # (i, n): only text numbers j with j % n == i
    ray: str | None = None  # embed on Ray ('local', 'auto' or HOST:PORT) into the folder `output` (jobs/embed_ray.py)
    workers: int = 1  # with ray: model actors
    shard_rows: int = 100_000  # with ray: texts per index shard
    force: bool = False
    threads: int = 0
    encoder: dict[str, Any] = field(default_factory=dict)  # EmbedSettings fields: pooling, normalize, prefix, ...


def check_request(req: EmbedRequest) -> str:
    """Flag combinations (BadUsage, exit 2 from the CLI); returns the output format."""
    if req.keep_float and req.precision not in ("int8", "binary"):
        raise BadUsage("--keep-float goes with --precision int8 or binary")
    if req.keep_int8 and req.precision != "binary":
        raise BadUsage("--keep-int8 goes with --precision binary")
    if req.encoder.get("prompt_name") is not None and req.encoder.get("prefix"):
        raise BadUsage("give --prefix or --prompt-name, not both")
    if req.ray is not None:
        return _check_ray(req)
    fmt = format_for(req.output, req.fmt)
    if req.output is None and fmt != "jsonl":
        raise BadUsage(f"--format {fmt} needs -o FILE")
    if req.output is None and req.precision not in ("float32", "float16"):
        raise BadUsage("--precision int8/binary needs -o FILE (.npy or .safetensors)")
    return fmt


def _check_ray(req: EmbedRequest) -> str:
    """The rules of `--ray`; returns the shard format."""
    if req.output is None:
        raise BadUsage("--ray needs -o FOLDER (it receives one index shard per --shard-rows texts)")
    if req.shard is not None:
        raise BadUsage("--ray splits the work itself; --shard is for running separate processes")
    if req.precision not in ("float32", "float16"):
        raise BadUsage("--ray writes float32 or float16 shards")
    fmt = req.fmt or "safetensors"
    if fmt not in ("safetensors", "parquet"):
        raise BadUsage("--ray writes .safetensors or .parquet shards (--format)")
    for name in ("workers", "shard_rows"):
        value = getattr(req, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise BadUsage(f"{name} must be a whole number >= 1, not {value!r}")
    return fmt


def run_embed_file(req: EmbedRequest, progress=None, say: Callable[[str], None] = lambda msg: None,
                   stream: IO[str] | None = None) -> dict[str, Any]:
    """Embed the texts of `req` into its output (or JSON lines on `stream`, default stdout). Returns the summary."""
    from embtool.runtime.encoder import EmbedSettings, Encoder, run_embed

    fmt = check_request(req)
    t0 = time.perf_counter()
    m = open_model(req.model, need_tokenizer=True)
    enc = Encoder(m, EmbedSettings(threads=req.threads, **req.encoder))
    if not enc.prefix and m.st.prompt_texts():
        say(f"this model has prompts ({', '.join(sorted(m.st.prompts))}) and none was applied; "
            "it is usually used with one: --prompt-name NAME")
    sink = EmbeddingSink(fmt, req.precision, req.keep_float, stream=(stream or sys.stdout) if req.output is None else None,
                         keep_int8=req.keep_int8, binary_code=req.binary_code)
    try:
        source = iter_texts(req.texts, req.inputs, req.text_field)
        if req.output is None:
            run_embed(enc, source, sink, progress, req.shard)
        else:
            with OutputFile(req.output, req.force, inputs=[m.root, *[Path(i) for i in req.inputs if i != "-"]],
                            replaceable=lambda p: not_embeddings_file(p, fmt)) as tmp:
                ids = run_embed(enc, source, sink, progress, req.shard)
                if sink.count == 0:
                    raise InputError("no texts to embed (the input is empty)")
                if fmt in ("safetensors", "parquet"):
                    sink.ids = np.asarray(ids, dtype=np.int64)
                sink.finish(tmp, IndexSource.of(m, enc.resolved, path=req.model, shard=req.shard))
    finally:
        sink.close()
    if sink.count == 0:
        raise InputError("no texts to embed (the input is empty)")
    dt = time.perf_counter() - t0
    st = enc.stats
    if st.truncated:
        say(f"{st.truncated} text(s) longer than {enc.max_length} tokens were truncated")
    return {"model": str(req.model), "texts": sink.count, "dim": sink.dim, "tokens": st.tokens, "truncated": st.truncated,
            "max_length": enc.max_length, "pooling": enc.pooling, "normalize": enc.normalize,
            "prompt_name": enc.prompt_name, "prefix": enc.prefix,
            "output": req.output or "-", "written": req.output is not None, "format": fmt, "precision": req.precision,
            "seconds": round(dt, 3), "texts_per_second": round(sink.count / dt, 1) if dt > 0 else None}

