"""`embtool embed --ray`: texts read and numbered here, embedded by Ray actors (`embtool.ray.embed_blocks`), written
here as index shards OUTPUT/part-NNNNN.<fmt> (global ids in input order) that `embtool search OUTPUT` reads as one
index. Workers only compute; the driver writes, so no shared filesystem is needed and a killed worker (its block
re-run by Ray) cannot leave a partial file; the folder is published atomically when every shard is written.

Memory on the driver is bounded whatever the input: texts are read in blocks of BLOCK_TEXTS, a few blocks per
worker are in flight, and each shard's rows are spooled to disk by the embeddings writer as its blocks arrive.
"""

from __future__ import annotations

import itertools
import time
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np

from embtool.core.embeddings_io import EmbeddingSink
from embtool.core.errors import InputError
from embtool.core.formats.index import IndexSource
from embtool.core.formats.record import write_folder_record
from embtool.core.model import Model, ModelRef, open_model
from embtool.core.texts import iter_texts
from embtool.core.writer import OutputFolder
from embtool.jobs.embed import EmbedRequest, check_request

BLOCK_TEXTS = 1024  # texts per block sent to an actor


def run_embed_ray(req: EmbedRequest) -> dict[str, Any]:
    """Embed the texts of `req` on Ray (`req.ray`: 'local', 'auto' or HOST:PORT) into the folder `req.output`, one
    index shard per `req.shard_rows` texts. Returns the summary."""
    fmt = check_request(req)
    t0 = time.perf_counter()
    m = open_model(req.model, need_tokenizer=True)
    import embtool.ray as on_ray  # the extra's own check: one clear line when Ray is not installed

    options = {k: v for k, v in req.encoder.items() if v not in (None, "")}
    source = shard_source(req, m, options)  # what every shard records; a bad option fails here, before Ray starts
    inputs = [m.root, *[Path(i) for i in req.inputs if i != "-"]]
    with OutputFolder(req.output, req.force, inputs=inputs) as out:
        blocks = _blocks(iter_texts(req.texts, req.inputs, req.text_field))
        first = next(blocks, None)  # an empty or unreadable input fails here, before Ray starts
        if first is None:
            raise InputError("no texts to embed (the input is empty)")
        shards = _ShardWriter(out.path, fmt, req.precision, req.shard_rows, source)
        try:
            with on_ray.session(req.ray):
                for texts, vecs in on_ray.embed_blocks(itertools.chain([first], blocks), _portable(req.model, m),
                                                       workers=req.workers, threads=req.threads or None, **options):
                    shards.add(texts, vecs)
            shards.finish()
        finally:
            shards.close()
        write_folder_record(out, "embed --ray", shards=shards.names, texts=shards.count)
    dt = time.perf_counter() - t0
    return {"model": str(req.model), "output": str(req.output), "written": True, "shards": len(shards.names),
            "texts": shards.count, "dim": shards.dim, "workers": req.workers, "format": fmt, "precision": req.precision,
            "seconds": round(dt, 3), "texts_per_second": round(shards.count / dt, 1) if dt > 0 else None}


def shard_source(req: EmbedRequest, m: Model, options: dict[str, Any]) -> IndexSource:
    """What the shards record about how their vectors were made (the model, the encoder settings resolved as the
    actors resolve them); each shard adds its number and first id (`IndexSource.part`)."""
    from embtool.runtime.encoder import EmbedSettings, resolve_settings

    return IndexSource.of(m, resolve_settings(m, EmbedSettings(**options)), path=req.model)


def _blocks(texts: Iterable[str]) -> Iterator[list[str]]:
    it = iter(texts)
    while block := list(itertools.islice(it, BLOCK_TEXTS)):
        yield block


def _portable(model: str, m: Model) -> ModelRef:
    """The opened model as a worker (another process, maybe another node) opens it: by absolute paths, a Hub id as
    its local snapshot, the tokenizer and ONNX file it was opened with."""
    path = Path(model).resolve() if Path(model).is_file() else Path(m.root).resolve()
    tok = str(Path(m.tokenizer.path).resolve()) if m.tokenizer is not None else None
    return ModelRef(path, tokenizer=tok, onnx_file=getattr(model, "onnx_file", None))


class _ShardWriter:
    """Rows in input order into part-NNNNN.<fmt> files of `rows` rows each, ids 0, 1, 2, ... in order; each shard
    spooled by the one embeddings writer as blocks arrive and finished when full."""

    def __init__(self, folder: Path, fmt: str, precision: str, rows: int, source: IndexSource):
        self.folder, self.fmt, self.precision, self.rows, self.source = folder, fmt, precision, rows, source
        self.names: list[str] = []
        self.count = 0  # rows written or spooled
        self.dim: int | None = None
        self._sink: EmbeddingSink | None = None
        self._first = 0  # global id of the open shard's first row

    def add(self, texts: list[str], vecs: np.ndarray) -> None:
        self.dim = int(vecs.shape[1])
        at = 0
        while at < len(texts):
            if self._sink is None:
                self._sink = EmbeddingSink(self.fmt, self.precision, spool_dir=self.folder)  # gone with the folder
                self._first = self.count
            take = min(len(texts) - at, self.rows - self._sink.count)
            self._sink.add(texts[at:at + take], vecs[at:at + take])
            self.count += take
            at += take
            if self._sink.count == self.rows:
                self._close_shard()

    def finish(self) -> None:
        if self._sink is not None and self._sink.count:
            self._close_shard()

    def _close_shard(self) -> None:
        sink, k = self._sink, len(self.names)
        name = f"part-{k:05d}.{self.fmt}"
        try:
            sink.ids = np.arange(self._first, self._first + sink.count, dtype=np.int64)
            sink.finish(self.folder / name, self.source.part(k, self._first))
        finally:
            sink.close()
            self._sink = None
        self.names.append(name)

    def close(self) -> None:
        if self._sink is not None:
            self._sink.close()
            self._sink = None
