"""Embedding on Ray: one model per actor (onnxruntime threads per actor = the actor's CPUs).

- `embed_dataset`: Ray Data's `map_batches` with the actor class; Ray Data restarts a dead actor and re-runs its batch.
- `embed_blocks`: blocks of texts sent to a pool of actors, results taken back in input order, a bounded number of
  blocks in flight, so the caller reads its input as a stream. A worker that dies is restarted and its block re-run
  (at most RETRIES times).
"""

from __future__ import annotations

import collections
import contextlib
import os
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
import ray

from embtool.core.errors import ClusterError, EmbtoolError, InputError

FAULT_ENV = "EMBTOOL_FAULT_EXIT_AT_ID"  # test hook: a worker exits hard once when it meets this text id
RETRIES = 3  # restarts of a dead actor, and re-runs of its block, before the job fails


class _EmbedActor:
    """One model per actor: `embed(texts)` for `embed_blocks`, `__call__(batch)` for Ray Data.

    A model or option the worker refuses (a --prompt-name the model lacks, an unknown option) is raised by the first
    call rather than by the constructor: Ray reports a failed constructor as an ActorDiedError that keeps only the
    remote traceback's text, while a call's error comes back as the exception itself."""

    def __init__(self, model: str, column: str, output_column: str, options: dict[str, Any]):
        from embtool.core.model import open_model
        from embtool.runtime.encoder import open_encoder

        self.refused: Exception | None = None
        try:
            self.enc = open_encoder(open_model(model, need_tokenizer=True), **options)
        except (EmbtoolError, TypeError, ValueError) as e:
            self.refused = e
        self.column, self.output_column = column, output_column
        fault = os.environ.get(FAULT_ENV)
        self.fault = None if not fault else (int(fault.split(":")[0]), Path(fault.split(":", 1)[1]))

    def embed(self, texts: list[str]) -> np.ndarray:
        if self.refused is not None:
            raise self.refused
        return self.enc.embed(texts)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.refused is not None:
            raise self.refused
        if self.column not in batch:
            raise InputError(f"the dataset has no column {self.column!r} (columns: {', '.join(batch)})")
        ids = batch["id"].tolist() if "id" in batch else None
        texts = _texts(batch[self.column].tolist(), self.column, ids)
        if self.fault is not None and ids is not None:
            at, marker = self.fault
            if at in set(ids) and not marker.exists():
                marker.write_text("killed once\n")
                os._exit(1)  # a worker dying mid-batch; Ray restarts the actor and retries the batch
        out = dict(batch)
        out[self.output_column] = self.enc.embed(texts)
        return out


def _texts(values: list, column: str, ids: list | None) -> list[str]:
    """The column's values, each a str: a null (None, NaN) or any other value is refused, never embedded as its
    printed form ("None", "nan")."""
    for i, t in enumerate(values):
        if not isinstance(t, str):
            what = "a null" if t is None or (isinstance(t, float) and t != t) else f"a value of type {type(t).__name__}"
            where = f"the row with id {ids[i]}" if ids is not None else f"row {i} of a batch"
            raise InputError(f"the {column!r} column holds {what} at {where}, not a text; drop or fill such rows first")
    return values


def embed_dataset(ds, model: str | os.PathLike, *, column: str = "text", output_column: str = "embedding",
                  batch_size: int = 256, concurrency: int = 1, num_cpus: float | None = None, **encoder_options):
    """Embed the `column` of a Ray Data dataset; returns a dataset with `output_column` ([n, dim] float32 per batch).

    ds: a `ray.data.Dataset` with a text column (a null or non-text value in it is an InputError when the rows run).
    model: a model folder (or file) at the same path on every node of the cluster.
    column / output_column: where the texts are read and the vectors written.
    batch_size: rows per call of an actor.
    concurrency: actors, each holding one model.
    num_cpus: CPUs per actor, used as onnxruntime threads (default: the `threads` encoder option, else 1).
    Other keyword arguments are `embtool.Encoder` options (pooling, normalize, prefix, prompt_name, max_length, ...).
    """
    from ray.data import DataContext

    DataContext.get_current().enable_progress_bars = False  # Ray Data's bars on stderr; embtool says what happens
    threads = int(encoder_options.pop("threads", 0) or num_cpus or 1)
    cpus = num_cpus if num_cpus is not None else threads
    model = str(Path(model).resolve())
    return ds.map_batches(
        _EmbedActor,
        fn_constructor_kwargs={"model": model, "column": column, "output_column": output_column,
                               "options": {**encoder_options, "threads": threads}},
        batch_size=batch_size, batch_format="numpy", concurrency=concurrency, num_cpus=cpus)
    # Ray Data restarts a dead actor and retries its batch by default (max_restarts=-1, max_task_retries=-1)


def embed_blocks(blocks: Iterable[list[str]], model: str, *, workers: int = 1, threads: int | None = None,
                 ahead: int = 2, **encoder_options) -> Iterator[tuple[list[str], np.ndarray]]:
    """Embed blocks of texts on a pool of model actors; yields (texts, vectors [n, dim] float32) per block, in the
    order of `blocks`.

    blocks: lists of texts, read lazily: at most `workers * ahead` blocks are in flight beyond the one yielded.
    model: a model path (or ModelRef) that every node can open.
    workers: actors, each holding one model.
    threads: onnxruntime threads (and Ray CPUs) per actor; default: the cluster's CPUs shared among the workers.
    Other keyword arguments are `embtool.Encoder` options. Needs a connected Ray (`embtool.ray.session`).
    """
    total = int(ray.cluster_resources().get("CPU", 0))
    per = threads or max(1, total // workers)
    if workers * per > total:
        raise ClusterError(f"{workers} worker(s) of {per} thread(s) need {workers * per} CPUs; the Ray cluster has "
                           f"{total}: use fewer --workers or --threads")
    actor = ray.remote(_EmbedActor).options(num_cpus=per, max_restarts=RETRIES, max_task_retries=RETRIES)
    pool = [actor.remote(model, "text", "embedding", {**encoder_options, "threads": per}) for _ in range(workers)]
    source = iter(blocks)
    pending: collections.deque = collections.deque()
    sent = 0

    def send() -> None:
        nonlocal sent
        texts = next(source, None)
        if texts is not None:
            pending.append((texts, pool[sent % workers].embed.remote(texts)))
            sent += 1

    try:
        for _ in range(workers * ahead):
            send()
        while pending:
            texts, ref = pending.popleft()
            yield texts, ray.get(ref)
            send()  # after the caller took this block: reading a slow input never holds back finished blocks
    finally:
        for a in pool:
            with contextlib.suppress(ray.exceptions.RayError):
                ray.kill(a)
