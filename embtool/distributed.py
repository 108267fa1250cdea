"""Scale-out on Ray (optional extra: `pip install 'embtool[ray]'`).

- `embed_dataset(ds, model, ...)`: a Ray Data `Dataset` in, the same dataset with a vector column out. One model
  per actor (a stateful class given to `map_batches`), onnxruntime threads per actor = the actor's CPUs.
- `embed_to_shards(texts, model, outdir, ...)`: what `embtool embed --ray` runs: texts numbered in input order,
  embedded by a pool of actors, written by the driver as index shards `part-NNNNN.safetensors` (global ids in
  input order) that `embtool search OUTDIR/*.safetensors` reads as one index. Workers only compute; the driver
  writes, so no shared filesystem is needed and a killed worker (retried by Ray) cannot leave a partial file.
- `search_shards(paths, queries, ...)`: exact top-k where each shard is scored by a Ray task and the per-shard
  top-k lists are merged — identical to the local search.

Nothing here is imported by the rest of embtool unless Ray is asked for.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np

from embtool.core.errors import InputError

FAULT_ENV = "EMBTOOL_FAULT_EXIT_AT_ID"  # test hook: a worker exits hard once when it meets this text id


def _ray():
    try:
        import ray
    except ImportError:
        raise InputError("Ray is not installed: pip install 'embtool[ray]'") from None
    return ray


def init(address: str | None = "local", num_cpus: int | None = None) -> None:
    """Connect to Ray unless already connected: 'local' starts a local instance (num_cpus: all cores by default),
    'auto' joins the cluster of this machine (`ray start --head`), anything else is a cluster address."""
    ray = _ray()
    if ray.is_initialized():
        return
    import logging

    kwargs: dict[str, Any] = {"log_to_driver": False, "include_dashboard": False, "logging_level": logging.WARNING}
    if address in (None, "local"):
        ray.init(num_cpus=num_cpus or os.cpu_count(), **kwargs)
    else:
        ray.init(address=address, **kwargs)
    _quiet_data()


def _quiet_data() -> None:
    """Ray Data reports progress on stderr by default; embtool's own messages say what happens."""
    import logging

    from ray.data import DataContext

    import warnings

    ctx = DataContext.get_current()
    ctx.enable_progress_bars = False
    warnings.filterwarnings("ignore", module=r"ray\.data.*")
    for name in ("ray.data", "ray.data._internal"):
        logging.getLogger(name).setLevel(logging.WARNING)


class _EmbedActor:
    """One model per actor; `__call__` embeds a batch (a dict of numpy columns) and adds the vector column."""

    def __init__(self, model: str, column: str, output_column: str, options: dict[str, Any]):
        from embtool.core.model import open_model
        from embtool.runtime.encoder import open_encoder

        self.enc = open_encoder(open_model(model, need_tokenizer=True), **options)
        self.column, self.output_column = column, output_column
        fault = os.environ.get(FAULT_ENV)
        self.fault = None if not fault else (int(fault.split(":")[0]), Path(fault.split(":", 1)[1]))

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.column not in batch:
            raise InputError(f"the dataset has no column {self.column!r} (columns: {', '.join(batch)})")
        texts = [t if isinstance(t, str) else str(t) for t in batch[self.column].tolist()]
        if self.fault is not None and "id" in batch:
            at, marker = self.fault
            if at in set(batch["id"].tolist()) and not marker.exists():
                marker.write_text("killed once\n")
                os._exit(1)  # a worker dying mid-batch; Ray restarts the actor and retries the batch
        out = dict(batch)
        out[self.output_column] = self.enc.embed(texts)
        return out


def embed_dataset(ds, model: str | os.PathLike, *, column: str = "text", output_column: str = "embedding",
                  batch_size: int = 256, concurrency: int = 1, num_cpus: float | None = None, **encoder_options):
    """Embed the `column` of a Ray Data dataset; returns a dataset with `output_column` ([n, dim] float32 per
    batch). `concurrency` actors each hold one model and use `num_cpus` CPUs (default: the `threads` encoder
    option, else 1) as onnxruntime threads. Other keyword arguments go to `embtool.Encoder`."""
    _ray()
    _quiet_data()
    threads = int(encoder_options.pop("threads", 0) or num_cpus or 1)
    cpus = num_cpus if num_cpus is not None else threads
    model = str(Path(model).resolve())
    return ds.map_batches(
        _EmbedActor,
        fn_constructor_kwargs={"model": model, "column": column, "output_column": output_column,
                               "options": {**encoder_options, "threads": threads}},
        batch_size=batch_size, batch_format="numpy", concurrency=concurrency, num_cpus=cpus)
    # Ray Data restarts a dead actor and retries its batch by default (max_restarts=-1, max_task_retries=-1)


def _numbered(texts: Iterable[str]) -> list[dict[str, Any]]:
    return [{"id": i, "text": t} for i, t in enumerate(texts)]


def embed_to_shards(texts: Iterable[str], model: str | os.PathLike, *, workers: int = 1, threads: int | None = None,
                    shard_rows: int = 100_000, batch_size: int = 256, **encoder_options) -> Iterator[tuple[np.ndarray, list[str], np.ndarray]]:
    """Yields (ids, texts, vectors) per shard of `shard_rows` texts, in input order; the caller writes each shard.
    Memory on the driver: the texts (as a Ray dataset) plus one shard of vectors."""
    ray = _ray()
    from ray.data import DataContext

    ctx = DataContext.get_current()
    ctx.execution_options.preserve_order = True
    rows = _numbered(texts)
    if not rows:
        raise InputError("no texts to embed (the input is empty)")
    cpus = int(ray.available_resources().get("CPU", 1)) if threads is None else None
    per_worker = threads or max(1, cpus // max(1, workers))
    blocks = max(2 * workers, -(-len(rows) // batch_size))  # enough blocks for every actor to have work
    ds = ray.data.from_items(rows, override_num_blocks=min(blocks, 4096))
    out = embed_dataset(ds, model, column="text", batch_size=batch_size, concurrency=workers, threads=per_worker,
                        **encoder_options)
    buf_ids: list[np.ndarray] = []
    buf_txt: list[str] = []
    buf_vec: list[np.ndarray] = []
    held = 0
    for batch in out.iter_batches(batch_size=batch_size, batch_format="numpy"):
        buf_ids.append(np.asarray(batch["id"], dtype=np.int64))
        buf_txt.extend(batch["text"].tolist())
        buf_vec.append(np.asarray(batch["embedding"], dtype=np.float32))
        held += len(batch["id"])
        while held >= shard_rows:
            ids, vec = np.concatenate(buf_ids), np.concatenate(buf_vec)
            yield ids[:shard_rows], buf_txt[:shard_rows], vec[:shard_rows]
            buf_ids, buf_vec, buf_txt = [ids[shard_rows:]], [vec[shard_rows:]], buf_txt[shard_rows:]
            held -= shard_rows
    if held:
        yield np.concatenate(buf_ids), buf_txt, np.concatenate(buf_vec)


def search_files(paths: list[str], queries: np.ndarray, req, threads: int = 1) -> list[tuple[np.ndarray, np.ndarray]]:
    """Each index file scored in a Ray task (exact top-k of that file, rescored as locally); the caller merges
    the per-file lists exactly as the local search does, so the hits are identical."""
    ray = _ray()
    init(req.ray)
    from embtool.jobs.search import search_file

    remote = ray.remote(num_cpus=1, max_retries=3)(search_file)
    q_ref = ray.put(np.ascontiguousarray(queries, dtype=np.float32))
    return ray.get([remote.remote(str(Path(p).resolve()), q_ref, req, threads) for p in paths])


def embed_to_folder(texts: Iterable[str], model: str | os.PathLike, output: str | os.PathLike, *, address: str = "local",
                    workers: int = 1, threads: int | None = None, shard_rows: int = 100_000, fmt: str = "safetensors",
                    precision: str = "float32", force: bool = False, inputs: Iterable[Path] = (),
                    metadata: dict[str, str] | None = None, **encoder_options) -> dict[str, Any]:
    """`embtool embed --ray`: embed on Ray, write OUTPUT/part-NNNNN.<fmt> (one index shard per `shard_rows` texts,
    global ids in input order) atomically. Returns a summary."""
    from embtool.core.embeddings_io import EmbeddingSink
    from embtool.core.formats.record import write_folder_record
    from embtool.core.writer import OutputFolder

    if fmt not in ("safetensors", "parquet"):
        raise InputError(f"embed --ray writes index shards: .safetensors or .parquet, not {fmt}")
    init(address)
    model = str(Path(model).resolve())
    shards: list[str] = []
    count = 0
    dim = 0
    with OutputFolder(output, force, inputs=[Path(model), *inputs]) as out:
        for k, (ids, chunk, vecs) in enumerate(embed_to_shards(texts, model, workers=workers, threads=threads,
                                                               shard_rows=shard_rows, **encoder_options)):
            sink = EmbeddingSink(fmt, precision)
            try:
                sink.add(chunk, vecs)
                sink.extra = {"ids": ids}
                name = f"part-{k:05d}.{fmt}"
                sink.finish(out.path / name, {**(metadata or {}), "shard": f"{k}", "id_offset": str(int(ids[0]))})
            finally:
                sink.close()
            shards.append(name)
            count += len(ids)
            dim = vecs.shape[1]
        write_folder_record(out, "embed --ray", shards=shards, texts=count)
    return {"output": str(output), "shards": len(shards), "texts": count, "dim": dim, "workers": workers,
            "format": fmt, "precision": precision}


def embed_request_on_ray(model: str, output, *, texts: list[str], inputs: list[str], text_field: str | None, fmt: str | None,
                         precision: str, shard, address: str, workers: int, shard_rows: int, force: bool, threads: int,
                         encoder_options: dict[str, Any]) -> dict[str, Any]:
    """`embed --ray`: the texts numbered in input order, embedded by Ray actors, written as index shards
    into the folder `output`. Returns the summary."""
    import time

    from embtool.core.errors import BadUsage
    from embtool.core.model import open_model
    from embtool.core.texts import iter_texts

    if output is None:
        raise BadUsage("--ray needs -o FOLDER (it receives one index shard per --shard-rows texts)")
    if shard is not None:
        raise BadUsage("--ray splits the work itself; --shard is for running separate processes")
    if precision not in ("float32", "float16"):
        raise BadUsage("--ray writes float32 or float16 shards")
    fmt = fmt or "safetensors"
    if fmt not in ("safetensors", "parquet"):
        raise BadUsage("--ray writes .safetensors or .parquet shards (--format)")
    t0 = time.perf_counter()
    m = open_model(model, need_tokenizer=True)
    opts = {k: v for k, v in encoder_options.items() if v not in (None, "")}
    meta = {"model": str(Path(model).resolve()), "model_fingerprint": m.fingerprint(),
            "tokenizer_fingerprint": m.tokenizer_fingerprint() or ""}
    summary = embed_to_folder(iter_texts(texts, inputs, text_field), m.root, output, address=address, workers=workers,
                              threads=threads or None, shard_rows=shard_rows, fmt=fmt, precision=precision, force=force,
                              inputs=[Path(i) for i in inputs if i != "-"], metadata=meta, **opts)
    dt = time.perf_counter() - t0
    summary.update({"model": str(model), "output": str(output), "written": True, "seconds": round(dt, 3),
                    "texts_per_second": round(summary["texts"] / dt, 1)})
    return summary
