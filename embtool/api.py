"""embtool's public Python API (re-exported by `embtool`): the one door the CLI, the demo and the benchmarks use.

    import embtool
    enc = embtool.Encoder("all-MiniLM-L6-v2/")
    vecs = enc.embed(["a first sentence", "a second one"])      # np.ndarray [2, 384] float32
    enc = embtool.Encoder("sentence-transformers/all-MiniLM-L6-v2")  # a Hub id: the HF cache, else a download

Errors are the named exceptions of `embtool.errors` (`EmbtoolError` and its subclasses); the CLI turns them into
`Error: ...` lines and exit codes.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

from embtool.core.hub import quiet_downloads  # noqa: F401  (no Hub download progress bars inside the block)
from embtool.core.model import Model, ModelRef, open_model, weight_view  # noqa: F401  (ModelRef: a model path with --tokenizer / --onnx-file)
from embtool.errors import (BadUsage, CorruptFile, EmbtoolError, FidelityError, InputError, ModelNotFound,  # noqa: F401
                            OutputExists, UnsafeModel, Unsupported)

__all__ = ["BINARY_CODE", "BINARY_CODES", "Encoder", "FORMATS", "METRICS", "ModelRef", "POOLINGS", "PRECISIONS", "Result", "SCRIPTS",
           "SearchHits", "TensorInfo", "compare_embeddings", "compare_models", "defactorize", "dequantize", "embed",
           "embed_dataset", "export_onnx", "factorize", "frequent_words", "init_subwords", "inspect", "open_index", "open_model",
           "quantizable_tensors", "quantize", "quantized_bytes", "quiet_downloads", "read_embeddings", "rescore_depth", "sample_corpus", "search", "shrink", "trim_vocab",
           "write_embeddings"]

from embtool.algorithms.pooling import ALL_POOLINGS as POOLINGS, PRECISIONS  # noqa: E402  (the choices the CLI offers)
from embtool.algorithms.search import METRICS  # noqa: E402
from embtool.algorithms.vocab import SCRIPTS  # noqa: E402
from embtool.core.embeddings_io import BINARY_CODE, BINARY_CODES, FORMATS  # noqa: E402


class Encoder:
    """A model ready to embed text: opened once, one onnxruntime session, reused for every call.

    model        a model folder (Hugging Face / sentence-transformers layout), a .safetensors or .onnx file next to
                 a tokenizer.json, a Hub id "org/name" or "org/name@revision" (read from the Hugging Face cache, or
                 downloaded with the `hub` extra; docs/hub.md), or an opened `Model`
    pooling      "auto" (the sentence-transformers config, else mean), "mean", "cls", "max", "last", ...
    normalize    L2-normalise; None = as the model's sentence-transformers config says
    prefix       text put before every input (e.g. "query: " for e5)
    prompt_name  a prompt of the model's sentence-transformers config ("query", "passage", ...), instead of prefix
    max_length   truncate to this many tokens (default: the model's limit)
    dim          keep the first `dim` dimensions (Matryoshka), then normalise
    batch_size   texts per onnxruntime call (default: about 1,024 padded tokens per call)
    threads      onnxruntime intra-op threads (0: $OMP_NUM_THREADS if set, else onnxruntime's default)
    cache_dir    the Hugging Face Hub cache for a Hub id (default: $HF_HUB_CACHE, $HF_HOME/hub, ~/.cache/huggingface/hub)
    """

    def __init__(self, model: str | os.PathLike | Model, *, pooling: str = "auto", normalize: bool | None = None,
                 prefix: str = "", prompt_name: str | None = None, max_length: int | None = None, dim: int | None = None,
                 batch_size: int | None = None, threads: int = 0, output_name: str | None = None,
                 cache_dir: str | os.PathLike | None = None, **extra):
        from embtool.runtime.encoder import open_encoder

        m = model if isinstance(model, Model) else open_model(_path(model), need_tokenizer=True, cache_dir=cache_dir)
        if prompt_name is not None:
            extra["prompt_name"] = prompt_name
        self.model = m
        self._enc = open_encoder(m, pooling=pooling, normalize=normalize, dim=dim, prefix=prefix, max_length=max_length,
                                 batch_size=batch_size, threads=threads, output_name=output_name, **extra)

    @property
    def pooling(self) -> str:
        return self._enc.pooling

    @property
    def normalize(self) -> bool:
        return self._enc.normalize

    @property
    def max_length(self) -> int:
        return self._enc.max_length

    @property
    def stats(self):
        """Texts, tokens, truncated texts and padding so far (an EmbedStats)."""
        return self._enc.stats

    def embed(self, texts: Iterable[str] | str) -> np.ndarray:
        """Embeddings of `texts` as a float32 array [n, dim], in input order (a single string gives [1, dim])."""
        if isinstance(texts, str):
            texts = [texts]
        return self._enc.embed(list(texts))

    def embed_iter(self, texts: Iterable[str], chunk: int = 4096) -> Iterator[np.ndarray]:
        """Stream form: yields one float32 array per `chunk` texts, in input order, with memory bounded by a chunk."""
        for _, vecs in self._enc.embed_stream(texts, chunk=chunk):
            yield vecs

    def __repr__(self) -> str:
        return f"Encoder({str(Path(self.model.root))!r}, pooling={self.pooling!r}, normalize={self.normalize})"


# ---------------------------------------------------------------------------------------------------------------
# Model-shrinking functions: each runs the same job as its command and returns a Result.
# ---------------------------------------------------------------------------------------------------------------

from dataclasses import dataclass, field  # noqa: E402
from typing import Any  # noqa: E402


@dataclass(frozen=True)
class Result:
    """What a command did: `summary` is its `--json` object (schema `embtool.<command>/1`, docs/schema/); the
    fields below are the common ones, None where the command has no such figure."""

    command: str
    summary: dict[str, Any] = field(repr=False)

    def _get(self, *path: str) -> Any:
        d: Any = self.summary
        for key in path:
            if not isinstance(d, dict) or key not in d:
                return None
            d = d[key]
        return d

    @property
    def output(self) -> str | None:
        return self._get("output")

    @property
    def written(self) -> bool:
        return bool(self._get("written"))

    @property
    def passed(self) -> bool:
        """False only when a --min-cosine / --min-cosine-min / --min-recall gate failed (then nothing is written)."""
        return self._get("passed") is not False

    @property
    def bytes_before(self) -> int | None:
        return self._get("bytes_before")

    @property
    def bytes_after(self) -> int | None:
        return self._get("bytes_after")

    @property
    def cosine_mean(self) -> float | None:
        return self._get("eval", "cosine_mean")

    @property
    def cosine_min(self) -> float | None:
        return self._get("eval", "cosine_min")

    @property
    def recall_at_10(self) -> float | None:
        return self._get("eval", "recall_at_10")


def _path(model):
    """A model argument as the jobs take it: a str (a path or a Hub id; a ModelRef keeps its --tokenizer, --onnx-file
    and --cache-dir: `quantize(ModelRef("org/name", cache_dir="/data/hf"), ...)`)."""
    return model if isinstance(model, str) else os.fspath(model)


def _run(command: str, request_cls, runner, model, output, options: dict[str, Any], *, check: bool = True,
         run_kwargs: dict[str, Any] | None = None, **fixed) -> Result:
    from embtool.core.summary import summary_json

    fields = set(request_cls.__dataclass_fields__)
    unknown = set(options) - fields
    if unknown:
        raise TypeError(f"{command}: unexpected options {', '.join(sorted(unknown))} (see {request_cls.__name__})")
    req = request_cls(model=_path(model), output=None if output is None else os.fspath(output), **fixed, **options)
    res = Result(command, summary_json(command, runner(req, **{k: v for k, v in (run_kwargs or {}).items() if v is not None})))
    if check and not res.passed:
        err = FidelityError(res._get("gate", "message") or f"{command}: a fidelity gate failed; nothing was written")
        err.result = res  # type: ignore[attr-defined]
        raise err
    return res


def trim_vocab(model, output, *, corpus: Iterable[str] | str = (), progress=None, check: bool = True, **options) -> Result:
    """Vocabulary trimming (`embtool trim-vocab`): options are TrimRequest's fields (top, min_freq, coverage,
    keep_file, scripts, prefixes, eval_file, min_cosine, ..., dry_run, force, threads).

    Every model-writing function: a failed --min-* gate raises FidelityError (its `.result` holds the summary;
    nothing is written), or, with check=False, returns the Result with `passed` false. `progress` is any object
    with update(n) (a tqdm bar, say)."""
    from embtool.jobs.trim import TrimRequest, run_trim

    corpus = [corpus] if isinstance(corpus, (str, os.PathLike)) else list(corpus)
    return _run("trim-vocab", TrimRequest, run_trim, model, output, options, check=check,
                run_kwargs={"progress": progress}, corpus=[os.fspath(c) for c in corpus])


def quantize(model, output, *, progress=None, say: Callable[[str], None] | None = None, check: bool = True, **options) -> Result:
    """Group-wise quantization (`embtool quantize`): options are QuantRequest's fields (bits=[4], group_size=32,
    method, calib, target_bits, max_size, plan, fmt, eval_file, min_cosine, force, ...). `say` receives notes."""
    from embtool.jobs.quantize import QuantRequest, run_quantize

    return _run("quantize", QuantRequest, run_quantize, model, output, options, check=check,
                run_kwargs={"progress": progress, "say": say})


def shrink(model, output, *, corpus: Iterable[str] | str, max_size: int, progress=None, say: Callable[[str], None] | None = None,
           check: bool = True, **options) -> Result:
    """The whole pipeline (`embtool shrink`): trim to the corpus, quantize to `max_size` bytes if still over it,
    measure against the original on held-out corpus lines. Options are ShrinkRequest's fields (bits, group_size,
    holdout, prefixes, eval_prefix, quick, min_cosine, min_cosine_min, min_recall, force, threads)."""
    from embtool.jobs.shrink import ShrinkRequest, run_shrink

    corpus = [corpus] if isinstance(corpus, (str, os.PathLike)) else list(corpus)
    return _run("shrink", ShrinkRequest, run_shrink, model, output, options, check=check,
                run_kwargs={"progress": progress, "say": say}, corpus=[os.fspath(c) for c in corpus], max_size=max_size)


def dequantize(model, output, *, check: bool = True, **options) -> Result:
    """An embtool-quantized model back to float32 weights (`embtool dequantize`), checked to embed as the
    quantized model does (options: eval_file, min_cosine, no_eval, force, threads, ...)."""
    from embtool.jobs.fidelity import ConvertRequest
    from embtool.jobs.quantize import run_dequantize

    return _run("dequantize", ConvertRequest, run_dequantize, model, output, options, check=check)


def export_onnx(model, output, *, portable: bool = False, check: bool = True, **options) -> Result:
    """A safetensors model as an ONNX model folder (`embtool export-onnx`), checked to embed as the input does."""
    from embtool.jobs.export import ExportRequest, run_export

    return _run("export-onnx", ExportRequest, run_export, model, output, options, check=check, portable=portable)


def factorize(model, output, *, check: bool = True, **options) -> Result:
    """Low-rank embedding table (`embtool factorize`): options are FactorRequest's fields (rank, energy, max_error,
    fmt, eval_file, min_cosine, force, ...)."""
    from embtool.jobs.factorize import FactorRequest, run_factorize

    return _run("factorize", FactorRequest, run_factorize, model, output, options, check=check)


def defactorize(model, output, *, check: bool = True, **options) -> Result:
    """A factorized model back to one embedding table E = F·P (`embtool defactorize`), checked."""
    from embtool.jobs.factorize import run_defactorize
    from embtool.jobs.fidelity import ConvertRequest

    return _run("defactorize", ConvertRequest, run_defactorize, model, output, options, check=check)


def init_subwords(model, output, *, tokenizer, progress=None, check: bool = True, **options) -> Result:
    """A new vocabulary for a model (`embtool init-subwords`): options are InitRequest's fields (method,
    word_vectors, corpus, rank, seed, dry_run, ...). Contradictory options raise BadUsage before any work."""
    from embtool.jobs.subwords import InitRequest, run_init_subwords  # run_init_subwords checks the options first

    return _run("init-subwords", InitRequest, run_init_subwords, model, output, options, check=check, run_kwargs={"progress": progress},
                tokenizer=os.fspath(tokenizer))


def inspect(model, *, cache_dir: str | os.PathLike | None = None) -> dict[str, Any]:
    """What `embtool inspect --json` prints: architecture, vocabulary, parameters, bytes, quantization, provenance,
    and for a Hub id its `source` (id, revision, commit).

    :param model: a model folder or file, a Hub id, a ModelRef or an opened Model
    :param cache_dir: the Hub cache for a Hub id (default: the environment's, docs/hub.md)"""
    from embtool.core.describe import describe
    from embtool.core.summary import summary_json

    m = model if isinstance(model, Model) else open_model(_path(model), cache_dir=cache_dir)
    return summary_json("inspect", describe(m))


class SearchHits(list):
    """What `search` returns: a list with, per query, its hits best first. A hit is a tuple (score, id, text) with
    attributes `file` and `row` (the index file and its row there: rows whose ids repeat across files are told apart
    by them). `query_texts` are the query texts (None for vector queries)."""

    query_texts: list[str] | None = None


def search(index_paths, queries: Iterable[str] | np.ndarray | None = None, *, k: int = 10, metric: str = "cosine",
           ray: str | None = None, warn: Callable[[str], None] | None = None, **options) -> SearchHits:
    """Exact top-k (`embtool search`).

    :param index_paths: an index file or folder of shards, or a list of them (.safetensors, .parquet, .npy)
    :param queries: texts (embedded with the index's model and settings, or `model=`), or a [q, dim] array of
        vectors ([dim]: one query)
    :param k: hits per query (at least 1)
    :param metric: "cosine", "dot" or "l2" (squared distance, smaller is closer)
    :param ray: "local" | "auto" | ADDRESS: score each index file in a Ray task; the hits are the same
    :param warn: receives warnings (a model mismatch, repeated ids, ...)
    :param options: SearchRequest's other fields (query_files, query_embeddings, query_prefix, model, tokenizer,
        strict, rescore, block_rows, threads)
    Bad values raise TypeError or BadUsage (k=0, an unknown metric); bad files a named embtool error."""
    from embtool.jobs.search import SearchRequest, run_search

    paths = [os.fspath(index_paths)] if isinstance(index_paths, (str, os.PathLike)) else [os.fspath(p) for p in index_paths]
    score_files = None
    if ray is not None:
        from embtool.jobs.search import search_file
        from embtool.ray import search_files

        score_files = functools.partial(search_files, search_file)
    if isinstance(queries, np.ndarray):
        req = SearchRequest(indexes=paths, query_vectors=queries, k=k, metric=metric, ray=ray, **options)
    else:
        req = SearchRequest(indexes=paths, queries=[queries] if isinstance(queries, str) else list(queries or ()), k=k,
                            metric=metric, ray=ray, **options)
    res = run_search(req, warn=warn or (lambda m: None), score_files=score_files)
    hits = SearchHits(res.hits)
    hits.query_texts = res.query_texts
    return hits


def embed(model, output=None, *, texts: Iterable[str] | str = (), inputs: Iterable[str | os.PathLike] = (),
          text_field: str | None = None, fmt: str | None = None, precision: str = "float32", keep_float: bool = False,
          keep_int8: bool = False, binary_code: str = BINARY_CODE, shard: tuple[int, int] | None = None,
          ray: str | None = None, workers: int = 1, shard_rows: int = 100_000, force: bool = False, threads: int = 0,
          progress=None, say: Callable[[str], None] | None = None, stream=None, **encoder_options) -> Result:
    """`embtool embed`: embed `texts` and the lines of the `inputs` files ("-": stdin; JSONL with `text_field`)
    into `output` (.npy, .safetensors index, .parquet, .jsonl, word2vec .vec; None: JSON lines on `stream`).
    Encoder options (pooling, normalize, prefix, prompt_name, max_length, dim, batch_size, output_name) as for
    `Encoder`. `ray=` embeds on Ray (`workers` model actors) into the folder `output`, one index shard per
    `shard_rows` texts. Returns the summary as a Result (schema embtool.embed/1)."""
    from embtool.core.summary import summary_json

    texts = [texts] if isinstance(texts, str) else list(texts)
    inputs = [os.fspath(i) for i in inputs]
    encoder_options = {k: v for k, v in encoder_options.items() if v is not None}
    from embtool.jobs.embed import EmbedRequest, run_embed_file

    req = EmbedRequest(model=_path(model), output=None if output is None else os.fspath(output), texts=texts, inputs=inputs,
                       text_field=text_field, fmt=fmt, precision=precision, keep_float=keep_float, keep_int8=keep_int8,
                       binary_code=binary_code, shard=shard, ray=ray, workers=workers, shard_rows=shard_rows, force=force,
                       threads=threads, encoder=encoder_options)
    if ray is not None:
        from embtool.jobs.embed_ray import run_embed_ray

        summary = run_embed_ray(req)
    else:
        summary = run_embed_file(req, progress, say or (lambda m: None), stream)
    return Result("embed", summary_json("embed", summary))


def embed_dataset(ds, model, **options):
    """Ray Data: embed a dataset's text column into a new vector column (see embtool.ray.embed_dataset)."""
    from embtool.ray import embed_dataset as run

    return run(ds, model, **options)


# ---------------------------------------------------------------------------------------------------------------
# Helpers for scripts that measure or build on embtool (the demo and the benchmarks use these too).
# ---------------------------------------------------------------------------------------------------------------

def sample_corpus(lang: str, split: str = "all", start: int = 0, limit: int | None = None) -> list[str]:
    """Lines of the corpora shipped with embtool (embtool/data/corpora: en, fr, es, pl; one paragraph a line):
    split "all", "train" (the first 80%) or "heldout" (the rest)."""
    from embtool.core.corpora import corpus_lines

    return corpus_lines(lang, split, start, limit)


def read_embeddings(path) -> np.ndarray:
    """Every vector of an embeddings file or index (.npy, .safetensors, .parquet) as float32 [n, dim]
    (int8 and binary indexes: their decoded values)."""
    from embtool.core.formats.index import open_index

    ix = open_index(os.fspath(path))
    return np.asarray(ix.block(0, len(ix)), dtype=np.float32)


def write_embeddings(path, vectors: np.ndarray, texts: Iterable[str] | None = None, *, precision: str = "float32",
                     keep_float: bool = False, keep_int8: bool = False, binary_code: str = BINARY_CODE,
                     metadata: dict[str, str] | None = None, force: bool = False) -> Path:
    """Write `vectors` (and their texts) with embtool's embeddings writer, atomically: an index `embtool search`
    reads (.safetensors / .parquet), or .npy / .jsonl / word2vec by the extension."""
    from embtool.core.embeddings_io import EmbeddingSink, format_for, not_embeddings_file
    from embtool.core.formats.index import parse_metadata
    from embtool.core.writer import OutputFile

    texts = [str(i) for i in range(len(vectors))] if texts is None else list(texts)
    if len(texts) != len(vectors):
        raise InputError(f"{len(texts)} texts for {len(vectors)} vectors")
    fmt = format_for(os.fspath(path), None)
    try:  # a value an index reader would refuse is refused now
        record = parse_metadata(dict(metadata or {}), "write_embeddings")
    except CorruptFile as e:
        raise InputError(str(e)) from None
    sink = EmbeddingSink(fmt, precision, keep_float, keep_int8=keep_int8, binary_code=binary_code)
    try:
        with OutputFile(os.fspath(path), force, replaceable=lambda p: not_embeddings_file(p, fmt)) as tmp:
            for r0 in range(0, len(vectors), 65536):  # bounded temporaries, whatever the number of rows
                sink.add(texts[r0 : r0 + 65536], np.asarray(vectors[r0 : r0 + 65536], dtype=np.float32))
            sink.finish(tmp, record.source, record.extra)
    finally:
        sink.close()
    return Path(path)


def open_index(path):
    """An embeddings file or index opened for reading, memory-mapped: `len(ix)`, `ix.dim`, `ix.precision`,
    `ix.meta` (what embed recorded), `ix.text(i)`, `ix.block(r0, r1)` (float32 rows, decoded), `ix.emb` (the stored
    rows: float, int8 codes or packed bits; int8 codes are of the rows minus `ix.int8_mean` when it is not None),
    `ix.query_bits(q)` (a binary index: the bits it compares queries by)."""
    from embtool.core.formats.index import open_index as _open

    return _open(os.fspath(path))


def rescore_depth(rows: int, k: int = 10, precision: str = "binary") -> int:
    """How many candidates `search` rescores by default for an int8 / binary index of `rows` rows."""
    from embtool.algorithms.search import auto_rescore

    return auto_rescore(rows, k, precision)


def compare_embeddings(a: np.ndarray, b: np.ndarray) -> dict[str, Any]:
    """How far two embeddings of the same texts are: mean and min cosine, and recall@10 (the share of each
    text's 10 nearest neighbours among the texts that both agree on)."""
    from embtool.core.summary import summary_json
    from embtool.jobs.fidelity import compare

    out = summary_json("compare", compare(np.asarray(a, np.float32), np.asarray(b, np.float32)))
    out.pop("schema")
    return out


def compare_models(reference, model, texts: Iterable[str] | str, *, prefix: str = "", threads: int = 0,
                   max_length: int | None = None) -> dict[str, Any]:
    """`compare_embeddings` of two models' embeddings of `texts` (a list, or a file of lines): the fidelity
    figure every shrinking command reports."""
    from embtool.core.texts import read_lines
    from embtool.jobs.fidelity import embed_both

    texts = read_lines(os.fspath(texts), None) if isinstance(texts, (str, os.PathLike)) else list(texts)
    ref = reference if isinstance(reference, Model) else open_model(_path(reference), need_tokenizer=True)
    new = model if isinstance(model, Model) else open_model(_path(model), need_tokenizer=True)
    return compare_embeddings(*embed_both(ref, new, texts, threads, prefix, max_length))


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]
    token_table: bool  # the token-embedding table (quantized along its rows, used by Gather)


def quantizable_tensors(model) -> list[TensorInfo]:
    """The float matrices `quantize` would quantize (the names a `plan={name: bits}` takes)."""
    from embtool.jobs.quantize import QuantRequest, select_tensors

    m = model if isinstance(model, Model) else open_model(_path(model))
    names, emb = select_tensors(m, QuantRequest(model=str(m.root), output=None))
    ws = weight_view(m)
    return [TensorInfo(n, tuple(ws.info(n).shape), n == emb) for n in names]


def quantized_bytes(shape: tuple[int, int], bits: int, group_size: int = 32, symmetric: bool = False) -> int:
    """Bytes of one matrix stored at `bits` with groups of `group_size` (codes, fp16 scales, zero points)."""
    from embtool.algorithms.quantize import stored_bytes

    return stored_bytes(int(shape[0]), int(shape[1]), bits, group_size, symmetric)


def frequent_words(texts: Iterable[str], limit: int) -> tuple[list[str], int]:
    """The `limit` most frequent whitespace-separated words of `texts` (ties: first seen) and how many distinct
    words there were: the word list OFA's word vectors are made from (`init-subwords --word-vectors auto`)."""
    from embtool.core.word_vectors import corpus_words

    return corpus_words(texts, limit)
