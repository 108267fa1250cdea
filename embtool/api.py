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

__all__ = ["Encoder", "open_model"]


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
