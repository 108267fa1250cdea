"""Parquet embeddings: the one reader and the one writer (optional extra: `pip install 'embtool[parquet]'`).

Layout (what Ray Data, Spark, DuckDB, LanceDB and Hugging Face datasets read natively):
  id         int64                     global text number (input order)
  text       string
  embedding  fixed_size_list<float32>[dim]  (float16 with --precision float16)
Schema metadata `embtool` holds the same JSON record as a safetensors index's metadata (model, pooling, ...).
Rows are written in row groups of ROW_GROUP rows from the embed spool, so writing streams in bounded memory.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from embtool.core.errors import CorruptFile, InputError

ROW_GROUP = 65_536
META_KEY = b"embtool"


def _pa():
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise InputError("Parquet needs pyarrow: pip install 'embtool[parquet]'") from None
    return pa, pq


def write_parquet(path: str | os.PathLike, embeddings: np.ndarray, texts: np.ndarray, text_offsets: np.ndarray,
                  ids: np.ndarray | None, metadata: dict[str, str]) -> None:
    """Write rows (vectors as stored by the embed spool, UTF-8 texts by offsets) as one Parquet file."""
    pa, pq = _pa()
    n, dim = embeddings.shape
    if embeddings.dtype not in (np.float32, np.float16):
        raise InputError("Parquet output stores float32 or float16 vectors; use .safetensors for int8/binary indexes")
    value_type = pa.float16() if embeddings.dtype == np.float16 else pa.float32()
    schema = pa.schema([("id", pa.int64()), ("text", pa.string()), ("embedding", pa.list_(value_type, dim))],
                       metadata={META_KEY: json.dumps(metadata, sort_keys=True).encode()})
    with pq.ParquetWriter(str(path), schema, compression="zstd") as w:
        for r0 in range(0, n, ROW_GROUP):
            r1 = min(n, r0 + ROW_GROUP)
            o0, o1 = int(text_offsets[r0]), int(text_offsets[r1])
            offs = (np.asarray(text_offsets[r0:r1 + 1], dtype=np.int64) - o0).astype(np.int32 if o1 - o0 < 2**31 else np.int64)
            data = pa.py_buffer(np.ascontiguousarray(texts[o0:o1]).tobytes())
            text_arr = (pa.StringArray if offs.dtype == np.int32 else pa.LargeStringArray).from_buffers(
                r1 - r0, pa.py_buffer(offs.tobytes()), data)
            if offs.dtype != np.int32:
                text_arr = text_arr.cast(pa.string())
            flat = pa.array(np.ascontiguousarray(embeddings[r0:r1]).reshape(-1), type=value_type)
            vec = pa.FixedSizeListArray.from_arrays(flat, dim)
            id_col = pa.array(np.asarray(ids[r0:r1] if ids is not None else np.arange(r0, r1), dtype=np.int64))
            w.write_table(pa.Table.from_arrays([id_col, text_arr, vec], schema=schema), row_group_size=ROW_GROUP)


class ParquetIndex:
    """A Parquet embeddings file as a search index. Parquet cannot be memory-mapped: the vector column is read
    into RAM (float32) when opened; use the safetensors index for collections larger than memory."""

    precision = "float32"
    float = None
    scales = None
    int8_mean = None
    int8_sqnorms = None
    rescore_source = None

    def __init__(self, path: str | os.PathLike):
        pa, pq = _pa()
        self.path = Path(path)
        if not self.path.is_file():
            raise InputError(f"{self.path}: no such index file")
        try:
            pf = pq.ParquetFile(str(self.path))
        except (pa.ArrowInvalid, OSError) as e:
            raise CorruptFile(f"{self.path}: not a readable Parquet file ({e})") from None
        names = pf.schema_arrow.names
        vec_col = "embedding" if "embedding" in names else None
        if vec_col is None:
            raise CorruptFile(f"{self.path}: no 'embedding' column (columns: {', '.join(names)})")
        raw = (pf.schema_arrow.metadata or {}).get(META_KEY)
        self.meta: dict[str, Any] = json.loads(raw) if raw else {}
        table = pf.read(columns=[c for c in ("id", "text", "embedding") if c in names])
        col = table.column("embedding").combine_chunks()
        if not pa.types.is_fixed_size_list(col.type) and not pa.types.is_list(col.type):
            raise CorruptFile(f"{self.path}: column 'embedding' is {col.type}, expected a list of floats")
        n = len(col)
        flat = col.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
        if n and flat.size % n:
            raise CorruptFile(f"{self.path}: rows of 'embedding' differ in length")
        self.dim = flat.size // n if n else int(self.meta.get("dim", 0))
        self.emb = flat.reshape(n, self.dim)
        self.ids = table.column("id").to_numpy() if "id" in names else None
        self._texts = table.column("text").to_pylist() if "text" in names else None

    def __len__(self) -> int:
        return self.emb.shape[0]

    @property
    def has_texts(self) -> bool:
        return self._texts is not None

    def block(self, r0: int, r1: int) -> np.ndarray:
        return self.emb[r0:r1]

    def release(self, r0: int, r1: int) -> None:
        pass

    def prefetch(self, r0: int, r1: int) -> None:
        pass

    @property
    def unit_rows(self) -> bool:
        return self.meta.get("normalize") == "true"

    def text(self, i: int) -> str | None:
        return None if self._texts is None else self._texts[i]
