"""embtool's public Python API (re-exported by `embtool`): the one door the CLI, the demo and the benchmarks use.

    import embtool
    enc = embtool.Encoder("all-MiniLM-L6-v2/")
    vecs = enc.embed(["a first sentence", "a second one"])      # np.ndarray [2, 384] float32

Errors are the named exceptions of `embtool.errors` (`EmbtoolError` and its subclasses); the CLI turns them into
`Error: ...` lines and exit codes.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from embtool.core.model import Model, open_model

__all__ = ["Encoder", "Result", "factorize", "init_subwords", "inspect", "open_model", "quantize", "search", "trim_vocab"]


class Encoder:
    """A model ready to embed text: opened once, one onnxruntime session, reused for every call.

    model        a model folder (Hugging Face / sentence-transformers layout), a .safetensors or .onnx file next to
                 a tokenizer.json, or an opened `Model`
    pooling      "auto" (the sentence-transformers config, else mean), "mean", "cls", "max", "last", ...
    normalize    L2-normalise; None = as the model's sentence-transformers config says
    prefix       text put before every input (e.g. "query: " for e5)
    prompt_name  a prompt of the model's sentence-transformers config ("query", "passage", ...), instead of prefix
    max_length   truncate to this many tokens (default: the model's limit)
    dim          keep the first `dim` dimensions (Matryoshka), then normalise
    batch_size   texts per onnxruntime call (default: about 1,024 padded tokens per call)
    threads      onnxruntime intra-op threads (0: $OMP_NUM_THREADS if set, else onnxruntime's default)
    """

    def __init__(self, model: str | os.PathLike | Model, *, pooling: str = "auto", normalize: bool | None = None,
                 prefix: str = "", prompt_name: str | None = None, max_length: int | None = None, dim: int | None = None,
                 batch_size: int | None = None, threads: int = 0, output_name: str | None = None, **extra):
        from embtool.runtime.encoder import EmbedSettings, Encoder as _RuntimeEncoder

        m = model if isinstance(model, Model) else open_model(str(model), need_tokenizer=True)
        fields = set(EmbedSettings.__dataclass_fields__)
        unknown = set(extra) - fields
        if unknown:
            raise TypeError(f"Encoder() got unexpected options: {', '.join(sorted(unknown))}")
        if prompt_name is not None:
            extra["prompt_name"] = prompt_name
        settings = EmbedSettings(pooling=pooling, normalize=normalize, dim=dim, prefix=prefix, max_length=max_length,
                                 batch_size=batch_size, threads=threads, output_name=output_name, **extra)
        self.model = m
        self._enc = _RuntimeEncoder(m, settings)

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


def _run(command: str, request_cls, runner, model, output, options: dict[str, Any], **fixed) -> Result:
    from embtool.core.errors import FidelityError
    from embtool.core.summary import summary_json

    fields = set(request_cls.__dataclass_fields__)
    unknown = set(options) - fields
    if unknown:
        raise TypeError(f"{command}: unexpected options {', '.join(sorted(unknown))} (see {request_cls.__name__})")
    req = request_cls(model=str(model), output=None if output is None else str(output), **fixed, **options)
    res = Result(command, summary_json(command, runner(req)))
    if not res.passed:
        err = FidelityError(res._get("gate", "message") or f"{command}: a fidelity gate failed; nothing was written")
        err.result = res  # type: ignore[attr-defined]
        raise err
    return res


def trim_vocab(model, output, *, corpus: Iterable[str] | str = (), **options) -> Result:
    """Vocabulary trimming (`embtool trim-vocab`): options are TrimRequest's fields (top, min_freq, coverage,
    keep_file, scripts, prefixes, eval_file, min_cosine, ..., force, threads). A failed gate raises FidelityError."""
    from embtool.jobs.trim import TrimRequest, run_trim

    corpus = [corpus] if isinstance(corpus, (str, os.PathLike)) else list(corpus)
    return _run("trim-vocab", TrimRequest, run_trim, model, output, options, corpus=[str(c) for c in corpus])


def quantize(model, output, **options) -> Result:
    """Group-wise quantization (`embtool quantize`): options are QuantRequest's fields (bits=[4], group_size=32,
    method, calib, target_bits, max_size, fmt, eval_file, min_cosine, force, ...)."""
    from embtool.jobs.quantize import QuantRequest, run_quantize

    return _run("quantize", QuantRequest, run_quantize, model, output, options)


def factorize(model, output, **options) -> Result:
    """Low-rank embedding table (`embtool factorize`): options are FactorRequest's fields (rank, energy, max_error,
    fmt, eval_file, min_cosine, force, ...)."""
    from embtool.jobs.factorize import FactorRequest, run_factorize

    return _run("factorize", FactorRequest, run_factorize, model, output, options)


def init_subwords(model, output, *, tokenizer, **options) -> Result:
    """A new vocabulary for a model (`embtool init-subwords`): options are InitRequest's fields (method,
    word_vectors, corpus, rank, seed, ...)."""
    from embtool.jobs.subwords import InitRequest, run_init_subwords

    return _run("init-subwords", InitRequest, run_init_subwords, model, output, options, tokenizer=str(tokenizer))


def inspect(model) -> dict[str, Any]:
    """What `embtool inspect --json` prints: architecture, vocabulary, parameters, bytes, quantization, provenance."""
    from embtool.core.describe import describe
    from embtool.core.summary import summary_json

    m = model if isinstance(model, Model) else open_model(str(model))
    return summary_json("inspect", describe(m))


def search(index_paths, queries: Iterable[str] | np.ndarray, *, k: int = 10, metric: str = "cosine",
           ray: str | None = None, **options) -> list[list[tuple[float, int, str]]]:
    """Exact top-k: for each query, [(score, global id, text)] best first. `queries` are texts (embedded with the
    index's model, or `model=`) or a [q, dim] array of vectors. `ray="local"|"auto"|ADDRESS` scores each index file
    in a Ray task; the hits are the same."""
    import tempfile

    from embtool.jobs.search import SearchRequest, run_search

    paths = [str(index_paths)] if isinstance(index_paths, (str, os.PathLike)) else [str(p) for p in index_paths]
    if isinstance(queries, np.ndarray):
        with tempfile.TemporaryDirectory(prefix="embtool-q-") as d:
            qfile = Path(d) / "q.npy"
            np.save(qfile, np.asarray(queries, dtype=np.float32).reshape(len(queries), -1))
            return run_search(SearchRequest(indexes=paths, query_embeddings=str(qfile), k=k, metric=metric, ray=ray,
                                            **options)).hits
    return run_search(SearchRequest(indexes=paths, queries=list(queries), k=k, metric=metric, ray=ray, **options)).hits
